"""The population optimum of the preconditioner / GD++ / fixed families (layered or looped).

Minimises the exact Rao-Blackwellised population loss (:func:`looped_icl.losses.population_loss`)
over a large fixed sample of S = X^T X / n, in float64, with L-BFGS (scipy) from several random
restarts. Nothing is assumed about the optimum: A (and B) are general matrices, not symmetric or
isotropic, and the restarts start from random non-symmetric matrices. The reported loss and its
standard error are re-measured on an independent sample of S.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.flatten_util import ravel_pytree

from looped_icl import config_lib
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import train
from looped_icl import validation

RESTART_INIT_SCALE = 0.3


def _task64(task: tasks_lib.TaskDistribution) -> tasks_lib.TaskDistribution:
  return dataclasses.replace(task, cov=jnp.asarray(np.asarray(task.cov), jnp.float64),
                             noise_std=jnp.asarray(np.asarray(task.noise_std), jnp.float64))


def _restart_params(key: jax.Array, model: models.ModelConfig, cov) -> dict:
  """A random general start, scaled to the problem: A ~ (I + G) / (tr Sigma) with G ~ N(0, .3^2)."""
  template = models.init_params(key, dataclasses.replace(model, init_scale=RESTART_INIT_SCALE))
  scale = model.d / float(np.trace(np.asarray(cov))) / model.num_layers
  eye = jnp.eye(model.d, dtype=jnp.float64)
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


def minimize_population_loss(model: models.ModelConfig, task: tasks_lib.TaskDistribution,
                             s_fit_SxDxD: jax.Array, *, restarts: int = 4, max_iters: int = 500,
                             restart_seed: int = 0, constraint: str = "general"):
  """L-BFGS (float64) on the exact population loss over the fixed samples ``s_fit_SxDxD``.

  Call under ``jax.enable_x64(True)`` with a float64 task. ``constraint`` restricts A (and GD++'s
  B): ``general`` (free d x d), ``symmetric`` ((M + M^T)/2 of a free M) or ``isotropic`` (c I;
  for Sigma != I this is the best multiple of the identity, not of Sigma^-1).

  Returns:
    (params, runs): the best restart's (constrained) params and scipy's result of every restart.
  """
  validation.choice("constraint", constraint, CONSTRAINTS)
  template = _restart_params(jax.random.key(0), model, task.cov)
  _, unravel = ravel_pytree(template)
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda flat: losses.population_loss(_constrain(unravel(flat), constraint), model, task,
                                          s_fit_SxDxD)))

  def fun(flat):
    value, grad = value_and_grad(jnp.asarray(flat))
    return float(value), np.asarray(grad, np.float64)

  runs = []
  for r in range(restarts):
    restart_key = jax.random.fold_in(jax.random.key(restart_seed), r)
    x0, _ = ravel_pytree(_restart_params(restart_key, model, task.cov))
    runs.append(scipy.optimize.minimize(fun, np.asarray(x0), jac=True, method="L-BFGS-B",
                                        options={"maxiter": max_iters, "ftol": 1e-15,
                                                 "gtol": 1e-10, "maxcor": 30}))
  best = min(runs, key=lambda res: res.fun)
  return _constrain(unravel(jnp.asarray(best.x)), constraint), runs


def solve_population_optimum(exp: config_lib.Experiment, key: jax.Array | None = None, *,
                             restart_seed: int = 0, trained_params=None,
                             constraint: str = "general") -> dict:
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
  """
  model, sc = exp.model, exp.solver
  if model.parametrization not in losses.POPULATION_FAMILIES or model.activation != "linear":
    raise ValueError(f"model.parametrization must be one of {list(losses.POPULATION_FAMILIES)} "
                     f"(linear) for the solver, got {model.parametrization!r}")
  if exp.task.random_cov_kappa is not None:
    raise ValueError("task.random_cov_kappa must be 0 for the solver (one fixed Sigma)")
  key = jax.random.fold_in(jax.random.key(exp.seed), 3) if key is None else key
  with jax.enable_x64(True):
    task = _task64(exp.task)
    s_fit = tasks_lib.sample_empirical_covariance(jax.random.fold_in(key, 0), task, sc.samples)
    s_test = tasks_lib.sample_empirical_covariance(jax.random.fold_in(key, 1), task, sc.samples)
    params, runs = minimize_population_loss(model, task, s_fit, restarts=sc.restarts,
                                            max_iters=sc.max_iters, restart_seed=restart_seed,
                                            constraint=constraint)
    best = min(runs, key=lambda res: res.fun)
    per_sample = np.asarray(losses.population_loss_samples(params, model, task, s_test),
                            np.float64)[:, -1]
    a_eff = np.asarray(theory.effective_preconditioners(params, model))
    whitened = np.asarray(theory.whiten_preconditioner(jnp.asarray(a_eff), task.cov))
    result = {
        "loss": float(per_sample.mean()),
        "loss_stderr": float(per_sample.std(ddof=1) / np.sqrt(per_sample.shape[0])),
        "fit_loss": float(best.fun),
        "restart_losses": [float(res.fun) for res in runs],
        "restart_converged": [bool(res.success) for res in runs],
        "preconditioners": a_eff.tolist(),
        "eigenvalues": np.asarray(theory.eigenvalues_as_pairs(a_eff)).tolist(),
        "dist_to_identity_whitened": np.asarray(theory.dist_to_identity(whitened)).tolist(),
        "params": {k: np.asarray(v).tolist() for k, v in params.items()},
        "samples": sc.samples,
    }
    if trained_params is not None:
      trained = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), trained_params)
      trained_loss = np.asarray(losses.population_loss_samples(trained, model, task, s_test),
                                np.float64)[:, -1]
      diff = trained_loss - per_sample
      result["trained_model"] = {
          "loss": float(trained_loss.mean()),
          "loss_minus_optimum": float(diff.mean()),
          "loss_minus_optimum_stderr": float(diff.std(ddof=1) / np.sqrt(diff.shape[0])),
          "ratio": float(trained_loss.mean() / per_sample.mean()),
      }
    if model.parametrization == "gdpp":
      result["b_matrices"] = np.asarray(params["b"]).reshape(-1, model.d, model.d).tolist()
  return result


def solve_into_workdir(config, workdir: str) -> dict:
  """Validates ``config``, solves, writes ``workdir/optimum.json`` (what ``launch.solve`` runs).

  A model trained with the same config in ``workdir`` is compared on the same samples of S.
  """
  exp = config_lib.from_config(config)
  result = solve_population_optimum(exp, trained_params=train.load_trained_params(exp, workdir))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "optimum.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result
