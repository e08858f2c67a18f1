"""The population optimum of the preconditioner / GD++ / fixed families (layered or looped).

Minimises the Rao-Blackwellised population loss (:func:`looped_icl.losses.population_loss`)
over a fixed sample of S = X^T X / n, in float64, with L-BFGS (scipy) from several random
restarts. Nothing is assumed about the optimum: A (and B) are general matrices, not symmetric or
isotropic, and the restarts start from random non-symmetric matrices.

A fit on a plain sample of S exploits the absence of the rare large-eigenvalue S that carry the
mean at L >~ 4, n/d <~ 5 (its fit loss is below the truth; :mod:`looped_icl.estimators`), so
:func:`solve_population_optimum` works in four independent samples:
  1. fit every restart (a quarter of ``max_iters``, in float32) on an importance sample from a
     default defensive proposal;
  2. choose the proposal for the best restart's parameters from its measured variance (pilot) and
     re-fit every distinct restart (those heading to one minimum once), warm, on a fresh sample
     from it;
  3. choose the restart on an independent sample (not the one it was fitted on);
  4. report the held-out loss on a fourth sample (``solver.test_samples``), with its standard error,
     tail diagnostics, and the gap between the fit and held-out values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import threadpoolctl
from absl import logging
from jax.flatten_util import ravel_pytree

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import linalg
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import validation
from looped_icl import workdir as workdir_lib

RESTART_INIT_SCALE = 0.3


def _restart_params(key: jax.Array, model: models.ModelConfig, cov) -> dict:
  """A random general start, scaled to the problem: A ~ (I + G) / (tr Sigma) with G ~ N(0, .3^2)."""
  template = models.init_params(key, dataclasses.replace(model, init_scale=RESTART_INIT_SCALE))
  scale = model.d / float(np.trace(np.asarray(cov))) / model.num_layers
  eye = jnp.eye(model.d, dtype=linalg.float_dtype())
  out = {}
  for name, value in template.items():
    if name == "eta":
      out[name] = jnp.abs(value)
    elif name == "b":
      out[name] = value  # GD++'s B starts near 0 (pure preconditioned GD) plus noise.
    else:
      out[name] = scale * (jnp.broadcast_to(eye, value.shape) + value)
  return out


CONSTRAINTS = ("general", "symmetric", "isotropic")


def _constrain(params: dict, constraint: str) -> dict:
  """Maps free parameters onto the constraint set: A (and B) symmetric, or multiples of I."""
  if constraint == "general":
    return params
  out = dict(params)
  for name in ("a", "b"):
    if name not in params:
      continue
    m = params[name]
    if constraint == "symmetric":
      out[name] = (m + jnp.swapaxes(m, -1, -2)) / 2
    else:
      d = m.shape[-1]
      scale = jnp.trace(m, axis1=-2, axis2=-1) / d
      out[name] = scale[..., None, None] * jnp.broadcast_to(jnp.eye(d, dtype=m.dtype), m.shape)
  return out


@functools.lru_cache(maxsize=None)
def _objective(model: models.ModelConfig, constraint: str, dtype: str):
  """(jitted value_and_grad(flat, task, samples), unravel) of the population loss over the flat
  free parameters: one program per (model, constraint, task law, sample shape), shared by every
  fit and restart (the samples are an argument, not constants baked into a fresh closure: a
  solve compiled its objective once per fit before). ``dtype``, the default float dtype, is part
  of the key: ``unravel`` casts to the template's dtype."""
  _, unravel = ravel_pytree(_restart_params(jax.random.key(0), model, np.eye(model.d)))

  def loss(flat, task, samples):
    return losses.population_loss(_constrain(unravel(flat), constraint), model, task, samples)

  return jax.jit(jax.value_and_grad(loss)), unravel


def objective(model: models.ModelConfig, constraint: str = "general"):
  """(value_and_grad(flat, task, samples), unravel): the population loss over the flat free
  parameters of ``model`` under ``constraint`` and its gradient, compiled once per shape and
  shared with :func:`minimize_population_loss` (call it under the same x64 setting)."""
  validation.choice("constraint", constraint, CONSTRAINTS)
  return _objective(model, constraint, str(linalg.float_dtype()))


