r"""Gatmiry et al. 2024: gradient dominance ||grad f||^2 >= mu (f - f*)^{(2L-1)/L} of the looped
model's in-context loss, measured along gradient-flow trajectories.

Paper claim (SPEC section 5): the loss f(A) of the looped preconditioner model with L loops
satisfies ||grad_A f||^2 >= mu (f - f*)^{(2L-1)/L}; the exponent exceeds 1 for L >= 2 (a
degenerate optimum), so gradient flow converges polynomially, not linearly.

Why the exponent is (2L-1)/L, exactly, in the isotropic scalar case: with Sigma = I, w* ~ N(0, I)
and S = X^T X / n = Sigma exactly (n -> infinity), on the ray A = a I the loss is
f = d (1 - a)^{2L} (f* = 0) and df/dA = -2L (1 - a)^{2L-1} I, so
  ||grad f||^2 = 4 L^2 d (1 - a)^{4L-2} = mu f^{(2L-1)/L},  mu = 4 L^2 d^{(1-L)/L}
(:mod:`looped_icl.theory.gatmiry`). Gradient flow from a small random A stays on that ray (it
attracts), so log ||grad f||^2 against log (f - f*) along the trajectory is a line of slope
(2L-1)/L.

Setting: ``configs/gatmiry_looped.py`` (looped preconditioner, d = 5, w* ~ N(0, I), gradient-flow
mode = plain GD on the exact population loss over one fixed sample of S) with Sigma = I and
n = 10^6 (S is sampled by Bartlett, so the cost does not depend on n; every S is I up to ~1e-3),
32 samples of S, step 0.05 / L (the first step moves A by ~0.1), run until
(f - f*)/(f_0 - f*) ~ 2e-5 by the flow-time formula above. Every logged row gives last_loss and
grad_norm (the raw global gradient norm of the same step). f* is the minimum of the SAME fixed-S
objective: the training sample is rebuilt exactly as ``train_step.make_objective`` draws it
(step-0 data key; gradient-flow mode never resamples) and minimised by
``solver.minimize_population_loss`` in float64.

Measured: p and mu from least squares of log ||grad f||^2 on log (f - f*) over the window
FIT_WINDOW of (f - f*)/(f_0 - f*) (far above the float32 resolution), for L in {1, 2, 3, 4};
the local exponent (slope over a sliding decade) along each trajectory.

Beyond the paper, finite n (n = 20, 64 samples of S, trained in float64 so the gap can be followed
to 1e-13; f* from 10 restarts: at L = 4 this objective has several local minima and the global
one, which gradient flow from a small start reaches, is strongly non-symmetric): f* > 0 and the
optimum is non-degenerate (positive-definite Hessian H), so near f* the local exponent is 1 with
||grad f||^2 / (f - f*) -> 2 lambda_min(H) (gradient flow ends along the slowest eigen-direction).
Far from f* the trajectory crosses several time scales (H has a condition number ~100) and a
fitted exponent has no meaning; the (2L-1)/L law is a large-n statement.

Expected: at n = 10^6 the fitted p equals (2L-1)/L and mu equals 4 L^2 d^{(1-L)/L} to ~1e-3
(measured: |p - (2L-1)/L| <= 2e-4, mu within 0.1%); at n = 20 the exponent in the window
NEAR_OPTIMUM_WINDOW is 1 (measured 1.000, 1.000, 1.008 for L = 2, 3, 4) and at the last resolved
row ||grad f||^2 / (f - f*) equals 2 lambda_min(H) to 0.1%.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import losses
from looped_icl import models
from looped_icl import solver
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import train_step
from looped_icl.reproduce import common

CONFIG = "gatmiry_looped"
LOOPS = (1, 2, 3, 4)
LARGE_N = 10**6
LARGE_N_SAMPLES = 32
# Fit window of the relative gap (f - f*) / (f_0 - f*); the runs go half a decade past its end.
FIT_WINDOW = (1e-4, 1e-1)
END_GAP = 2e-5
ROWS = 250
# Beyond the paper: finite n, float64, until the gap reaches ~1e-13; exponent fitted near f*.
FINITE_N = 20
FINITE_N_LOOPS, QUICK_FINITE_N_LOOPS = (2, 3, 4), (2,)
FINITE_N_SAMPLES = 64
FINITE_N_STEPS, QUICK_FINITE_N_STEPS = 8000, 4000
# The deepest two decades every finite-n run reaches with f - f* >= 1e3 float64 ulps of f (the
# slowest of them, L = 4, is in its asymptotic regime only below ~1e-11).
NEAR_OPTIMUM_WINDOW = (1e-13, 1e-11)
# At n = 20 the objective has several local minima (L = 4: six found by 10 restarts, the
# global one strongly non-symmetric); 10 restarts find the one gradient flow reaches.
FINITE_N_RESTARTS = 10


def _config(ctx: common.Context, num_loops: int, n: int, *, finite: bool):
  """gatmiry_looped with Sigma = I, n examples and this experiment's gradient-flow schedule."""
  config = common.load_config(CONFIG, ctx, arg=f"L={num_loops},n={n}")
  config.task.covariance = "identity"
  config.task.spectrum = ()
  if finite:
    # A larger step: the first step then overshoots past the window (irrelevant here), and the
    # linear phase near f* (rate ~ lr lambda_min(H)) is reached in a few thousand steps.
    learning_rate, batch = 0.4 / num_loops, FINITE_N_SAMPLES
    steps = QUICK_FINITE_N_STEPS if ctx.quick else FINITE_N_STEPS
  else:
    learning_rate, batch = 0.05 / num_loops, LARGE_N_SAMPLES
    steps = math.ceil(1.2 * theory.isotropic_flow_time(num_loops, END_GAP) / learning_rate)
  log_every = max(1, steps // ROWS)
  config.train.learning_rate = learning_rate
  config.train.batch_size = batch
  # The exponent is a property of the run's own fixed objective, compared with the isotropic
  # S -> I limit: plain samples (an importance-weighted objective mixes in S ~ s I, s != 1).
  config.train.population_proposal = "plain"
  config.train.steps = log_every * math.ceil(steps / log_every)
  config.train.log_every = log_every
  config.train.checkpoint_every = config.train.steps
  return config


@functools.partial(jax.jit, static_argnames=("model",))
def _loss(params, model, task, s_SxDxD):
  return losses.population_loss(params, model, task, s_SxDxD)


@functools.partial(jax.jit, static_argnames=("model",))
def _hessian_eigenvalues(params, model, task, s_SxDxD):
  flat, unravel = ravel_pytree(params)
  hessian = jax.hessian(lambda x: losses.population_loss(unravel(x), model, task, s_SxDxD))(flat)
  return jnp.linalg.eigvalsh(hessian)


def _objective_optimum(exp: config_lib.Experiment, *, restarts: int, hessian: bool) -> dict:
  """f_0, f* (and the Hessian's eigenvalues there) of the run's own fixed-S objective, float64.

  Call with x64 enabled iff the run trained in float64: the sample is drawn in the run's dtype,
  exactly as ``train_step.make_objective`` draws it (the step-0 data key: gradient-flow mode never
  resamples), then cast to float64.
  """
  data_key = train_step.step_data_key(train_step.root_keys(exp.seed)["data"], 0, 0)
  samples = jax.tree.map(np.asarray, train_step.population_samples(exp, data_key))
  init = models.init_params(train_step.root_keys(exp.seed)["init"], exp.model)
  with jax.enable_x64(True):
    task = tasks_lib.as_float64(exp.task)
    s_SxDxD = estimators.WeightedS(s=jnp.asarray(samples.s, jnp.float64),
                                   weight=jnp.asarray(samples.weight, jnp.float64),
                                   component=jnp.asarray(samples.component))
    params, runs = solver.minimize_population_loss(exp.model, task, s_SxDxD, restarts=restarts,
                                                   max_iters=1000)
    init64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), init)
    out = {"f0": float(_loss(init64, exp.model, task, s_SxDxD)),
           "f_star": float(min(r.fun for r in runs))}
    if hessian:
      out["hessian_eigenvalues"] = np.asarray(
          _hessian_eigenvalues(params, exp.model, task, s_SxDxD), np.float64)
  return out


