"""Chen, Li, Liang, Shi, Song 2024 (arXiv 2410.11268): the bound |alpha| exp(-T / (2 kappa)) read
two ways, and the check of a bound over (task, T) pairs (SPEC §5, docs/chen_2024_statements.md).

* Theorem 4.5 as the paper states it, on the paper's construction (tokens as rows, the query
  vector q is what is generated; :mod:`looped_icl.chen_construction`):
  :data:`THEOREM_4_5_CLAIMS` (as stated, sign only, and our corrected claim),
  :func:`theorem_4_5_errors`, :func:`theorem_4_5_checks`, :func:`theorem_4_5_counterexample`.
* The regression-side reading (GD on w in the label row; alpha := ||w_hat||, holds by algebra):
  :func:`chen_bound` (its docstring states exactly what is bounded), :func:`chen_fixed_iterates`,
  :func:`chen_fixed_errors` (the toolkit's :func:`looped_icl.constructions.chen_fixed`, eta =
  1 / lambda_max(S) per prompt, read off the exact Gram forward).
* :class:`ChenCheck`, :func:`chen_check`: violations of err <= bound up to float64 round-off.

The same GDs in closed form, for many tasks, are in :mod:`looped_icl.theory.chen_closed_form`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import chen_construction
from looped_icl import constructions
from looped_icl import linalg
from looped_icl import models
from looped_icl import tasks as tasks_lib
from looped_icl import validation

CHEN_NORMS = ("loss", "euclidean")
BOUND_REL_TOL = 1e-9                   # relative slack of a violation (float64 evaluation)
# Absolute round-off floor, in units of kappa times the bounded quantity's scale (||w_hat||, or
# |alpha| (1 + ||theta*||^2)): a float64 solve, or a GD fixed point reached in float64, is accurate
# to ~D eps kappa ||w|| (D = d + 1 = 11, eps = 2.2e-16, so ~2.4e-15 kappa ||w||); 1e-13 leaves a
# margin of 40 over that estimate.
ROUNDOFF_FLOOR_FACTOR = 1e-13
THEOREM_4_5_READINGS = ("as_stated", "sign_only", "corrected")
THEOREM_4_5_CLAIMS = {
    "as_stated": "|<q(T), theta*> - alpha| <= |alpha| exp(-T / (2 kappa))",
    "sign_only": "|<-q(T), theta*> - alpha| <= |alpha| exp(-T / (2 kappa))",
    "corrected": "(ours) |<-q(T), theta*> - alpha ||theta*||^2| <= |alpha| ||theta*||^2 "
                 "exp(-T / (2 kappa)); the paper's form if ||theta*|| = 1",
}


@dataclasses.dataclass(frozen=True)
class ChenCheck:
  """Violations of err <= bound (1 + BOUND_REL_TOL) + floor over all (task, T) pairs."""
  violations: int
  pairs: int
  floor_pairs: int          # pairs whose bound is below the round-off floor
  max_ratio: float          # max err / bound over pairs above the floor


def chen_check(err_BxK: np.ndarray, bound_BxK: np.ndarray,
               floor_B: np.ndarray | float) -> ChenCheck:
  """Counts the pairs with err > bound (1 + BOUND_REL_TOL) + floor (floor per task or shared)."""
  floor_Bx1 = np.broadcast_to(np.asarray(floor_B, np.float64).reshape(-1, 1), (err_BxK.shape[0], 1))
  above_BxK = bound_BxK > floor_Bx1
  ratio = np.where(above_BxK, err_BxK / np.maximum(bound_BxK, np.finfo(np.float64).tiny), 0.0)
  return ChenCheck(violations=int(np.sum(err_BxK > bound_BxK * (1 + BOUND_REL_TOL) + floor_Bx1)),
                   pairs=int(err_BxK.size), floor_pairs=int(np.sum(~above_BxK)),
                   max_ratio=float(np.max(ratio)))




def chen_bound(alpha, num_loops, kappa) -> jax.Array:
  """|alpha| exp(-T / (2 kappa)), the error bound stated for Chen et al. 2024 (SPEC §5).

  Theorem 4.5 as the paper states it is checked by :func:`theorem_4_5_checks`, which calls this
  function with its own alpha; what follows is the REGRESSION-SIDE READING, the toolkit's first
  reproduction, kept as a separate and weaker check (it holds by algebra).

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


# ------------------------------------------------------------------------------------------------
# Theorem 4.5 as stated, on the paper's construction (looped_icl.chen_construction).
# ------------------------------------------------------------------------------------------------


def generation_kappa(x_BxNxD) -> np.ndarray:
  """kappa = lambda_max / lambda_min of X^T X per task, (B,) float64 (the paper's kappa)."""
  x_BxNxD = np.asarray(x_BxNxD, np.float64)
  evals_BxD = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD))
  return evals_BxD[:, -1] / evals_BxD[:, 0]