def _whitening(model: models.ModelConfig, cov) -> tuple:
  """(to_raw, to_white): the linear change of the flat free parameters in which L-BFGS runs.

  Every preconditioner A (``a``, one per layer) is written A = C A' C with C = Sigma^{-1/2}, the
  optimiser moving A' (GD++'s B and the fixed family's steps are left as they are). With
  x = Sigma^{1/2} x' the preconditioned step on Sigma is the step of A' on the whitened problem, so
  the loss is far better conditioned in A': on the main job (Sigma's eigenvalues 1/16..1) the
  restarts converge in 65-94 evaluations instead of stopping at 125 (BUILD_NOTES.md, "The solver:
  whitened coordinates and one BLAS thread"). It is a change of coordinates, not of the problem:
  the same A are reachable and scipy's results are mapped back (``res.x``, ``res.jac`` in the flat
  free parameters). C is symmetric, so the gradient maps with the same C:
  dL/dA' = C (dL/dA) C, i.e. ``to_raw``.
  """
  template = jax.eval_shape(lambda: models.init_params(jax.random.key(0), model))
  names = sorted(template)                       # ravel_pytree's order for a flat dict
  offsets = np.cumsum([0] + [int(np.prod(template[name].shape)) for name in names])
  w, v = np.linalg.eigh(np.asarray(cov, np.float64))
  c_root, c_inv_root = (v * w**-0.5) @ v.T, (v * w**0.5) @ v.T
  a_block = (slice(offsets[names.index("a")], offsets[names.index("a") + 1])
             if "a" in template else None)

  def transform(flat, m):
    flat = np.array(flat, np.float64)
    if a_block is not None:
      a = flat[a_block].reshape(template["a"].shape)
      flat[a_block] = (m @ a @ m).ravel()
    return flat

  return (lambda flat: transform(flat, c_root)), (lambda flat: transform(flat, c_inv_root))


def minimize_population_loss(model: models.ModelConfig, task: tasks_lib.TaskDistribution,
                             s_fit_SxDxD, *, restarts: int = 4, max_iters: int = 500,
                             restart_seed: int = 0, constraint: str = "general",
                             starts: list | None = None, float32: bool = False):
  """L-BFGS (float64) on the population loss over the fixed samples ``s_fit_SxDxD`` (an array,
  or importance-weighted :class:`looped_icl.estimators.WeightedS`).

  Call under ``jax.enable_x64(True)`` with a float64 task. ``constraint`` restricts A (and GD++'s
  B): ``general`` (free d x d), ``symmetric`` ((M + M^T)/2 of a free M) or ``isotropic`` (c I;
  for Sigma != I this is the best multiple of the identity, not of Sigma^-1).

  ``starts``: flat starting points (one per restart) instead of random ones (warm restarts).
  ``float32``: evaluate the loss in float32 (the same samples, rounded; ~0.6x the time of a
  float64 evaluation, the fit stopping at float32 resolution): for a first fit whose minima only
  warm-start a float64 one. The returned params are float64 either way.

  Returns:
    (params, runs): the best restart's (constrained) params and scipy's result of every restart
    (``runs[r].x`` is restart r's free parameters, ``runs[r].params`` its constrained params).
  """
  if starts is None:
    starts = [ravel_pytree(_restart_params(jax.random.fold_in(jax.random.key(restart_seed), r),
                                           model, task.cov))[0] for r in range(restarts)]
  unravel = objective(model, constraint)[1]
  if float32:
    with jax.enable_x64(False):
      runs = _lbfgs(model, _as_float32(task), _as_float32(s_fit_SxDxD), starts, max_iters,
                    constraint)
  else:
    runs = _lbfgs(model, task, s_fit_SxDxD, starts, max_iters, constraint)
  for res in runs:
    res.params = _constrain(unravel(jnp.asarray(res.x)), constraint)
  best = min(runs, key=lambda res: res.fun)
  return best.params, runs


def _as_float32(tree):
  """A task or samples of S with every floating array in float32."""
  return jax.tree.map(lambda x: (jnp.asarray(x, jnp.float32)
                                 if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x), tree)