def fit_exponent(gap_N, excess_N, grad_sq_N, window) -> dict:
  """Least squares of log ||grad f||^2 on log (f - f*) over rows with gap in ``window``."""
  lo, hi = window
  mask = (gap_N >= lo) & (gap_N <= hi) & (excess_N > 0)
  if mask.sum() < 3:
    return {"points": int(mask.sum()), "p": math.nan, "mu": math.nan}
  slope, intercept = np.polyfit(np.log(excess_N[mask]), np.log(grad_sq_N[mask]), 1)
  return {"points": int(mask.sum()), "p": float(slope), "mu": float(np.exp(intercept))}


def local_exponents(gap_N, excess_N, grad_sq_N, resolved_N) -> np.ndarray:
  """Slope of the log-log fit over the rows within half a decade of each row's gap.

  nan where ``resolved_N`` is False (f - f* not resolved by the training dtype).
  """
  log_gap = np.log10(np.where((gap_N > 0) & resolved_N, gap_N, np.nan))
  out = np.full(gap_N.shape, np.nan)
  for i in range(gap_N.shape[0]):
    if np.isfinite(log_gap[i]):
      out[i] = fit_exponent(gap_N, excess_N, grad_sq_N,
                            (10 ** (log_gap[i] - 0.5), 10 ** (log_gap[i] + 0.5)))["p"]
  return out


