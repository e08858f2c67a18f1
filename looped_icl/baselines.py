"""Classical in-context regression predictors, evaluated on the transformers' tasks.

Every predictor reads only the sufficient statistics of a :class:`~looped_icl.tasks.GramTasks`
batch (or token-level :class:`~looped_icl.tasks.Tasks`, converted exactly by
:func:`~looped_icl.tasks.to_gram`): X^T X (B, d, d), X^T y (B, d) and the query x_q (B, d).
With S = X^T X / n and b = X^T y / n:

* :func:`gd_predict` / :func:`pgd_predict`: k steps of (preconditioned) gradient descent on
  (1/2n) ||y - X w||^2 from w_0 = 0,
    w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n = w_k + eta A^T (b - S w_k),
  the family the looped preconditioner transformer implements exactly (SPEC section 3);
  the prediction is <w_k, x_q>.
* :func:`ols_predict`: least squares w = (X^T X)^+ X^T y, the minimum-norm least-squares solution
  (the minimum-norm interpolant when n < d); the pseudo-inverse uses eigh with a relative cutoff.
* :func:`ridge_predict`: the Bayes posterior mean under w* ~ N(0, Sigma_w), noise variance s^2,
    w = (X^T X + s^2 Sigma_w^-1)^-1 X^T y = R (R X^T X R + s^2 I)^+ R X^T y,  R = Sigma_w^{1/2},
  whose s = 0 limit is the minimum Sigma_w^-1-norm least-squares solution.
* :func:`newton_predict`: the Newton-Schulz iteration for S^-1 (Fu et al. 2023, "Transformers
  learn higher-order optimization methods for in-context learning"):
    M_0 = S / lambda_max(S)^2,  M_{k+1} = M_k (2 I - S M_k),
  prediction <M_k b, x_q>. M_k -> S^+ (quadratically once every eigenvalue of S M_k is near 1).
* :func:`best_gd_eta` (:mod:`looped_icl.line_search`, re-exported here): the step minimising the
  exact population loss of k-step (preconditioned) GD over a fixed sample of S.
* :func:`baseline_losses`: the Monte Carlo in-context loss E[(y_hat - y_q)^2] of every baseline on
  one batch, for reporting next to a model's loss.

>>> from looped_icl import tasks
>>> task = tasks.make_task(jnp.eye(5), 20, noise_std=0.1)
>>> batch = tasks.sample_gram(jax.random.key(0), task, 1000)
>>> s = tasks.sample_empirical_covariance(jax.random.key(1), task, 2000)
>>> report = baseline_losses(batch, task, 3, s)
>>> sorted(report)
['gd', 'gd_eta', 'newton', 'ols', 'pgd_inv_cov', 'pgd_inv_cov_eta', 'ridge']
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from looped_icl import covariance as cov_lib
from looped_icl import linalg
from looped_icl import tasks as tasks_lib
from looped_icl import validation
from looped_icl.line_search import best_gd_eta

BASELINES = ("gd", "pgd_inv_cov", "ols", "ridge", "newton")
_RCOND_FACTOR = 10.0  # default relative eigenvalue cutoff: _RCOND_FACTOR * d * eps(dtype).


# ------------------------------------------------------------------------------------- helpers


def _statistics(batch):
  """(X^T X (B, d, d), X^T y (B, d), x_q (B, d), n) of a batch."""
  gram = tasks_lib.as_gram(batch, "gram")
  xtx_BxDxD, xty_BxD, _, xq_BxD = tasks_lib.split_gram(gram)
  return xtx_BxDxD, xty_BxD, xq_BxD, gram.n


def _default_rcond(d: int, dtype) -> float:
  return _RCOND_FACTOR * d * float(jnp.finfo(dtype).eps)


def _check_rcond(rcond, d: int, dtype) -> float:
  if rcond is None:
    return _default_rcond(d, dtype)
  return validation.in_range("rcond", rcond, 0.0, 1.0, high_open=True)


def _psd_solve(mat_BxDxD: jax.Array, rhs_BxD: jax.Array, shift, rcond: float) -> jax.Array:
  """(mat + shift I)^+ rhs for symmetric PSD ``mat`` via eigh.

  Eigenvalues mu_i + shift <= rcond * (mu_max + shift) are treated as zero (pseudo-inverse).
  """
  evals_BxD, evecs_BxDxD = jnp.linalg.eigh(mat_BxDxD)
  shifted_BxD = evals_BxD + shift
  cutoff_Bx1 = rcond * jnp.max(shifted_BxD, axis=-1, keepdims=True)
  keep_BxD = shifted_BxD > cutoff_Bx1
  inv_BxD = jnp.where(keep_BxD, 1.0 / jnp.where(keep_BxD, shifted_BxD, 1.0), 0.0)
  coef_BxD = inv_BxD * jnp.einsum("bji,bj->bi", evecs_BxDxD, rhs_BxD)
  return jnp.einsum("bij,bj->bi", evecs_BxDxD, coef_BxD)


# ------------------------------------------------------------------------------ GD and PGD


@functools.partial(jax.jit, static_argnames=("n", "steps"))
def _pgd_path(xtx_BxDxD, xty_BxD, xq_BxD, a_DxD, eta, n: int, steps: int) -> jax.Array:
  """Predictions <w_k, x_q> for k = 1..steps, (B, steps)."""
  step_DxD = (eta / n) * a_DxD.T.astype(xtx_BxDxD.dtype)

  def step(w_BxD, _):
    resid_BxD = xty_BxD - jnp.einsum("bij,bj->bi", xtx_BxDxD, w_BxD)     # X^T (y - X w)
    w_BxD = w_BxD + jnp.einsum("ij,bj->bi", step_DxD, resid_BxD)
    return w_BxD, jnp.einsum("bi,bi->b", w_BxD, xq_BxD)

  _, preds_KxB = jax.lax.scan(step, jnp.zeros_like(xty_BxD), None, length=steps)
  return preds_KxB.T


def pgd_predict(gram, a, steps: int, eta=1.0, *, all_steps: bool = False) -> jax.Array:
  """k steps of preconditioned GD, w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n, w_0 = 0.

  Args:
    gram: a :class:`~looped_icl.tasks.GramTasks` (or token-level ``Tasks``) batch of B tasks.
    a: the preconditioner A, (d, d), general (A^T is applied, as in the transformer family).
    steps: k >= 1.
    eta: step, > 0 (may be a traced scalar).
    all_steps: return the prediction after every step, (B, steps), instead of the last, (B,).

  Returns:
    <w_k, x_q>, (B,) or (B, steps).
  """
  steps = validation.positive_int("steps", steps)
  validation.positive("eta", eta)
  xtx_BxDxD, xty_BxD, xq_BxD, n = _statistics(gram)
  linalg.check_square("a", a, xtx_BxDxD.shape[-1], finite=True)
  a_DxD = jnp.asarray(a)
  eta = jnp.asarray(eta, xtx_BxDxD.dtype)
  preds = _pgd_path(xtx_BxDxD, xty_BxD, xq_BxD, a_DxD, eta, n, steps)
  return preds if all_steps else preds[:, -1]


def gd_predict(gram, steps: int, eta, *, all_steps: bool = False) -> jax.Array:
  """k steps of plain GD, w_{k+1} = w_k + eta X^T (y - X w_k) / n from w_0 = 0 (A = I).

  Returns <w_k, x_q>, (B,), or every step's prediction, (B, steps), with ``all_steps``.
  """
  steps = validation.positive_int("steps", steps)
  validation.positive("eta", eta)
  gram = tasks_lib.as_gram(gram, "gram")
  d = gram.gram.shape[-1] - 1
  return pgd_predict(gram, jnp.eye(d, dtype=gram.gram.dtype), steps, eta, all_steps=all_steps)


# ---------------------------------------------------------------------------- OLS and ridge


@jax.jit
def _ols(xtx_BxDxD, xty_BxD, xq_BxD, rcond):
  """<(X^T X)^+ X^T y, x_q>, (B,)."""
  w_BxD = _psd_solve(xtx_BxDxD, xty_BxD, 0.0, rcond)
  return jnp.einsum("bi,bi->b", w_BxD, xq_BxD)


@jax.jit
def _ridge(xtx_BxDxD, xty_BxD, xq_BxD, weight_cov_DxD, noise_std, rcond):
  """<R (R X^T X R + s^2 I)^+ R X^T y, x_q>, R = Sigma_w^{1/2}; (B,)."""
  root_DxD = cov_lib.sqrtm_psd(weight_cov_DxD)
  k_BxDxD = jnp.einsum("ij,bjk,kl->bil", root_DxD, xtx_BxDxD, root_DxD)
  k_BxDxD = (k_BxDxD + jnp.swapaxes(k_BxDxD, 1, 2)) / 2
  rhs_BxD = jnp.einsum("ij,bj->bi", root_DxD, xty_BxD)
  noise_var = noise_std**2
  v_BxD = _psd_solve(k_BxDxD, rhs_BxD, noise_var, rcond)
  w_BxD = jnp.einsum("ij,bj->bi", root_DxD, v_BxD)
  return jnp.einsum("bi,bi->b", w_BxD, xq_BxD)


def ols_predict(gram, *, rcond: float | None = None) -> jax.Array:
  """Least squares <(X^T X)^+ X^T y, x_q>, (B,): the minimum-norm solution when n < d.

  (X^T X)^+ X^T y is the minimum-norm least-squares solution since X^T y lies in the range of
  X^T X. The pseudo-inverse drops eigenvalues <= rcond * lambda_max(X^T X); the default
  rcond = 10 d eps(dtype) is ~30x the rounding level of the zero eigenvalues of a rank-deficient
  Gram matrix.
  """
  xtx_BxDxD, xty_BxD, xq_BxD, _ = _statistics(gram)
  rcond = _check_rcond(rcond, xtx_BxDxD.shape[-1], xtx_BxDxD.dtype)
  return _ols(xtx_BxDxD, xty_BxD, xq_BxD, rcond)


def ridge_predict(gram, weight_cov, noise_std, *, rcond: float | None = None) -> jax.Array:
  """Bayes posterior-mean prediction under w* ~ N(0, Sigma_w) and noise N(0, s^2), (B,).

  w = (X^T X + s^2 Sigma_w^-1)^-1 X^T y = R (R X^T X R + s^2 I)^+ R X^T y with R = Sigma_w^{1/2}
  (symmetric root); the second form needs no inverse of Sigma_w and at s = 0 gives the limit,
  the minimum Sigma_w^-1-norm least-squares solution (interpolant when n < d).

  Args:
    gram: a GramTasks (or Tasks) batch.
    weight_cov: Sigma_w, (d, d), symmetric positive definite (e.g. ``task.weight_cov``).
    noise_std: s >= 0 (e.g. ``task.noise_std``).
    rcond: relative eigenvalue cutoff of the pseudo-inverse (see :func:`ols_predict`).
  """
  xtx_BxDxD, xty_BxD, xq_BxD, _ = _statistics(gram)
  d = xtx_BxDxD.shape[-1]
  validation.covariance("weight_cov", weight_cov, d)
  validation.nonnegative("noise_std", noise_std)
  rcond = _check_rcond(rcond, d, xtx_BxDxD.dtype)
  weight_cov = jnp.asarray(weight_cov, xtx_BxDxD.dtype)
  noise_std = jnp.asarray(noise_std, xtx_BxDxD.dtype)
  return _ridge(xtx_BxDxD, xty_BxD, xq_BxD, weight_cov, noise_std, rcond)


# ----------------------------------------------------------------------------------- Newton


@functools.partial(jax.jit, static_argnames=("n", "steps"))
def _newton_path(xtx_BxDxD, xty_BxD, xq_BxD, n: int, steps: int) -> jax.Array:
  """Newton-Schulz predictions <M_k X^T y / n, x_q> for k = 1..steps, (B, steps)."""
  s_BxDxD = xtx_BxDxD / n
  b_BxD = xty_BxD / n
  lam_max_B = jnp.linalg.eigvalsh(s_BxDxD)[:, -1]
  lam_max_B = jnp.where(lam_max_B > 0, lam_max_B, 1.0)
  m0_BxDxD = s_BxDxD / (lam_max_B**2)[:, None, None]

  def step(m_BxDxD, _):   # M (2 I - S M) = 2 M - M S M
    m_BxDxD = 2.0 * m_BxDxD - jnp.einsum("bij,bjk,bkl->bil", m_BxDxD, s_BxDxD, m_BxDxD)
    return m_BxDxD, jnp.einsum("bij,bj,bi->b", m_BxDxD, b_BxD, xq_BxD)

  _, preds_KxB = jax.lax.scan(step, m0_BxDxD, None, length=steps)
  return preds_KxB.T


def newton_predict(gram, steps: int, *, all_steps: bool = False) -> jax.Array:
  """Newton-Schulz iteration for S^-1, S = X^T X / n (Fu et al. 2023).

  M_0 = S / lambda_max(S)^2, M_{k+1} = M_k (2 I - S M_k); prediction <M_k X^T y / n, x_q> after
  k = ``steps`` updates, (B,), or after each of the steps, (B, steps), with ``all_steps``.
  The nonzero eigenvalues of S M_0 = (S / lambda_max)^2 lie in (0, 1] and M_k stays in the range
  of S, so M_k -> S^+ and the prediction -> OLS (the minimum-norm solution when n < d).
  """
  steps = validation.positive_int("steps", steps)
  xtx_BxDxD, xty_BxD, xq_BxD, n = _statistics(gram)
  preds = _newton_path(xtx_BxDxD, xty_BxD, xq_BxD, n, steps)
  return preds if all_steps else preds[:, -1]


# ------------------------------------------------------------------------------- the report


def baseline_losses(gram, task: tasks_lib.TaskDistribution, steps: int,
                    s_SxDxD: jax.Array) -> dict[str, float]:
  """Monte Carlo in-context losses mean((y_hat - y_q)^2) of every baseline on one batch.

  Args:
    gram: the batch (GramTasks or Tasks) the model is evaluated on.
    task: its distribution (one fixed Sigma); gives Sigma, Sigma_w and the noise level.
    steps: k, the number of GD / preconditioned-GD / Newton-Schulz steps (e.g. the loop count).
    s_SxDxD: samples of S used by :func:`best_gd_eta` to tune the GD steps.

  Returns:
    {'gd', 'pgd_inv_cov', 'ols', 'ridge', 'newton'} -> loss, plus 'gd_eta' and 'pgd_inv_cov_eta'
    (the steps chosen by :func:`best_gd_eta` for A = I and A = Sigma^-1). Python floats.
  """
  steps = validation.positive_int("steps", steps)
  gram = tasks_lib.as_gram(gram, "gram")
  d = gram.gram.shape[-1] - 1
  if d != task.d:
    raise ValueError(f"gram dimension d={d} must equal task d={task.d}")
  tasks_lib.require_one_covariance(task, "baseline_losses")
  validation.shape("gram.y_query", gram.y_query, (gram.gram.shape[0],))
  inv_cov = jnp.linalg.inv(task.cov)
  inv_cov = (inv_cov + inv_cov.T) / 2
  gd_eta, _ = best_gd_eta(task, steps, s_SxDxD)
  pgd_eta, _ = best_gd_eta(task, steps, s_SxDxD, preconditioner=inv_cov)
  preds = {
      "gd": gd_predict(gram, steps, gd_eta),
      "pgd_inv_cov": pgd_predict(gram, inv_cov, steps, pgd_eta),
      "ols": ols_predict(gram),
      "ridge": ridge_predict(gram, task.weight_cov, task.noise_std),
      "newton": newton_predict(gram, steps),
  }
  report = {name: float(jnp.mean((p - gram.y_query) ** 2)) for name, p in preds.items()}
  report["gd_eta"] = gd_eta
  report["pgd_inv_cov_eta"] = pgd_eta
  return report


__all__ = [
    "BASELINES", "gd_predict", "pgd_predict", "ols_predict", "ridge_predict", "newton_predict",
    "best_gd_eta", "baseline_losses",
]
