"""Variance reduction of the population-loss estimators at equal cost (``looped-icl
benchmark --variance``).

Per case (isotropic looped preconditioner A = c I at the exact isotropic optimum c, Sigma = I,
w* ~ N(0, I)): the exact per-sample variance of plain sampling
(:func:`wishart.isotropic_loss_variance`) against the measured per-sample variance of the
chosen proposal (mean over seeds of its stratified standard error^2 x N), the cost per sample
of each (sampling + the per-S loss, timed after compilation), and their product: the variance
reduction at equal wall time. Also the coverage of |z| <= 2 against the exact loss over the
seeds, for both estimators.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from looped_icl import constructions
from looped_icl import estimators
from looped_icl import losses
from looped_icl import tasks as tasks_lib
from looped_icl import wishart

# (L, n, d)
CASES = [(2, 8, 4), (4, 8, 4), (4, 16, 4), (4, 20, 4), (6, 16, 4), (6, 20, 4), (8, 20, 4),
         (4, 20, 5)]


def best_isotropic_c(num_layers: int, n: int, d: int) -> float:
  grid = np.linspace(0.05, 1.5, 146)
  values = [float(wishart.isotropic_losses([c] * num_layers, n, d)[-1]) for c in grid]
  return float(grid[int(np.argmin(values))])


def _timed(fn, repeats: int = 5) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def measure(num_layers: int, n: int, d: int, *, samples: int = 20000, seeds: int = 20) -> dict:
  """One case's row (float64)."""
  with jax.enable_x64(True):
    c = best_isotropic_c(num_layers, n, d)
    task = tasks_lib.make_task(np.eye(d), n)
    cfg, params = constructions.preconditioned_gd(c * np.eye(d), num_layers, kind="looped")
    f = lambda s: losses.last_layer_loss_samples(params, cfg, task, s)
    exact = float(wishart.isotropic_losses([c] * num_layers, n, d)[-1])
    plain_var = float(wishart.isotropic_loss_variance([c] * num_layers, n, d))
    proposal, info = losses.choose_proposal(params, cfg, task, jax.random.key(1), samples)
    row = {"L": num_layers, "n": n, "d": d, "c": c, "exact_loss": exact,
           "proposal": proposal.describe(), "pilot_reduction": info["variance_reduction"]}
    for name, prop in (("plain", estimators.PLAIN), ("is", proposal)):
      variances, z = [], []
      for seed in range(seeds):
        w = estimators.sample(jax.random.key(1000 + seed), task, samples, prop)
        est = estimators.estimate(f(w.s), w)
        variances.append(est["stderr"]**2 * samples)
        z.append((est["value"] - exact) / est["stderr"])
      key = jax.random.key(0)
      cost = _timed(lambda: f(estimators.sample(key, task, samples, prop).s).block_until_ready())
      row[f"{name}_coverage"] = float(np.mean(np.abs(z) <= 2))
      row[f"{name}_us_per_sample"] = 1e6 * cost / samples
      row[f"{name}_measured_var"] = float(np.mean(variances))
    row["plain_exact_var"] = plain_var
    row["reduction"] = plain_var / row["is_measured_var"]
    row["reduction_equal_cost"] = row["reduction"] * (row["plain_us_per_sample"]
                                                      / row["is_us_per_sample"])
  return row


def run(cases=None, samples: int = 20000, seeds: int = 20) -> list[dict]:
  return [measure(*case, samples=samples, seeds=seeds) for case in (cases or CASES)]


def format_table(rows: list[dict]) -> str:
  lines = ["| L | n | d | c | exact loss | proposal | plain var (exact) | IS var (measured) | "
           "reduction | at equal cost | us/sample plain / IS | coverage plain / IS |",
           "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    lines.append(
        f"| {r['L']} | {r['n']} | {r['d']} | {r['c']:.2f} | {r['exact_loss']:.4g} | "
        f"{r['proposal']} | {r['plain_exact_var']:.3g} | {r['is_measured_var']:.3g} | "
        f"{r['reduction']:.3g}x | {r['reduction_equal_cost']:.3g}x | "
        f"{r['plain_us_per_sample']:.2f} / {r['is_us_per_sample']:.2f} | "
        f"{r['plain_coverage']:.2f} / {r['is_coverage']:.2f} |")
  return "\n".join(lines)