def _measure(ctx: common.Context, num_loops: int, n: int, *, finite: bool):
  """One trajectory: (trajectory rows, fit row)."""
  name = f"L{num_loops}_n{n}" + ("_x64" if finite else "")
  config = _config(ctx, num_loops, n, finite=finite)
  with jax.enable_x64(finite):
    # Only the trajectory is needed: no final evaluation (it would cost more than these runs).
    _, history, params = common.train_run(ctx, name, config, evaluate=False)
    exp = config_lib.from_config(config)
    optimum = _objective_optimum(exp, restarts=FINITE_N_RESTARTS if finite else 2,
                                 hessian=finite)
  f0, f_star = optimum["f0"], optimum["f_star"]
  f_N = np.asarray([r["last_loss"] for r in history], np.float64)
  grad_sq_N = np.asarray([r["grad_norm"] for r in history], np.float64) ** 2
  excess_N = f_N - f_star
  gap_N = excess_N / (f0 - f_star)
  # The training loss has relative rounding ~eps(dtype): excesses below 1e3 eps f are noise.
  resolved_N = excess_N > 1e3 * np.finfo(np.float64 if finite else np.float32).eps * f_N
  local_N = local_exponents(gap_N, excess_N, grad_sq_N, resolved_N)
  trajectory = [{"run": name, "L": num_loops, "n": n, "step": r["step"],
                 "flow_time": r["flow_time"], "f": f, "f_minus_f_star": e, "gap": g,
                 "grad_norm_sq": q, "local_exponent": p}
                for r, f, e, g, q, p in zip(history, f_N, excess_N, gap_N, grad_sq_N, local_N)]
  window = fit_exponent(gap_N, excess_N, grad_sq_N, FIT_WINDOW)
  row = {"run": name, "L": num_loops, "n": n, "dtype": "float64" if finite else "float32",
         "steps": config.train.steps, "learning_rate": config.train.learning_rate,
         "samples_of_S": config.train.batch_size, "f0": f0, "f_star": f_star,
         "min_gap": float(np.min(gap_N)), "final_gap": float(gap_N[-1]),
         "window_lo": FIT_WINDOW[0], "window_hi": FIT_WINDOW[1], "points": window["points"],
         "p": window["p"], "mu": window["mu"],
         "paper_p": theory.gradient_dominance_exponent(num_loops),
         "isotropic_mu": theory.isotropic_gradient_dominance_mu(num_loops, exp.task.d),
         "final_asymmetry": theory.asymmetry(params["a"])}
  if finite:
    near = fit_exponent(gap_N, excess_N, grad_sq_N, NEAR_OPTIMUM_WINDOW)
    last = int(np.flatnonzero(resolved_N)[-1])
    row.update(near_window_lo=NEAR_OPTIMUM_WINDOW[0], near_window_hi=NEAR_OPTIMUM_WINDOW[1],
               near_points=near["points"], near_p=near["p"], near_mu=near["mu"],
               two_lambda_min=2 * float(optimum["hessian_eigenvalues"][0]),
               last_resolved_gap=float(gap_N[last]),
               last_resolved_grad_sq_over_excess=float(grad_sq_N[last] / excess_N[last]))
  return trajectory, row


