r"""Chen, Li, Liang, Shi, Song 2024 (arXiv 2410.11268): their looped transformer as Lemma 4.1
states it, run on the linear vector generation tasks it is built for.

Tokens are ROWS here, as in the paper (the rest of the toolkit puts tokens in columns, SPEC §2);
what is the paper's and what is inferred is listed in ``docs/chen_2024_statements.md``:

  Z(0) = [[X, y], [q(0)^T, alpha]]  in R^{(n+1) x (d+1)}   (n example rows [x_i^T, y_i], a query)
  Attn(Z; Q, P) = (M o Z Q Z^T) Z P,  Q = I_{d+1},  P = [[I_d, 0], [0, 0]]   (no 1/n)
  M[i, j] = 1 iff i = n (the query row) and j < n: the query attends to the n examples and only
    the query row is updated (the example rows stay [X, y] in every loop)
  Z(t) = Z(t-1) - eta(t-1) Attn(Z(t-1); Q, P),  t = 1..T   (one step per loop, per task)
  TF(Z(0)) = q(T): the first d entries of the last row of Z(T) (its last entry stays alpha).

Lemma 4.1: Attn(Z(0)) = [[0, 0], [q(0)^T X^T X + alpha y^T X, 0]], so a loop is one GD step
q <- q - eta (X^T X q + alpha X^T y) on f(q) = ||X q + alpha y||^2 / 2 (its minimiser is
-alpha theta_hat, theta_hat = (X^T X)^{-1} X^T y = theta* for these noiseless tasks, n > d).

* :func:`sample_tasks`: X with N(0, 1) entries, theta* ~ N(0, I_d) or uniform on the sphere,
  y = X theta*, alpha ~ N(0, 1) (NumPy float64).
* :func:`chen_weights`, :func:`query_mask`, :func:`initial_prompt`: Q, P, M and Z(0) (NumPy).
* :func:`attention_rows`, :func:`forward_rows`: the attention and the looped forward (jitted).
* :func:`chen_step`: Theorem 4.5's step eta(t) = 1 / lambda_max(X^T X) for every t.
* :func:`generated_vectors`: TF's output q(t) after every loop t = 1..T.
* :func:`lemma_4_1_rhs`, :func:`lemma_4_1_error`: Lemma 4.1's right-hand side and the construction's
  distance to it.

JAX computes in :func:`looped_icl.linalg.float_dtype`: call under ``jax.enable_x64`` for float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import linalg
from looped_icl import validation

THETA_PRIORS = ("gaussian", "sphere")


class GenerationTasks(NamedTuple):
  """B linear vector generation tasks (NumPy float64): from (X, y) and a target alpha, generate q
  with <q, theta*> ~ alpha.

  x: (B, n, d) examples as rows; y: (B, n) = X theta* (no noise); theta: (B, d) theta*;
  alpha: (B,) the target.
  """
  x: np.ndarray
  y: np.ndarray
  theta: np.ndarray
  alpha: np.ndarray


def sample_tasks(seed: int, num: int, d: int, n: int, *,
                 theta_prior: str = "gaussian") -> GenerationTasks:
  """``num`` tasks: X_ij ~ N(0, 1), theta* ~ N(0, I_d) (``gaussian``) or uniform on the unit
  sphere (``sphere``), y = X theta*, alpha ~ N(0, 1). Needs n > d (X^T X invertible a.s.).

  The draws come in a fixed order (X, theta*, alpha), so the two priors share X and alpha, and
  theta*'s direction.
  """
  num, d, n = (validation.positive_int(k, v) for k, v in (("num", num), ("d", d), ("n", n)))
  if n <= d:
    raise ValueError(f"n must be > d={d} (the paper's realizable setting), got n={n}")
  validation.choice("theta_prior", theta_prior, THETA_PRIORS)
  rng = np.random.default_rng(seed)
  x_BxNxD = rng.standard_normal((num, n, d))
  theta_BxD = rng.standard_normal((num, d))
  if theta_prior == "sphere":
    theta_BxD = theta_BxD / np.linalg.norm(theta_BxD, axis=1, keepdims=True)
  alpha_B = rng.standard_normal(num)
  return GenerationTasks(x=x_BxNxD, y=np.einsum("bni,bi->bn", x_BxNxD, theta_BxD),
                         theta=theta_BxD, alpha=alpha_B)


def chen_weights(d: int) -> tuple[np.ndarray, np.ndarray]:
  """(Q, P) = (I_{d+1}, [[I_d, 0], [0, 0]]), each (d+1, d+1) float64."""
  d = validation.positive_int("d", d)
  p_DxD = np.zeros((d + 1, d + 1))
  p_DxD[:d, :d] = np.eye(d)
  return np.eye(d + 1), p_DxD


def query_mask(n: int) -> np.ndarray:
  """M, (n+1, n+1) float64: ones in the last row's first n entries, zeros elsewhere."""
  n = validation.positive_int("n", n)
  m_NxN = np.zeros((n + 1, n + 1))
  m_NxN[n, :n] = 1.0
  return m_NxN


def initial_prompt(tasks: GenerationTasks, q0_BxD=None) -> np.ndarray:
  """Z(0) = [[X, y], [q(0)^T, alpha]], (B, n+1, d+1) float64; q(0) = 0 unless given."""
  x_BxNxD = np.asarray(tasks.x, np.float64)
  batch, n, d = x_BxNxD.shape
  z_BxNxD = np.zeros((batch, n + 1, d + 1))
  z_BxNxD[:, :n, :d] = x_BxNxD
  z_BxNxD[:, :n, d] = tasks.y
  if q0_BxD is not None:
    validation.shape("q0", np.asarray(q0_BxD), (batch, d))
    z_BxNxD[:, n, :d] = q0_BxD
  z_BxNxD[:, n, d] = tasks.alpha
  return z_BxNxD


