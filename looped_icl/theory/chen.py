"""Chen, Li, Liang, Shi, Song 2024 (arXiv 2410.11268): the fixed looped GD construction and its
convergence bound |alpha| exp(-T / (2 kappa)) (SPEC §5).

* :func:`chen_bound`: the bound (see its docstring for exactly what is bounded here).
* :func:`chen_fixed_iterates`, :func:`chen_fixed_errors`: the iterates w_t of the fixed looped
  transformer (:func:`looped_icl.constructions.chen_fixed`, eta = 1 / lambda_max(S) per prompt)
  and their errors, read off the model's exact Gram forward (JAX).

The same GD in closed form, for many tasks, is :mod:`looped_icl.theory.chen_closed_form`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import constructions
from looped_icl import linalg
from looped_icl import models
from looped_icl import tasks as tasks_lib
from looped_icl import validation

CHEN_NORMS = ("loss", "euclidean")


def chen_bound(alpha, num_loops, kappa) -> jax.Array:
  """|alpha| exp(-T / (2 kappa)), the error bound stated for Chen et al. 2024 (SPEC §5).

  Source: Chen, Li, Liang, Shi, Song, "Bypassing the exponential dependency: looped transformers
  efficiently learn in-context by multi-step gradient descent", arXiv 2410.11268. Only the
  abstract was reachable when this was written (a linear looped transformer implements T steps
  of GD on "linear vector generation" tasks and reaches small error with n = O(d) examples when
  the data has constant condition number); the statement of their error theorem, and the exact
  meaning of their alpha, could not be checked. The toolkit therefore pins the bound to the
  smallest claim that is provably true, and tests it:

  Claim. Let n >= d, X of full column rank, S = X^T X / n, L(w) = ||y - X w||^2 / (2n),
  w_hat = S^{-1} X^T y / n its minimiser (w_hat = w* without label noise), kappa = lambda_max(S) /
  lambda_min(S) (= cond(X^T X)), and run GD from w_0 = 0 with eta = 1 / lambda_max(S):
  w_{t+1} = w_t + eta X^T (y - X w_t) / n (exactly :func:`constructions.chen_fixed`). Then for
  every T >= 0,
    ||w_T - w_hat||_S = sqrt(2 (L(w_T) - L(w_hat)))   <=  alpha exp(-T / (2 kappa)),
    alpha = ||w_hat||_S = sqrt(2 (L(0) - L(w_hat))),
  and likewise in the Euclidean norm with alpha = ||w_hat||_2.
  Proof: w_T - w_hat = -(I - eta S)^T w_hat; I - eta S is symmetric, commutes with S, and has
  eigenvalues in [0, 1 - 1/kappa]; so both norms contract by (1 - 1/kappa)^T <= exp(-T/kappa)
  <= exp(-T/(2 kappa)). The exponent 1/(2 kappa) is what the classical excess-loss argument
  gives (L(w_T) - L* <= (1 - 1/kappa)^T (L(0) - L*), then a square root); the exact worst case
  (w_hat along the bottom eigenvector of S) decays as (1 - 1/kappa)^T, so the bound is within a
  factor ~e^{1/2} of the truth for T <= kappa and loose by a factor 2 in the exponent as T grows.

  Args:
    alpha: |alpha| scales the bound (any real numbers; broadcast).
    num_loops: T, integer(s) >= 0.
    kappa: condition number(s) >= 1 (inf allowed: the bound is then |alpha|).

  Returns:
    The bound, broadcast over the inputs.
  """
  if not isinstance(alpha, jax.core.Tracer):
    arr = np.asarray(alpha)
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
      raise ValueError(f"alpha must be finite real number(s), got {alpha!r}")
  if not isinstance(num_loops, jax.core.Tracer):
    arr = np.asarray(num_loops)
    if (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)) or np.any(arr < 0):
      raise ValueError(f"num_loops must be integer(s) >= 0, got {num_loops!r}")
  if not isinstance(kappa, jax.core.Tracer):
    arr = np.asarray(kappa)
    if not np.issubdtype(arr.dtype, np.number) or np.any(np.isnan(arr)) or np.any(arr < 1):
      raise ValueError(f"kappa must be number(s) >= 1, got {kappa!r}")
  dtype = linalg.float_dtype()
  alpha, kappa = jnp.asarray(alpha, dtype), jnp.asarray(kappa, dtype)
  num_loops = jnp.asarray(num_loops, dtype)
  return jnp.abs(alpha) * jnp.exp(-num_loops / (2.0 * kappa))


class ChenErrors(NamedTuple):
  """Errors of the fixed looped construction on a batch of B prompts (see :func:`chen_bound`).

  errors: (B, T), the error after t = 1..T loops in the chosen norm.
  alpha: (B,), the error at t = 0 (||w_hat||).
  kappa: (B,), lambda_max / lambda_min of X^T X.
  eta: (B,), the step 1 / lambda_max(X^T X / n) used for each prompt.
  """
  errors: jax.Array
  alpha: jax.Array
  kappa: jax.Array
  eta: jax.Array


def chen_step_size(s_xDxD: jax.Array) -> jax.Array:
  """Chen et al.'s step eta = 1 / lambda_max(S) for S = X^T X / n, (...,)."""
  return 1.0 / jnp.linalg.eigvalsh(s_xDxD)[..., -1]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _chen_iterates(gram: tasks_lib.GramTasks, cfg: models.ModelConfig):
  """(w_BxTxD, eta_B) for the fixed construction ``cfg`` (its eta replaced per prompt)."""
  dim = gram.gram.shape[-1]
  d, n = dim - 1, gram.n
  eta_B = chen_step_size(gram.gram[:, :d, :d] / n)
  dtype = gram.gram.dtype
  queries_DxDim = jnp.eye(d, dim, dtype=dtype)                       # rows [e_k; 0]

  def one(gram_DimxDim, eta):
    basis = tasks_lib.GramTasks(
        gram=jnp.broadcast_to(gram_DimxDim, (d, dim, dim)), query=queries_DxDim,
        y_query=jnp.zeros((d,), dtype), w=jnp.zeros((d, d), dtype), n=n)
    preds_DxT = models.predict({"eta": eta}, cfg, basis, all_layers=True)
    return preds_DxT.T                                                # (T, d): w_t

  return jax.vmap(one)(gram.gram, eta_B), eta_B


