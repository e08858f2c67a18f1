"""The step of k-step (preconditioned) GD that minimises its exact population loss.

:func:`best_gd_eta` minimises f(eta) = the Rao-Blackwellised population loss
(:func:`looped_icl.losses.population_loss`) of w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n over a
fixed sample of S, by a log-spaced grid followed by a golden-section search on log(eta): an exact
line search on that loss. :mod:`looped_icl.baselines` tunes its GD baselines with it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import constructions
from looped_icl import estimators
from looped_icl import linalg
from looped_icl import losses
from looped_icl import tasks as tasks_lib
from looped_icl import validation

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _loss_at(log_eta, cfg, task, s_SxDxD, a_DxD):
  """Population loss of preconditioned_gd(A, L, eta=e^log_eta, kind='looped').

  The looped preconditioner model with (A, eta) computes eta A^T S exactly as the model with
  (eta A, 1), so the step enters as a traced parameter (``cfg`` has eta = 1): one compilation
  serves every eta.
  """
  params = {"a": jnp.exp(log_eta) * a_DxD}
  loss = losses.population_loss(params, cfg, task, s_SxDxD)
  return jnp.where(jnp.isfinite(loss), loss, jnp.inf)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _grid_losses(log_etas_G, cfg, task, s_SxDxD, a_DxD):
  return jax.lax.map(lambda le: _loss_at(le, cfg, task, s_SxDxD, a_DxD), log_etas_G)


@functools.partial(jax.jit, static_argnames=("cfg", "iters"))
def _golden_section(lo, hi, cfg, task, s_SxDxD, a_DxD, iters: int):
  """Golden-section minimisation of the loss over log(eta) in [lo, hi]; (log_eta, loss)."""
  f = lambda le: _loss_at(le, cfg, task, s_SxDxD, a_DxD)
  c = hi - _INV_PHI * (hi - lo)
  d = lo + _INV_PHI * (hi - lo)

  def body(_, state):
    lo, hi, c, d, fc, fd = state
    left = fc < fd                                # the minimum lies in [lo, d]
    new_lo = jnp.where(left, lo, c)
    new_hi = jnp.where(left, d, hi)
    x_new = jnp.where(left, new_hi - _INV_PHI * (new_hi - new_lo),
                      new_lo + _INV_PHI * (new_hi - new_lo))
    f_new = f(x_new)
    return (new_lo, new_hi, jnp.where(left, x_new, d), jnp.where(left, c, x_new),
            jnp.where(left, f_new, fd), jnp.where(left, fc, f_new))

  _, _, c, d, fc, fd = jax.lax.fori_loop(0, iters, body, (lo, hi, c, d, f(c), f(d)))
  return jnp.where(fc < fd, c, d), jnp.minimum(fc, fd)


def best_gd_eta(task: tasks_lib.TaskDistribution, steps: int, s_SxDxD: jax.Array, *,
                preconditioner=None, eta_bounds: tuple[float, float] | None = None,
                num_grid: int = 24, golden_iters: int = 30, max_expansions: int = 4
                ) -> tuple[float, float]:
  """The step eta minimising the exact population loss of k-step (preconditioned) GD.

  f(eta) = mean over the given S of the Rao-Blackwellised loss (:mod:`looped_icl.losses`) of
  ``constructions.preconditioned_gd(A, steps, eta=eta, kind='looped')``, i.e. of
  w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n. It is minimised over a log-spaced grid of
  ``num_grid`` steps, then by golden section on log(eta) between the grid neighbours of the best
  grid point (an exact line search on the sampled population loss). If the best grid point is at
  an end of the grid, the grid is shifted outwards (at most ``max_expansions`` times).

  Args:
    task: the task distribution (one fixed Sigma: ``random_cov_kappa`` must be None).
    steps: k >= 1.
    s_SxDxD: fixed samples of S = X^T X / n (:func:`looped_icl.tasks.sample_empirical_covariance`),
      or importance-weighted ones (:class:`looped_icl.estimators.WeightedS`).
    preconditioner: A, (d, d); None means A = I (plain GD).
    eta_bounds: (low, high) of the initial grid, 0 < low < high; default
      (1e-4, 10) / ||A^T S_mean||_2, with S_mean the mean of the samples.
    num_grid: grid size, >= 3.
    golden_iters: golden-section iterations (each shrinks the bracket by 0.618), >= 1.
    max_expansions: grid shifts allowed when the minimum is at an end, >= 0.

  Returns:
    (eta, loss): the best step and its population loss (Python floats).
  """
  steps = validation.positive_int("steps", steps)
  num_grid = validation.positive_int("num_grid", num_grid)
  if num_grid < 3:
    raise ValueError(f"num_grid must be an integer >= 3, got {num_grid}")
  golden_iters = validation.positive_int("golden_iters", golden_iters)
  if isinstance(max_expansions, bool) or not isinstance(max_expansions, int) or max_expansions < 0:
    raise ValueError(f"max_expansions must be an integer >= 0, got {max_expansions!r}")
  tasks_lib.require_one_covariance(task, "best_gd_eta")
  d = task.d
  dtype = task.cov.dtype
  if isinstance(s_SxDxD, estimators.WeightedS):   # importance-weighted samples: kept as given
    s_mean = jnp.mean(s_SxDxD.weight[:, None, None] * s_SxDxD.s, axis=0)
  else:
    validation.shape("s_SxDxD", s_SxDxD, (None, d, d))
    s_SxDxD = jnp.asarray(s_SxDxD, dtype)
    s_mean = jnp.mean(s_SxDxD, axis=0)
  if preconditioner is None:
    a_DxD = jnp.eye(d, dtype=dtype)
  else:
    linalg.check_square("preconditioner", preconditioner, d, finite=True)
    a_DxD = jnp.asarray(preconditioner).astype(dtype)
  if eta_bounds is None:
    scale = float(jnp.linalg.norm(a_DxD.T @ s_mean, ord=2))
    if not np.isfinite(scale) or scale <= 0:
      raise ValueError("preconditioner must give A^T S a nonzero finite norm, got "
                       f"||A^T S_mean||_2 = {scale!r}")
    eta_bounds = (1e-4 / scale, 10.0 / scale)
  message = f"eta_bounds must be (low, high) with 0 < low < high, got {eta_bounds!r}"
  try:
    low, high = (float(b) for b in eta_bounds)
  except (TypeError, ValueError):
    raise ValueError(message) from None
  if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
    raise ValueError(message)

  cfg, _ = constructions.preconditioned_gd(a_DxD, steps, eta=1.0, kind="looped")
  log_lo, log_hi = math.log(low), math.log(high)
  spacing = (log_hi - log_lo) / (num_grid - 1)
  for expansion in range(max_expansions + 1):
    log_etas = np.linspace(log_lo, log_hi, num_grid)
    grid = np.asarray(_grid_losses(jnp.asarray(log_etas, dtype), cfg, task, s_SxDxD, a_DxD))
    if not np.any(np.isfinite(grid)):
      raise ValueError(f"eta_bounds gives no finite population loss on [{math.exp(log_lo):.3g}, "
                       f"{math.exp(log_hi):.3g}]")
    best = int(np.argmin(grid))
    shift = (num_grid - 2) * spacing
    if best == 0 and expansion < max_expansions:
      log_lo, log_hi = log_lo - shift, log_hi - shift
    elif best == num_grid - 1 and expansion < max_expansions:
      log_lo, log_hi = log_lo + shift, log_hi + shift
    else:
      break
  lo = log_etas[max(best - 1, 0)]
  hi = log_etas[min(best + 1, num_grid - 1)]
  log_eta, loss = _golden_section(jnp.asarray(lo, dtype), jnp.asarray(hi, dtype), cfg, task,
                                  s_SxDxD, a_DxD, golden_iters)
  if float(loss) <= grid[best]:
    return math.exp(float(log_eta)), float(loss)
  return math.exp(float(log_etas[best])), float(grid[best])


__all__ = ["best_gd_eta"]
