r"""Gatmiry et al. 2024, quantitatively: Theorem 3.2's sandwich of the global minimiser, and Theorem
3.4's gradient dominance tested off the isotropic ray.

The statements (docs/gatmiry_2024_statements.md; the paper's own text was not readable here, the
constants come from a secondary summary that matches the seeds):
  Thm 3.2. x ~ N(0, Sigma), w* ~ N(0, Sigma^-1), no noise. Every global minimiser (A_opt, u_opt)
    of the looped model's population loss has u_opt = 0 and
    (1 - c) Sigma^-1 <= A_opt <= (1 + c) Sigma^-1 (Loewner order), c = 8 delta d^(1/(2L)),
    delta = (8 L d / sqrt n)^(1/(2L)). c < 1 needs n > 8^(4L+2) L^2 d^4.
  Thm 3.4. Sigma = I: ||grad_A f(A, 0)||^2 >= (1/16) f^((2L-1)/L) "whenever the loss is not
    already tiny".

Measured:
  (a) ``theorem_3_2``: per (L, n), A_opt by the solver (float64 L-BFGS over general A, started
      from the best multiple of Sigma^-1 (an exact line search) and from random starts) on
      importance-sampled S, fitted twice on independent samples. measured_c = the smallest c of
      the sandwich, max_i |mu_i - 1| over the eigenvalues mu of sym(Sigma^1/2 A_opt Sigma^1/2)
      (x^T A x sees only the symmetric part); the mean of the two fits, +- half their
      difference. It carries the fit's sampling noise (a max over eigenvalues is biased up:
      at n = 10^6 the noise floor ~1e-4 exceeds the true c ~ 1e-5), so the row also gives
      isotropic_c = |a* - 1| of the best multiple a* Sigma^-1 (one parameter, far less noise).
      With them the whitened A_opt's distance to a multiple of I and its asymmetry,
      bound_c, the fitted rate of measured_c in n, and the n the theorem needs for c < 1 against
      the smallest n of the sweep with measured_c < 1. At L = 1 the exact optimum is known:
      A_opt = n / (n + d + 1) Sigma^-1 (E[S~^2] = (1 + (d + 1) / n) I for whitened S~), so
      c = (d + 1) / (n + d + 1).
  (b) ``theorem_3_4``: Sigma = I, finite n. Random A = a I + r G (G a general Gaussian matrix,
      a and r uniform), kept in the sublevel set f(A) <= f(0) of gradient flow from A = 0 and
      with f - f* >= 1e-3 (f(0) - f*) ("not already tiny"; this region is our reading). f and
      grad f on one fixed importance-sampled set of S, f* its minimum over general A (solver).
      The ratios ||grad f||^2 / (f - f*)^p and ||grad f||^2 / f^p, p = (2L - 1)/L, with their
      minimum over the sample, against the paper's 1/16.

  (c) ``u_block``: the u of Thm 3.2 (P's last row [u^T, 1], our reading of the summary;
      :mod:`looped_icl.u_block`). The loss is L(A, u) = L(A, 0) + 2 b^T u + u^T H u with b = 0
      by the w* -> -w* symmetry, so u = 0 minimises L(A, .) for every A, and u_opt = 0 wherever
      H(A_opt) is positive definite (the derivation is in that module).
      Per (L, n), at A_opt, on fresh tasks: b's largest |z|, H's smallest eigenvalue with its
      standard error, and the sample's own u_opt = -H^-1 b with its largest |z|.

Setting: d = 5, Sigma of ``configs/gatmiry_looped.py`` (rotated, spectrum (1, 1, 1/4, 1/16, 1)),
w* ~ N(0, Sigma^-1), no noise; (b) at Sigma = I. S is sampled by Bartlett, so n = 10^6 costs as
much as n = 10.

Run:  looped-icl reproduce --experiment=gatmiry_minimizer --workdir=/tmp/looped_icl/gat_min
Expected (quick): measured_c <= bound_c on every row (the bound is >= 1 on all of them: vacuous,
n would have to exceed 8^(4L+2) L^2 d^4); measured_c falls like n^-1, far faster than the bound's
n^(-1/(4L)); the L = 1 rows equal (d + 1)/(n + d + 1). The u block at (L, n) = (2, 20) on 20000
tasks: b's largest |z| 1.8 (tail index < 0.5), H's smallest eigenvalue 0.039 (95 standard
errors), the sample's u_opt within 2.6 standard errors of 0.
Measured (full run 2026-12-03, 10.5 min on 2 cores, before the u block was added): measured_c <=
bound_c on all 27 rows (bound_c 3.6-64, vacuous); measured_c 0.38 -> 4.9e-5 (L = 1), 0.42 -> 4.0e-5
(L = 2), 0.46 -> 2.1e-6 (L = 3) for n = 10 -> 1e6, rate n^-0.82 / -0.83 / -0.94 (the best multiple
of Sigma^-1: n^-0.96 / -1.02 / -1.05; at L = 1 it matches (d + 1)/(n + d + 1) within 3.2% on every
row but n = 1e5, 24% off there: c = 6e-5 at the fit's noise floor);
the whitened optimum is non-symmetric at L = 2, 3 and n = 40-320 (asymmetry 0.10-0.49).
Thm 3.4: min ||grad f||^2 / (f - f*)^p = 5.6 / 4.9 / 6.1 / 6.6 at (L, n) = (2, 20) / (2, 80) /
(3, 20) / (3, 80), 200 random A each, against the paper's 1/16.
The u block (full run 2026-12-04, 12.3 min in all with the rows above; 200000 tasks at each of
U_POINTS): b's largest |z| 1.02-1.97, H's smallest eigenvalue 0.040-0.061 (>= 250 standard
errors), u_opt's largest |z| 0.83-2.19, its loss gain <= 1.4e-5.
"""