def _lbfgs(model, task, s_fit_SxDxD, starts, max_iters, constraint) -> list:
  """scipy's L-BFGS-B from each start, in whitened coordinates, at the current default dtype;
  each result's ``x`` and ``jac`` in the flat free parameters."""
  value_and_grad = objective(model, constraint)[0]
  to_raw, to_white = _whitening(model, task.cov)

  def fun(white):   # L-BFGS runs in whitened coordinates (see _whitening)
    value, grad = value_and_grad(jnp.asarray(to_raw(white), linalg.float_dtype()), task,
                                 s_fit_SxDxD)
    return float(value), to_raw(np.asarray(grad, np.float64))

  runs = []
  # One BLAS thread for scipy's L-BFGS-B: its tiny BLAS calls otherwise leave OpenBLAS's
  # threads spinning, and they take the cores from XLA's evaluation (~130 -> ~88 ms per
  # evaluation at 20k samples on 2 cores; BUILD_NOTES.md, "The solver: whitened coordinates and
  # one BLAS thread").
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    for x0 in starts:
      res = scipy.optimize.minimize(fun, to_white(np.asarray(x0, np.float64)), jac=True,
                                    method="L-BFGS-B",
                                    options={"maxiter": max_iters, "ftol": 1e-15, "gtol": 1e-10,
                                             "maxcor": 30})
      res.x, res.jac = to_raw(res.x), to_white(res.jac)   # back in the flat free parameters
      runs.append(res)
  return runs