def _figure(ctx: common.Context, trajectory: list[dict], fits: list[dict]) -> str:
  large = [r for r in fits if r["n"] == LARGE_N]
  loglog = []
  for fit in large:
    rows = [t for t in trajectory if t["run"] == fit["run"] and t["f_minus_f_star"] > 0]
    x = [t["f_minus_f_star"] for t in rows]
    loglog.append(common.Series(f"L={fit['L']}", x, [t["grad_norm_sq"] for t in rows], style="."))
    x_line = [min(x), max(x)]
    loglog.append(common.Series(
        f"mu (f-f*)^{fit['paper_p']:.3g} (isotropic theory)", x_line,
        [fit["isotropic_mu"] * v ** fit["paper_p"] for v in x_line], style="k--"))
  local = []
  for fit in fits:
    rows = [t for t in trajectory if t["run"] == fit["run"] and np.isfinite(t["local_exponent"])]
    local.append(common.Series(fit["run"], [t["gap"] for t in rows],
                               [t["local_exponent"] for t in rows], style="-"))
  return common.line_figure(ctx, "gatmiry_gradient_dominance.png", [
      common.Panel(series=loglog, xlabel="f - f*", ylabel="||grad f||^2", logx=True, logy=True,
                   title=f"n = {LARGE_N:.0e}, Sigma = I: fit window (f-f*)/(f0-f*) in "
                         f"{FIT_WINDOW}"),
      common.Panel(series=local, xlabel="(f - f*) / (f0 - f*)",
                   ylabel="local exponent (slope over one decade)", logx=True,
                   title="local exponent; (2L-1)/L = 1, 1.5, 1.67, 1.75",
                   hlines={f"(2L-1)/L, L={num}": theory.gradient_dominance_exponent(num)
                           for num in LOOPS})])


def run(ctx: common.Context) -> dict:
  """Measures every trajectory, writes the CSVs and the PNG, returns the fitted exponents."""
  trajectory, fits = [], []
  runs = [(num, LARGE_N, False) for num in LOOPS] + [
      (num, FINITE_N, True) for num in (QUICK_FINITE_N_LOOPS if ctx.quick else FINITE_N_LOOPS)]
  for num_loops, n, finite in runs:
    rows, fit = _measure(ctx, num_loops, n, finite=finite)
    trajectory.extend(rows)
    fits.append(fit)
  common.write_csv(ctx, "gatmiry_gradient_dominance_trajectory.csv", trajectory)
  common.write_csv(ctx, "gatmiry_gradient_dominance_fits.csv", fits)
  figure = _figure(ctx, trajectory, fits)
  return {
      "fit_window_relative_gap": list(FIT_WINDOW),
      "exponents": {fit["L"]: {"paper_p": fit["paper_p"], "fitted_p": fit["p"],
                               "fitted_mu": fit["mu"], "isotropic_mu": fit["isotropic_mu"],
                               "points": fit["points"], "min_gap": fit["min_gap"]}
                    for fit in fits if fit["n"] == LARGE_N},
      "beyond_paper_finite_n": {
          fit["L"]: {"n": fit["n"], "p_in_fit_window": fit["p"],
                     "points_in_fit_window": fit["points"],
                     "near_optimum_window": list(NEAR_OPTIMUM_WINDOW),
                     "p_near_optimum": fit["near_p"], "mu_near_optimum": fit["near_mu"],
                     "two_lambda_min_hessian": fit["two_lambda_min"],
                     "grad_sq_over_excess_at_end": fit["last_resolved_grad_sq_over_excess"],
                     "min_gap": fit["min_gap"],
                     "final_asymmetry": fit["final_asymmetry"]}
          for fit in fits if fit["n"] == FINITE_N},
      "figure": figure,
  }