from __future__ import annotations

import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import baselines
from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import models
from looped_icl import solver
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import u_block
from looped_icl.reproduce import common

CONFIG = "gatmiry_looped"
LOOPS, QUICK_LOOPS = (1, 2, 3), (1, 2)
NS, QUICK_NS = (10, 20, 40, 80, 320, 2000, 10**4, 10**5, 10**6), (20, 10**4, 10**6)
FIT_SAMPLES, QUICK_FIT_SAMPLES = 20000, 4000
RESTARTS, QUICK_RESTARTS = 3, 0   # quick: the start at a* Sigma^-1 only
# (b): loops, n, random A's per (L, n), fixed samples of S.
DOMINANCE = ((2, 20), (2, 80), (3, 20), (3, 80))
QUICK_DOMINANCE = ((2, 20),)
POINTS, QUICK_POINTS = 200, 40
DOMINANCE_SAMPLES, QUICK_DOMINANCE_SAMPLES = 8000, 2000
# (c): the u block at (L, n), on fresh tasks.
U_POINTS, QUICK_U_POINTS = ((1, 20), (2, 20), (2, 80), (3, 20), (3, 80)), ((2, 20),)
U_TASKS, QUICK_U_TASKS = 200_000, 20_000
PAPER_MU = 1.0 / 16.0
NOT_TINY = 1e-3


def bound_c(num_loops: int, n: int, d: int) -> float:
  """Theorem 3.2's c = 8 delta d^(1/(2L)), delta = (8 L d / sqrt n)^(1/(2L))."""
  delta = (8.0 * num_loops * d / np.sqrt(n)) ** (1.0 / (2 * num_loops))
  return float(8.0 * delta * d ** (1.0 / (2 * num_loops)))


def n_for_bound_below_one(num_loops: int, d: int) -> float:
  """The n above which Theorem 3.2's c < 1: 8^(4L+2) L^2 d^4."""
  return float(8.0 ** (4 * num_loops + 2) * num_loops**2 * d**4)


def _whitened(a_DxD, cov) -> np.ndarray:
  return np.asarray(theory.whiten_preconditioner(jnp.asarray(a_DxD), jnp.asarray(cov)),
                    np.float64)