def chen_fixed_iterates(batch, num_loops: int) -> tuple[jax.Array, jax.Array]:
  """GD iterates w_1..w_T read off the fixed looped transformer, per prompt.

  Each prompt b runs :func:`constructions.chen_fixed` with its own step eta_b = 1 /
  lambda_max(S_b) through :func:`models.predict` (exact Gram forward). The query does not
  attend (M masks it), so querying with x_q = e_k reads the k-th coordinate of w_t:
  y_hat_t = <e_k, w_t> (the transformer "generates the vector" w_t).

  Args:
    batch: :class:`~looped_icl.tasks.Tasks` or :class:`~looped_icl.tasks.GramTasks`, B prompts.
    num_loops: T >= 1.

  Returns:
    (w_BxTxD, eta_B).
  """
  gram = tasks_lib.as_gram(batch)
  num_loops = validation.positive_int("num_loops", num_loops)
  cfg, _ = constructions.chen_fixed(gram.gram.shape[-1] - 1, num_loops, 1.0)
  return _chen_iterates(gram, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _chen_errors(gram: tasks_lib.GramTasks, cfg: models.ModelConfig):
  """ChenErrors in the loss norm and the Euclidean norm (one compilation for both)."""
  n = gram.n
  w_BxTxD, eta_B = _chen_iterates(gram, cfg)
  xtx_BxDxD, xty_BxD, _, _ = tasks_lib.split_gram(gram)
  s_BxDxD = xtx_BxDxD / n
  w_hat_BxD = jnp.linalg.solve(s_BxDxD, (xty_BxD / n)[..., None])[..., 0]
  e_BxTxD = w_BxTxD - w_hat_BxD[:, None, :]
  evals_BxD = jnp.linalg.eigvalsh(s_BxDxD)
  kappa = evals_BxD[:, -1] / evals_BxD[:, 0]
  loss = ChenErrors(
      errors=jnp.sqrt(jnp.einsum("bti,bij,btj->bt", e_BxTxD, s_BxDxD, e_BxTxD)),
      alpha=jnp.sqrt(jnp.einsum("bi,bij,bj->b", w_hat_BxD, s_BxDxD, w_hat_BxD)),
      kappa=kappa, eta=eta_B)
  euclidean = ChenErrors(errors=jnp.linalg.norm(e_BxTxD, axis=-1),
                         alpha=jnp.linalg.norm(w_hat_BxD, axis=-1), kappa=kappa, eta=eta_B)
  return {"loss": loss, "euclidean": euclidean}


def chen_fixed_errors(batch, num_loops: int, *, norm: str = "loss") -> ChenErrors:
  """Errors ||w_t - w_hat|| of the fixed looped construction with eta = 1/lambda_max(S).

  w_t comes from the transformer (:func:`chen_fixed_iterates`); w_hat = S^{-1} X^T y / n is the
  least-squares solution (= w* for noiseless labels), so needs n >= d and X of full rank.
  ``norm='loss'``: ||e||_S = sqrt(e^T S e) = sqrt(2 (L(w_t) - L(w_hat))), L(w) =
  ||y - X w||^2 / (2n); ``norm='euclidean'``: ||e||_2. alpha is the same norm of w_hat (t = 0).
  :func:`chen_bound` (alpha, t, kappa) bounds every entry of ``errors``.

  Args:
    batch: :class:`~looped_icl.tasks.Tasks` or :class:`~looped_icl.tasks.GramTasks`, B prompts.
    num_loops: T >= 1.
    norm: ``loss`` or ``euclidean``.

  Returns:
    :class:`ChenErrors` with errors (B, T) for t = 1..T, alpha, kappa and eta (B,).
  """
  validation.choice("norm", norm, CHEN_NORMS)
  gram = tasks_lib.as_gram(batch)
  num_loops = validation.positive_int("num_loops", num_loops)
  d, n = gram.gram.shape[-1] - 1, gram.n
  if n < d:
    raise ValueError(f"batch n must be >= d={d} (X^T X invertible), got n={n}")
  cfg, _ = constructions.chen_fixed(d, num_loops, 1.0)
  return _chen_errors(gram, cfg)[norm]


__all__ = ["CHEN_NORMS", "chen_bound", "chen_step_size", "chen_fixed_iterates",
           "chen_fixed_errors", "ChenErrors"]