def theorem_4_5_errors(tasks: chen_construction.GenerationTasks,
                       q_BxTxD: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per reading (:data:`THEOREM_4_5_CLAIMS`): (error (B, T), the scale its bound multiplies (B,)).

  q_BxTxD: TF's output q(t), t = 1..T (:func:`looped_icl.chen_construction.generated_vectors`).
  as_stated: |<q(T), theta*> - alpha| over |alpha|; sign_only: |<-q(T), theta*> - alpha| over
  |alpha|; corrected: |<-q(T), theta*> - alpha ||theta*||^2| over |alpha| ||theta*||^2.
  """
  theta_BxD, alpha_B = np.asarray(tasks.theta, np.float64), np.asarray(tasks.alpha, np.float64)
  inner_BxT = np.einsum("btd,bd->bt", np.asarray(q_BxTxD, np.float64), theta_BxD)
  norm2_B = np.sum(theta_BxD**2, axis=1)
  return {
      "as_stated": (np.abs(inner_BxT - alpha_B[:, None]), np.abs(alpha_B)),
      "sign_only": (np.abs(-inner_BxT - alpha_B[:, None]), np.abs(alpha_B)),
      "corrected": (np.abs(-inner_BxT - (alpha_B * norm2_B)[:, None]), np.abs(alpha_B) * norm2_B),
  }


def theorem_4_5_checks(tasks: chen_construction.GenerationTasks, q_BxTxD: np.ndarray,
                       kappa_B: np.ndarray | None = None) -> dict[str, ChenCheck]:
  """:func:`chen_check` of every reading over all (task, T) pairs, T = 1..q_BxTxD.shape[1].

  Bound: scale exp(-T / (2 kappa)) (:func:`chen_bound`); floor: ROUNDOFF_FLOOR_FACTOR kappa
  |alpha| (1 + ||theta*||^2), the float64 round-off of <q(T), theta*> and of its target.
  """
  kappa_B = generation_kappa(tasks.x) if kappa_B is None else np.asarray(kappa_B, np.float64)
  loops_1xT = np.arange(1, q_BxTxD.shape[1] + 1)[None, :]
  floor_B = ROUNDOFF_FLOOR_FACTOR * kappa_B * np.abs(tasks.alpha) * (
      1 + np.sum(np.asarray(tasks.theta, np.float64)**2, axis=1))
  out = {}
  for reading, (err_BxT, scale_B) in theorem_4_5_errors(tasks, q_BxTxD).items():
    bound_BxT = np.asarray(chen_bound(scale_B[:, None], loops_1xT, kappa_B[:, None]), np.float64)
    out[reading] = chen_check(err_BxT, bound_BxT, floor_B)
  return out


def theorem_4_5_counterexample(reading: str = "as_stated") -> dict:
  """The smallest counterexample to ``as_stated`` or ``sign_only``, run through the construction.

  d = 1 and n = 2 are the smallest sizes the paper allows (n > d), T = 1 the first loop (T = 0
  holds with equality, q(0) = 0), entries of size 1: X = [1, 1]^T (kappa = 1, eta = 1/2), alpha =
  1, theta* = 1 for ``as_stated`` (q(1) = -1, error 2) and theta* = 2, the smallest integer off
  the unit sphere, for ``sign_only`` (-q(1) = 2, error |4 - 1| = 3); the bound is e^{-1/2}.
  """
  validation.choice("reading", reading, THEOREM_4_5_READINGS[:2])
  theta = 1.0 if reading == "as_stated" else 2.0
  x_1x2x1 = np.ones((1, 2, 1))
  tasks = chen_construction.GenerationTasks(x=x_1x2x1, y=theta * np.ones((1, 2)),
                                            theta=np.array([[theta]]), alpha=np.array([1.0]))
  q_1x1x1 = chen_construction.generated_vectors(tasks, 1)
  err_1x1, scale_1 = theorem_4_5_errors(tasks, q_1x1x1)[reading]
  kappa = float(generation_kappa(x_1x2x1)[0])
  return {"reading": reading, "claim": THEOREM_4_5_CLAIMS[reading], "d": 1, "n": 2,
          "x": [1.0, 1.0], "theta": theta, "alpha": 1.0, "T": 1, "kappa": kappa,
          "eta": float(chen_construction.chen_step(x_1x2x1)[0]), "q_T": float(q_1x1x1[0, 0, 0]),
          "lhs": float(err_1x1[0, 0]),
          "bound": float(chen_bound(float(scale_1[0]), 1, kappa))}


__all__ = ["CHEN_NORMS", "BOUND_REL_TOL", "ROUNDOFF_FLOOR_FACTOR", "ChenCheck", "chen_check",
           "chen_bound", "chen_step_size", "chen_fixed_iterates", "chen_fixed_errors",
           "ChenErrors", "THEOREM_4_5_READINGS", "THEOREM_4_5_CLAIMS", "generation_kappa",
           "theorem_4_5_errors", "theorem_4_5_checks", "theorem_4_5_counterexample"]