def _sandwich_c(whitened_DxD) -> float:
  """The smallest c with (1 - c) Sigma^-1 <= A <= (1 + c) Sigma^-1 (on x^T A x), from the
  whitened Sigma^1/2 A Sigma^1/2: the largest |eigenvalue - 1| of its symmetric part."""
  sym = (whitened_DxD + whitened_DxD.T) / 2
  return float(np.max(np.abs(np.linalg.eigvalsh(sym) - 1.0)))


def _task(cov, n: int) -> tasks_lib.TaskDistribution:
  return tasks_lib.make_task(np.asarray(cov, np.float64), n, noise_std=0.0,
                             weight_prior="inverse_covariance")


def _optimum(task, num_loops: int, samples, restarts: int, seed: int):
  """(A_opt, loss, cfg, a*) over general A: the best of a start at a* Sigma^-1, the best multiple
  of Sigma^-1 (an exact line search), and ``restarts`` random starts."""
  cfg = models.ModelConfig(d=task.d, num_layers=num_loops, kind="looped",
                           parametrization="preconditioner")
  inv = np.linalg.inv(np.asarray(task.cov, np.float64))
  inv = (inv + inv.T) / 2
  scale, _ = baselines.best_gd_eta(task, num_loops, samples, preconditioner=inv)
  runs = solver.minimize_population_loss(cfg, task, samples, starts=[(scale * inv).ravel()],
                                         max_iters=500)[1]
  if restarts:
    runs += solver.minimize_population_loss(cfg, task, samples, restarts=restarts,
                                            max_iters=500, restart_seed=seed)[1]
  best = min(runs, key=lambda r: r.fun)
  return np.asarray(best.params["a"], np.float64), float(best.fun), cfg, scale


def theorem_3_2_rows(cov, loops, ns, num_samples: int, restarts: int, key
                     ) -> tuple[list[dict], dict]:
  """One row per (L, n): measured_c (two independent fits), bound_c and the shape of A_opt; and
  the first fit's A_opt by (L, n)."""
  rows, optima = [], {}
  d = np.asarray(cov).shape[0]
  start, total = time.perf_counter(), len(loops) * len(ns)
  for num_loops in loops:
    for n in ns:
      if rows:   # progress: the full run takes many minutes, the larger L the slower
        elapsed = time.perf_counter() - start
        logging.info("theorem 3.2: row %d/%d (L = %d, n = %d), %.0f s so far (L = %d, n = %d: "
                     "measured_c %.3g)", len(rows) + 1, total, num_loops, n, elapsed,
                     rows[-1]["L"], rows[-1]["n"], rows[-1]["measured_c"])
      task = _task(cov, n)
      fits, iso = [], []
      for rep in range(2):
        k = jax.random.fold_in(jax.random.fold_in(key, num_loops * 10**7 + n), rep)
        samples = estimators.sample(k, task, num_samples, estimators.default_proposal(task))
        a_opt, _, _, scale = _optimum(task, num_loops, samples, restarts, seed=rep)
        fits.append(a_opt)
        iso.append(abs(scale - 1.0))
      optima[(num_loops, n)] = fits[0]
      whitened = [_whitened(a, cov) for a in fits]
      cs = [_sandwich_c(w) for w in whitened]
      white = whitened[0]
      rows.append({
          "L": num_loops, "n": n, "d": d,
          "measured_c": float(np.mean(cs)), "measured_c_stderr": abs(cs[0] - cs[1]) / 2,
          "bound_c": bound_c(num_loops, n, d),
          "isotropic_c": float(np.mean(iso)), "isotropic_c_stderr": abs(iso[0] - iso[1]) / 2,
          "exact_c_L1": (d + 1) / (n + d + 1) if num_loops == 1 else float("nan"),
          "whitened_dist_to_identity": float(theory.dist_to_identity(jnp.asarray(white))),
          "whitened_asymmetry": theory.asymmetry(white),
      })
  return rows, optima


