"""Exact chi-square and Wishart draws: the randomness behind :func:`looped_icl.tasks.sample_gram`
and :func:`looped_icl.tasks.sample_empirical_covariance`.

* :func:`chi_square` draws chi^2 variates of many degrees of freedom at once (Marsaglia-Tsang
  rejection on the whole array).
* :func:`bartlett_factor` draws A lower-triangular with A A^T ~ Wishart_d(n, I) (the Bartlett
  decomposition); :func:`gram_bl` turns such a draw into X^T X for a covariance Sigma, batch-last,
  without drawing X (the cost does not depend on n).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import linalg
from looped_icl import validation


def chi_square(key: jax.Array, dofs_K, batch_size: int) -> jax.Array:
  """Exact chi^2 draws, (B, K): column k has ``dofs_K[k]`` >= 0 degrees of freedom (0 gives 0).

  chi^2_k = 2 Gamma(k / 2), Gamma by Marsaglia and Tsang's squeeze-free rejection method
  (ACM TOMS 26(3), 2000) run on the whole array at once: every pass draws one normal and one
  uniform per entry (from a single uniform draw, the normal as ``jax.random.normal`` makes it:
  each random call is its own loop on CPU), keeps the entries not yet accepted, and stops when
  all are (a few passes; acceptance is >= 95% per entry for shape >= 1). Shapes below 1 use
  Gamma(a) = Gamma(a + 1) U^(1/a); concrete (NumPy) ``dofs_K`` all >= 2 skip that draw.
  ``jax.random.gamma`` loops per entry with a key split per try, 10x slower at B = 4000
  (BUILD_NOTES.md, Performance).
  """
  needs_boost = isinstance(dofs_K, jax.Array) or bool(np.any(np.asarray(dofs_K) < 2))
  dofs_K = jnp.asarray(dofs_K)
  dtype = dofs_K.dtype
  shape = (batch_size, dofs_K.shape[0])
  dofs_1xK = dofs_K[None, :]
  a_K = dofs_1xK / 2.0
  boost_K = a_K < 1.0
  d_K = jnp.where(boost_K, a_K + 1.0, a_K) - 1.0 / 3.0
  c_K = 1.0 / jnp.sqrt(9.0 * d_K)
  k_boost, k_passes = jax.random.split(key)
  lowest = np.nextafter(np.asarray(-1.0, dtype), np.asarray(0.0, dtype))

  def candidates(index):
    u_2xBxK = jax.random.uniform(jax.random.fold_in(k_passes, index), (2,) + shape, dtype)
    x = np.sqrt(2.0).astype(dtype) * jax.lax.erf_inv(jnp.maximum(2.0 * u_2xBxK[0] - 1.0, lowest))
    u = u_2xBxK[1]
    v = (1.0 + c_K * x) ** 3
    v_safe = jnp.where(v > 0, v, 1.0)
    ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d_K - d_K * v_safe + d_K * jnp.log(v_safe))
    return d_K * v_safe, ok

  def cond(state):
    return ~jnp.all(state[2])

  def body(state):
    index, value, done = state
    new_value, ok = candidates(index)
    return index + 1, jnp.where(done, value, new_value), done | ok

  # Pass 0 runs inside the loop too (nothing is accepted at the start, so it always runs): one
  # copy of the candidates' program instead of two, the same draws (chi_square alone compiles
  # 0.95 -> 0.64 s; bit-equal, BUILD_NOTES.md).
  nothing = (jnp.asarray(0, jnp.uint32), jnp.zeros(shape, dtype), jnp.zeros(shape, bool))
  _, gamma, _ = jax.lax.while_loop(cond, body, nothing)
  if needs_boost:
    u = jax.random.uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
    gamma = jnp.where(boost_K, gamma * u ** (1.0 / jnp.where(boost_K, a_K, 1.0)), gamma)
  return jnp.where(dofs_1xK > 0, 2.0 * gamma, 0.0)


def chi_square_columns(key: jax.Array, n: int, d: int, batch_size: int, dtype, *,
                       residual: bool = True) -> jax.Array:
  """Chi-squares with dofs n, n-1, ..., n-d+1 (diag(A)^2), then with ``residual`` a column with
  n-d (the residual sum of squares): (B, d + 1), or (B, d) without ``residual``."""
  dofs = n - np.arange(d + 1 if residual else d)
  return chi_square(key, dofs.astype(dtype), batch_size)


def factor_bl(chi2_BxD: jax.Array, below_OxB: jax.Array) -> jax.Array:
  """The batch-last Bartlett factor A, (d, d, B): sqrt(chi^2) on the diagonal, the d(d-1)/2
  normals ``below_OxB`` below it (row by row), zeros above (no normals drawn for them)."""
  d = chi2_BxD.shape[1]
  zero_B = jnp.zeros(chi2_BxD.shape[:1], chi2_BxD.dtype)
  entries = [[jnp.sqrt(chi2_BxD[:, i]) if i == j else zero_B for j in range(d)]
             for i in range(d)]
  for index, (i, j) in enumerate(zip(*np.tril_indices(d, -1))):
    entries[i][j] = below_OxB[index]
  return jnp.stack([jnp.stack(row) for row in entries])


def gram_bl(chol_DxD: jax.Array, chi2_BxD: jax.Array, below_OxB: jax.Array, one):
  """(C, X^T X), batch-last (d, d, B) each: X = Q C^T with C = L A (L the Cholesky factor of
  Sigma, A the Bartlett factor), so X^T X = C C^T."""
  d, batch = chi2_BxD.shape[1], chi2_BxD.shape[0]
  a_DxDxB = factor_bl(chi2_BxD, below_OxB)
  c_DxDxB = (chol_DxD @ a_DxDxB.reshape(d, d * batch)).reshape(d, d, batch)
  return c_DxDxB, linalg.mm_bl_unrolled(c_DxDxB, linalg.t_bl(c_DxDxB), one)


def bartlett_factor(key: jax.Array, n: int, d: int, batch_size: int, dtype) -> jax.Array:
  """Lower-triangular A with A A^T ~ Wishart_d(n, I) (Bartlett decomposition; needs n >= d).

  diag(A)^2 ~ chi^2_{n-i} (i = 0..d-1) and the entries below the diagonal are N(0, 1), all
  independent. Returns (B, d, d).
  """
  n = validation.positive_int("n", n)
  d = validation.positive_int("d", d)
  batch_size = validation.positive_int("batch_size", batch_size)
  if n < d:
    raise ValueError(f"n must be >= d={d} for the Bartlett decomposition, got {n}")
  k_chi, k_below = jax.random.split(key)
  # The residual column (chi^2_{n-d}) is drawn and dropped: the chi-square draws of the first d
  # columns depend on the array's shape, so a key keeps giving the same factor.
  chi2_BxD = chi_square_columns(k_chi, n, d, batch_size, dtype)[:, :d]
  below_OxB = jax.random.normal(k_below, (d * (d - 1) // 2, batch_size), dtype)
  return jnp.moveaxis(factor_bl(chi2_BxD, below_OxB), -1, 0)


__all__ = ["chi_square", "chi_square_columns", "factor_bl", "gram_bl", "bartlett_factor"]
