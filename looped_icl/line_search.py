"""The step of k-step (preconditioned) GD that minimises its exact population loss.

:func:`best_gd_eta` minimises f(eta) = the Rao-Blackwellised population loss
(:func:`looped_icl.losses.population_loss`) of w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n over a
fixed sample of S, by a log-spaced grid followed by a golden-section search on log(eta): an exact
line search on that loss. :mod:`looped_icl.baselines` tunes its GD baselines with it.

For a symmetric positive definite A the loss of every sample is diagonalised once
(:class:`_SpectralLoss`), so each trial step costs O(d^2) per sample in NumPy float64 and nothing
is compiled (the step used to be searched through the model's loss, two XLA programs per call).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from looped_icl import estimators
from looped_icl import linalg
from looped_icl import tasks as tasks_lib
from looped_icl import validation

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
_GRID_CHUNK_ELEMENTS = 1 << 22   # etas x samples x d per vectorised grid evaluation


class _SpectralLoss:
  """f(eta), the mean population loss of k-step GD with an SPD preconditioner, in closed form.

  With A = R R^T (Cholesky) and R^T S R = V diag(lam) V^T, the iteration matrix is
  I - eta A S = Q diag(1 - eta lam) Q^-1 with Q = R V. Then (:mod:`looped_icl.losses`, with
  M_k = -(I - eta A S)^k and N_k = sum_{t<k} (I - eta A S)^t eta A)
    tr(Sigma M_k Sigma_w M_k^T) = sum_ij D_i D_j G_ij H_ij,      D = (1 - eta lam)^k,
    tr(Sigma N_k S N_k^T)       = sum_i E_i^2 G_ii lam_i,        E = eta sum_{t<k} (1 - eta lam)^t,
  with G = Q^T Sigma Q and H = Q^-1 Sigma_w Q^-T (Q^-1 A S A Q^-T = diag(lam)). One
  eigendecomposition per sample of S, then every eta costs O(d^2) per sample: a polynomial of
  degree 2k in eta, evaluated in float64 in its product form (stable for any k), no compilation.
  """

  def __init__(self, task: tasks_lib.TaskDistribution, steps: int, s_SxDxD, weight_S, a_DxD):
    r_DxD = np.linalg.cholesky(a_DxD)
    r_inv_DxD = np.linalg.inv(r_DxD)
    b_SxDxD = r_DxD.T @ s_SxDxD @ r_DxD
    lam_SxD, v_SxDxD = np.linalg.eigh((b_SxDxD + np.swapaxes(b_SxDxD, 1, 2)) / 2)
    self.lam_SxD = np.maximum(lam_SxD, 0.0)           # S is PSD: negatives are rounding
    q_SxDxD = r_DxD @ v_SxDxD
    q_inv_SxDxD = np.swapaxes(v_SxDxD, 1, 2) @ r_inv_DxD
    cov, weight_cov = (np.asarray(m, np.float64) for m in (task.cov, task.weight_cov))
    g_SxDxD = np.swapaxes(q_SxDxD, 1, 2) @ cov @ q_SxDxD
    h_SxDxD = q_inv_SxDxD @ weight_cov @ np.swapaxes(q_inv_SxDxD, 1, 2)
    self.w_SxDxD = g_SxDxD * h_SxDxD
    noise_var = float(task.noise_std) ** 2
    self.noise_SxD = noise_var / task.n * np.einsum("sii->si", g_SxDxD) * self.lam_SxD
    self.noise_var = noise_var
    self.weight_S = weight_S
    self.steps = steps

  def __call__(self, eta_E: np.ndarray) -> np.ndarray:
    """f at each step of ``eta_E`` (E,); inf where it is not finite."""
    eta_E = np.asarray(eta_E, np.float64)
    chunk = max(1, _GRID_CHUNK_ELEMENTS // self.lam_SxD.size)
    return np.concatenate([self._losses(eta_E[i:i + chunk])
                           for i in range(0, eta_E.shape[0], chunk)])

  def _losses(self, eta_E):
    z_ExSxD = 1.0 - eta_E[:, None, None] * self.lam_SxD
    power_ExSxD = np.ones_like(z_ExSxD)
    sum_ExSxD = np.zeros_like(z_ExSxD)
    with np.errstate(over="ignore", invalid="ignore"):
      for _ in range(self.steps):
        sum_ExSxD += power_ExSxD
        power_ExSxD *= z_ExSxD
      signal_ExS = np.einsum("esi,sij,esj->es", power_ExSxD, self.w_SxDxD, power_ExSxD)
      noise_ExS = eta_E[:, None] ** 2 * np.einsum("esi,si->es", sum_ExSxD ** 2, self.noise_SxD)
      loss_ExS = signal_ExS + noise_ExS + self.noise_var   # sigma^2 per sample, as the model's
      if self.weight_S is not None:
        loss_ExS = loss_ExS * self.weight_S
      loss_E = loss_ExS.mean(axis=1)
    return np.where(np.isfinite(loss_E), loss_E, np.inf)


def _golden_section(f, lo: float, hi: float, iters: int) -> tuple[float, float]:
  """Golden-section minimisation of f(e^x) over x = log(eta) in [lo, hi]; (log_eta, loss)."""
  g = lambda x: float(f(np.exp(np.asarray([x])))[0])
  c, d = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
  fc, fd = g(c), g(d)
  for _ in range(iters):
    if fc < fd:                                   # the minimum lies in [lo, d]
      hi, d, fd = d, c, fc
      c = hi - _INV_PHI * (hi - lo)
      fc = g(c)
    else:
      lo, c, fc = c, d, fd
      d = lo + _INV_PHI * (hi - lo)
      fd = g(d)
  return (c, fc) if fc < fd else (d, fd)


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
    preconditioner: A, (d, d), symmetric positive definite (asymmetry up to 1e-5 relative, as
      from a float32 inverse, is symmetrised away); None means A = I (plain GD).
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
  if isinstance(s_SxDxD, estimators.WeightedS):   # importance-weighted samples: kept as given
    weight_S = np.asarray(s_SxDxD.weight, np.float64)
    s_SxDxD = np.asarray(s_SxDxD.s, np.float64)
    s_mean = np.mean(weight_S[:, None, None] * s_SxDxD, axis=0)
  else:
    validation.shape("s_SxDxD", s_SxDxD, (None, d, d))
    weight_S = None
    s_SxDxD = np.asarray(s_SxDxD, np.float64)
    s_mean = np.mean(s_SxDxD, axis=0)
  if preconditioner is None:
    a_DxD = np.eye(d)
  else:
    linalg.check_square("preconditioner", preconditioner, d, finite=True)
    a_DxD = np.asarray(preconditioner, np.float64)
    asymmetry = np.linalg.norm(a_DxD - a_DxD.T) / max(np.linalg.norm(a_DxD), 1e-300)
    a_DxD = (a_DxD + a_DxD.T) / 2
    smallest = np.linalg.eigvalsh(a_DxD)[0]
    if asymmetry > 1e-5 or smallest <= 0:
      raise ValueError("preconditioner must be symmetric positive definite, got relative "
                       f"asymmetry {asymmetry:.3g} and smallest eigenvalue {smallest:.3g}")
  if eta_bounds is None:
    scale = float(np.linalg.norm(a_DxD.T @ s_mean, ord=2))
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

  f = _SpectralLoss(task, steps, s_SxDxD, weight_S, a_DxD)
  log_lo, log_hi = math.log(low), math.log(high)
  spacing = (log_hi - log_lo) / (num_grid - 1)
  for expansion in range(max_expansions + 1):
    log_etas = np.linspace(log_lo, log_hi, num_grid)
    grid = f(np.exp(log_etas))
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
  log_eta, loss = _golden_section(f, log_etas[max(best - 1, 0)],
                                  log_etas[min(best + 1, num_grid - 1)], golden_iters)
  if loss <= grid[best]:
    return math.exp(log_eta), loss
  return math.exp(float(log_etas[best])), float(grid[best])


__all__ = ["best_gd_eta"]