def u_block_rows(cov, optima: dict, points, num_tasks: int, key) -> list[dict]:
  """Per (L, n) in ``points``: the u block at (A_opt, u) on ``num_tasks`` fresh tasks
  (:func:`looped_icl.u_block.u_optimum`): b's largest |z|, H's smallest eigenvalue with its
  standard error, and the sample's u_opt."""
  rows = []
  for i, (num_loops, n) in enumerate(points):
    batch = tasks_lib.sample_gram(jax.random.fold_in(key, i), _task(cov, n), num_tasks)
    out = u_block.u_optimum(optima[(num_loops, n)], batch, num_loops)
    vectors = ("b", "b_stderr", "u_opt", "h_eigenvalues")
    rows.append({"L": num_loops, "n": n, "tasks": num_tasks,
                 **{k: v for k, v in out.items() if k not in vectors},
                 "h_min_eig": out["h_eigenvalues"][0],
                 **{k: " ".join(f"{v:.4g}" for v in out[k]) for k in vectors}})
  return rows


def rate_fits(rows: list[dict], loops) -> dict:
  """Per L: the least-squares slope of log measured_c on log n, and the n the theorem and the
  data need for c < 1."""
  out = {}
  for num_loops in loops:
    sel = [r for r in rows if r["L"] == num_loops]
    n = np.asarray([r["n"] for r in sel], np.float64)
    rate = lambda key: float(np.polyfit(np.log(n), np.log([r[key] for r in sel]), 1)[0])
    below = [r["n"] for r in sel if r["measured_c"] + 3 * r["measured_c_stderr"] < 1.0]
    out[str(num_loops)] = {
        "measured_rate": rate("measured_c"), "isotropic_rate": rate("isotropic_c"),
        "bound_rate": -1.0 / (4 * num_loops),
        "n_theorem_needs_for_c_below_1": n_for_bound_below_one(num_loops, sel[0]["d"]),
        "smallest_n_with_measured_c_below_1": min(below) if below else None,
    }
  return out


def dominance_rows(d: int, num_loops: int, n: int, num_samples: int, num_points: int, key,
                   restarts: int) -> tuple[list[dict], dict]:
  """Random A off the isotropic ray at Sigma = I (see the module doc); (points, summary)."""
  task = _task(np.eye(d), n)
  samples = estimators.sample(key, task, num_samples, estimators.default_proposal(task))
  _, f_star, cfg, a_star = _optimum(task, num_loops, samples, restarts, seed=0)   # Sigma^-1 = I
  objective, _ = solver.objective(cfg)          # the fit's own program: flat A = A.ravel()
  value_and_grad = lambda a_DxD: objective(jnp.asarray(a_DxD).ravel(), task, samples)
  f0 = float(value_and_grad(jnp.zeros((d, d)))[0])
  p = theory.gradient_dominance_exponent(num_loops)
  rng = np.random.default_rng(n * 100 + num_loops)
  points, tries = [], 0
  while len(points) < num_points and tries < 50 * num_points:
    tries += 1
    a = (rng.uniform(0.0, 2.0) * np.eye(d) + rng.uniform(0.0, 1.0)
         * rng.standard_normal((d, d)) / np.sqrt(d)) * a_star
    f, g = value_and_grad(jnp.asarray(a))
    f, grad_sq = float(f), float(jnp.sum(g**2))
    if not (np.isfinite(f) and f <= f0 and f - f_star >= NOT_TINY * (f0 - f_star)):
      continue
    points.append({"L": num_loops, "n": n, "loss": f, "gap": f - f_star, "grad_sq": grad_sq,
                   "ratio_gap": grad_sq / (f - f_star) ** p, "ratio_loss": grad_sq / f**p,
                   "off_ray": float(theory.dist_to_identity(jnp.asarray(a)))})
  ratios = np.asarray([q["ratio_gap"] for q in points])
  summary = {"L": num_loops, "n": n, "points": len(points), "tries": tries, "f_star": f_star,
             "f_at_zero": f0, "exponent": p, "paper_mu": PAPER_MU,
             "min_ratio_gap": float(ratios.min()),
             "q05_ratio_gap": float(np.quantile(ratios, 0.05)),
             "median_ratio_gap": float(np.median(ratios)),
             "min_ratio_loss": float(min(q["ratio_loss"] for q in points)),
             "max_off_ray": float(max(q["off_ray"] for q in points)),
             "holds_with_paper_mu": bool(ratios.min() >= PAPER_MU)}
  return points, summary