def solve_population_optimum(exp: config_lib.Experiment, key: jax.Array | None = None, *,
                             restart_seed: int = 0, trained_params=None,
                             constraint: str = "general",
                             proposal: estimators.Proposal | None = None) -> dict:
  """Minimises the exact population loss; returns the JSON-ready result (see module doc).

  Args:
    exp: the experiment (its task, model family and ``solver`` settings).
    key: key of the samples of S (default: derived from ``exp.seed``).
    restart_seed: seed of the random restarts' starting points only (the problem is unchanged).
    trained_params: optional params of a trained model of the same family; its loss is measured
      on the same independent sample of S as the optimum's (a paired comparison, under the key
      ``trained_model``: loss, difference to the optimum with its standard error, ratio).
    constraint: ``general`` | ``symmetric`` | ``isotropic`` (see
      :func:`minimize_population_loss`).
    proposal: the law of every sample of S (skips steps 1-2 of the module doc: one fit on
      ``fold_in(key, 2)``); default: chosen for the problem.

  The samples are drawn from ``fold_in(key, i)``: i = 0 first fit, 1 pilot, 2 fit, 3 restart
  choice, 4 held out (pilot from ``fold_in(key_4, 0)``, samples ``fold_in(key_4, 1)``).
  """
  model, sc = exp.model, exp.solver
  if model.parametrization not in losses.POPULATION_FAMILIES or model.activation != "linear":
    raise ValueError(f"model.parametrization must be one of {list(losses.POPULATION_FAMILIES)} "
                     f"(linear) for the solver, got {model.parametrization!r}")
  tasks_lib.require_one_covariance(exp.task, "the solver")
  key = jax.random.fold_in(jax.random.key(exp.seed), 3) if key is None else key
  keys = [jax.random.fold_in(key, i) for i in range(5)]
  with jax.enable_x64(True):
    task = tasks_lib.as_float64(exp.task)
    solve = functools.partial(minimize_population_loss, model, task, constraint=constraint)
    if proposal is None:
      # 1. Fit on a default defensive proposal. It only chooses the proposal and warm-starts
      # step 2: a quarter of the iterations, in float32 (BUILD_NOTES.md, "The solver's first
      # fit in float32").
      s_first = estimators.sample(keys[0], task, sc.samples, estimators.default_proposal(task))
      _, runs = solve(s_first, restarts=sc.restarts, restart_seed=restart_seed,
                      max_iters=max(25, sc.max_iters // 4), float32=True)
      # 2. The proposal for the best restart; re-fit every restart, warm, on a fresh sample.
      best_first = min(runs, key=lambda res: res.fun).params
      proposal, _ = losses.choose_proposal(best_first, model, task, keys[1], sc.samples)
      s_fit = estimators.sample(keys[2], task, sc.samples, proposal)
      # Restarts heading to the same minimum are polished once: within 1% of the parameters'
      # scale (float32 fits of one minimum differ by <= 0.2% of it on the main job, distinct
      # minima by ~20%).
      distinct = []
      for res in sorted(runs, key=lambda res: res.fun):
        if not any(np.max(np.abs(res.x - other.x)) <= 1e-2 * np.max(np.abs(other.x))
                   for other in distinct):
          distinct.append(res)
      _, runs = solve(s_fit, starts=[res.x for res in distinct], max_iters=sc.max_iters)
    else:
      s_fit = estimators.sample(keys[2], task, sc.samples, proposal)
      _, runs = solve(s_fit, restarts=sc.restarts, restart_seed=restart_seed,
                      max_iters=sc.max_iters)
    # 3. Choose the restart on an independent sample.
    s_select = estimators.sample(keys[3], task, sc.samples, proposal)
    last_layer = lambda params, samples: np.asarray(
        losses.last_layer_loss_samples(params, model, task, samples))
    select = [float(np.mean(np.asarray(s_select.weight) * last_layer(res.params, s_select)))
              for res in runs]
    best_index = int(np.argmin(select))
    params = runs[best_index].params
    # 4. Held out.
    held_out, s_test, values_SxL = losses.estimate_population_loss(
        params, model, task, keys[4], sc.test_samples, proposal=proposal)
    per_sample = values_SxL[:, -1]
    fit_estimate = estimators.estimate(last_layer(params, s_fit), s_fit)
    gap_stderr = float(np.hypot(fit_estimate["stderr"], held_out["stderr"]))
    if held_out["warning"]:
      logging.warning("solver held-out loss %s", estimators.format_estimate(held_out))
    if held_out["value"] - fit_estimate["value"] > 3 * gap_stderr:
      logging.warning("solver: the fit loss %.4g is below the held-out loss %.4g by more than 3 "
                      "standard errors (the fit over-fits its sample; raise solver.samples)",
                      fit_estimate["value"], held_out["value"])
    a_eff = np.asarray(theory.effective_preconditioners(params, model))
    whitened = np.asarray(theory.whiten_preconditioner(jnp.asarray(a_eff), task.cov))
    result = {
        "loss": held_out["value"],
        "loss_stderr": held_out["stderr"],
        "loss_estimate": {k: v for k, v in held_out.items() if k not in ("values", "stderrs")},
        "fit_loss": fit_estimate["value"],
        "fit_loss_stderr": fit_estimate["stderr"],
        "held_out_minus_fit": held_out["value"] - fit_estimate["value"],
        "held_out_minus_fit_stderr": gap_stderr,
        "restart_losses": [float(res.fun) for res in runs],   # one per distinct minimum
        "restart_selection_losses": select,
        "restart_chosen": best_index,
        "restart_converged": [bool(res.success) for res in runs],
        "preconditioners": a_eff.tolist(),
        "eigenvalues": np.asarray(theory.eigenvalues_as_pairs(a_eff)).tolist(),
        "dist_to_identity_whitened": np.asarray(theory.dist_to_identity(whitened)).tolist(),
        "params": {k: np.asarray(v).tolist() for k, v in params.items()},
        "samples": sc.samples,
        "test_samples": sc.test_samples,
        "proposal_scales": list(proposal.scales),
        "proposal_weights": list(proposal.weights),
    }
    if trained_params is not None:
      trained = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), trained_params)
      trained_loss = last_layer(trained, s_test)
      trained_estimate = estimators.estimate(trained_loss, s_test)
      diff = estimators.estimate(trained_loss - per_sample, s_test)
      result["trained_model"] = {
          "loss": trained_estimate["value"],
          "loss_stderr": trained_estimate["stderr"],
          "loss_minus_optimum": diff["value"],
          "loss_minus_optimum_stderr": diff["stderr"],
          "ratio": trained_estimate["value"] / held_out["value"],
      }
    if model.parametrization == "gdpp":
      result["b_matrices"] = np.asarray(params["b"]).reshape(-1, model.d, model.d).tolist()
  return result


def solve_into_workdir(config, workdir: str) -> dict:
  """Validates ``config``, solves, writes ``workdir/optimum.json`` and ``optimum_config.json``
  (what ``looped-icl solve`` runs); a finished solve of the same config is reused
  (:func:`looped_icl.workdir.finished`).

  A model trained with the same config in ``workdir`` is compared on the same samples of S.
  """
  exp = config_lib.from_config(config)
  with workdir_lib.lock(workdir):
    if workdir_lib.finished(workdir, config, "solve"):
      logging.info("%s holds the finished solve of this config; optimum.json is reused", workdir)
      return workdir_lib.read_json(workdir, workdir_lib.OPTIMUM)
    trained = (workdir_lib.load_trained_params(exp, workdir)
               if workdir_lib.same_config(workdir, config) else None)
    result = solve_population_optimum(exp, trained_params=trained)
    workdir_lib.write_json(workdir, workdir_lib.OPTIMUM, result)
    workdir_lib.write_config(config, workdir, workdir_lib.OPTIMUM_CONFIG)
    return result