@jax.jit
def attention_rows(z_BxNxD: jax.Array, q_DxD: jax.Array, p_DxD: jax.Array,
                   m_NxN: jax.Array) -> jax.Array:
  """Attn(Z; Q, P) = (M o Z Q Z^T) Z P for tokens as rows, (B, N, D)."""
  scores_BxNxN = jnp.einsum("bid,de,bje->bij", z_BxNxD, q_DxD, z_BxNxD)
  return jnp.einsum("bij,bjd,de->bie", m_NxN[None] * scores_BxNxN, z_BxNxD, p_DxD)


@jax.jit
def _forward_rows(z0_BxNxD, q_DxD, p_DxD, m_NxN, eta_TxB):
  def loop(z_BxNxD, eta_B):
    z_BxNxD = z_BxNxD - eta_B[:, None, None] * attention_rows(z_BxNxD, q_DxD, p_DxD, m_NxN)
    return z_BxNxD, z_BxNxD[:, -1, :]

  z_BxNxD, query_TxBxD = jax.lax.scan(loop, z0_BxNxD, eta_TxB)
  return z_BxNxD, jnp.swapaxes(query_TxBxD, 0, 1)


def forward_rows(z0_BxNxD, eta_BxT) -> tuple[np.ndarray, np.ndarray]:
  """The looped transformer with the paper's (Q, P, M) and per-loop steps eta(0..T-1).

  Args:
    z0_BxNxD: Z(0), tokens as rows (:func:`initial_prompt`).
    eta_BxT: eta(t-1) of loop t = 1..T for each prompt (per task and per loop).

  Returns:
    (Z(T), (B, N, D); the query row after every loop t = 1..T, (B, T, D)), float64 arrays of the
    values computed in :func:`looped_icl.linalg.float_dtype`.
  """
  dtype = linalg.float_dtype()
  z0_BxNxD = np.asarray(z0_BxNxD)
  batch, num_tokens, dim = z0_BxNxD.shape
  eta_BxT = np.asarray(eta_BxT)
  validation.shape("eta", eta_BxT, (batch, None))
  weights = (*chen_weights(dim - 1), query_mask(num_tokens - 1))
  z_BxNxD, query_BxTxD = _forward_rows(jnp.asarray(z0_BxNxD, dtype),
                                       *(jnp.asarray(w, dtype) for w in weights),
                                       jnp.asarray(eta_BxT.T, dtype))
  return np.asarray(z_BxNxD, np.float64), np.asarray(query_BxTxD, np.float64)


def chen_step(x_BxNxD) -> np.ndarray:
  """eta = 1 / lambda_max(X^T X) per task (the smoothness constant of f), (B,) float64."""
  x_BxNxD = np.asarray(x_BxNxD, np.float64)
  return 1.0 / np.linalg.eigvalsh(np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD))[:, -1]


def generated_vectors(tasks: GenerationTasks, num_loops: int, *, eta_BxT=None,
                      q0_BxD=None) -> np.ndarray:
  """TF's output q(t) for t = 1..T, read off the transformer's query row, (B, T, d) float64.

  eta_BxT: per-task, per-loop steps; default Theorem 4.5's eta(t) = :func:`chen_step` for all t.
  """
  num_loops = validation.positive_int("num_loops", num_loops)
  if eta_BxT is None:
    eta_BxT = np.repeat(chen_step(tasks.x)[:, None], num_loops, axis=1)
  validation.shape("eta", np.asarray(eta_BxT), (tasks.x.shape[0], num_loops))
  _, query_BxTxD = forward_rows(initial_prompt(tasks, q0_BxD), eta_BxT)
  return query_BxTxD[..., :-1]


def lemma_4_1_rhs(tasks: GenerationTasks, q0_BxD) -> np.ndarray:
  """[[0_{n x d}, 0], [q(0)^T X^T X + alpha y^T X, 0]], (B, n+1, d+1) float64 (NumPy)."""
  x_BxNxD = np.asarray(tasks.x, np.float64)
  batch, n, d = x_BxNxD.shape
  xtx_BxDxD = np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD)
  row_BxD = (np.einsum("bi,bij->bj", np.asarray(q0_BxD, np.float64), xtx_BxDxD)
             + np.asarray(tasks.alpha, np.float64)[:, None]
             * np.einsum("bn,bni->bi", np.asarray(tasks.y, np.float64), x_BxNxD))
  out = np.zeros((batch, n + 1, d + 1))
  out[:, n, :d] = row_BxD
  return out


def lemma_4_1_error(tasks: GenerationTasks, q0_BxD) -> tuple[float, float]:
  """(max |Attn(Z(0)) - Lemma 4.1's matrix| over every entry and task, max |Lemma 4.1's entry|);
  Attn is computed in :func:`looped_icl.linalg.float_dtype`."""
  dtype = linalg.float_dtype()
  z0_BxNxD = initial_prompt(tasks, q0_BxD)
  _, num_tokens, dim = z0_BxNxD.shape
  weights = (*chen_weights(dim - 1), query_mask(num_tokens - 1))
  attn = np.asarray(attention_rows(jnp.asarray(z0_BxNxD, dtype),
                                   *(jnp.asarray(w, dtype) for w in weights)), np.float64)
  rhs = lemma_4_1_rhs(tasks, q0_BxD)
  return float(np.max(np.abs(attn - rhs))), float(np.max(np.abs(rhs)))


__all__ = ["THETA_PRIORS", "GenerationTasks", "sample_tasks", "chen_weights", "query_mask",
           "initial_prompt", "attention_rows", "forward_rows", "chen_step", "generated_vectors",
           "lemma_4_1_rhs", "lemma_4_1_error"]