def _figure(ctx: common.Context, rows, points, loops) -> str:
  panels = [common.Panel(
      series=[s for L in loops for s in (
          common.Series(f"measured c, L={L}", [r["n"] for r in rows if r["L"] == L],
                        [r["measured_c"] for r in rows if r["L"] == L],
                        yerr=[r["measured_c_stderr"] for r in rows if r["L"] == L]),
          common.Series(f"bound c, L={L}", [r["n"] for r in rows if r["L"] == L],
                        [r["bound_c"] for r in rows if r["L"] == L], style="--"))],
      xlabel="n", ylabel="c", logx=True, logy=True, hlines={"c = 1": 1.0},
      title="Thm 3.2: (1-c) Sigma^-1 <= A_opt <= (1+c) Sigma^-1")]
  for (L, n) in sorted({(q["L"], q["n"]) for q in points}):
    sel = sorted((q for q in points if (q["L"], q["n"]) == (L, n)), key=lambda q: q["gap"])
    p = theory.gradient_dominance_exponent(L)
    panels.append(common.Panel(
        series=[common.Series("random A off the ray", [q["gap"] for q in sel],
                              [q["grad_sq"] for q in sel], style="."),
                common.Series(f"(1/16) (f - f*)^{p:.2f}", [q["gap"] for q in sel],
                              [PAPER_MU * q["gap"]**p for q in sel], style="-")],
        xlabel="f - f*", ylabel="||grad f||^2", logx=True, logy=True,
        title=f"Thm 3.4 at Sigma = I, L = {L}, n = {n}"))
  return common.line_figure(ctx, "gatmiry_minimizer.png", panels)


def run(ctx: common.Context) -> dict:
  quick = ctx.quick
  loops, ns = (QUICK_LOOPS, QUICK_NS) if quick else (LOOPS, NS)
  exp = config_lib.from_config(common.load_config(CONFIG, ctx))
  cov = np.asarray(exp.task.cov, np.float64)
  key = jax.random.key(exp.seed)
  with jax.enable_x64(True):
    rows, optima = theorem_3_2_rows(cov, loops, ns, QUICK_FIT_SAMPLES if quick else FIT_SAMPLES,
                                    QUICK_RESTARTS if quick else RESTARTS,
                                    jax.random.fold_in(key, 32))
    u_rows = u_block_rows(cov, optima, QUICK_U_POINTS if quick else U_POINTS,
                          QUICK_U_TASKS if quick else U_TASKS, jax.random.fold_in(key, 33))
    points, dominance = [], []
    for i, (num_loops, n) in enumerate(QUICK_DOMINANCE if quick else DOMINANCE):
      pts, summary = dominance_rows(
          cov.shape[0], num_loops, n,
          QUICK_DOMINANCE_SAMPLES if quick else DOMINANCE_SAMPLES,
          QUICK_POINTS if quick else POINTS, jax.random.fold_in(key, 34 + i),
          QUICK_RESTARTS if quick else RESTARTS)
      points += pts
      dominance.append(summary)
  common.write_csv(ctx, "theorem_3_2.csv", rows)
  common.write_csv(ctx, "theorem_3_4.csv", points)
  common.write_csv(ctx, "u_block.csv", u_rows)
  _figure(ctx, rows, points, loops)
  return {
      "paper_claim": "Thm 3.2: u_opt = 0 and (1 - c) Sigma^-1 <= A_opt <= (1 + c) Sigma^-1 with "
                     "c = 8 delta d^(1/(2L)), delta = (8 L d / sqrt n)^(1/(2L)); Thm 3.4: "
                     "||grad f||^2 >= (1/16) f^((2L-1)/L) when the loss is not tiny (Sigma = I)",
      "sources": "docs/gatmiry_2024_statements.md (secondary summary; the paper's text was not "
                 "readable here); the region of (b) and the u block's form (P's last row "
                 "[u^T, 1]) are our readings",
      "theorem_3_2": rows,
      "theorem_3_2_rates": rate_fits(rows, loops),
      "theorem_3_2_holds": all(r["measured_c"] <= r["bound_c"] for r in rows),
      "u_block": u_rows,
      "theorem_3_4": dominance,
  }
