"""Covariance families for the covariates x ~ N(0, Sigma) (SPEC section 1).

Every family returns a symmetric positive-definite ``(d, d)`` array in the default float dtype
(float32, or float64 under ``jax_enable_x64``). ``condition`` and ``power_law`` spectra are
normalised so the largest eigenvalue is 1, ``ar1`` has unit diagonal, and ``diagonal``/``rotated``
take the spectrum as given.

>>> sigma = make_covariance("rotated", 5, spectrum=(1, 1, 0.25, 0.0625, 1), cov_seed=0)
>>> sigma.shape
(5, 5)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import linalg
from looped_icl import validation

FAMILIES = ("identity", "diagonal", "rotated", "condition", "ar1", "power_law")


def random_orthogonal(key: jax.Array, d: int) -> jax.Array:
  """Ahn et al.'s rotation: U from the SVD of a d x d Uniform(-1, 1) matrix.

  The uniform matrix is always drawn in float32 (then cast), so a seed gives the same rotation
  with and without ``jax_enable_x64`` (up to the float32 rounding of the draw).
  """
  d = validation.positive_int("d", d)
  m = jax.random.uniform(key, (d, d), minval=-1.0, maxval=1.0, dtype=jnp.float32)
  u, _, _ = jnp.linalg.svd(m.astype(linalg.float_dtype()))
  return u


def _ar1_matrix(d: int, rho: float) -> np.ndarray:
  """rho^|i-j| in float64, after checking |rho| < 1."""
  rho = validation.in_range("rho", rho, -1.0, 1.0, low_open=True, high_open=True)
  idx = np.arange(d)
  return rho ** np.abs(idx[:, None] - idx[None, :])


def spectrum_for(family: str, d: int, *, spectrum: Sequence[float] | None = None,
                 kappa: float = 1.0, rho: float = 0.0, alpha: float = 1.0) -> np.ndarray:
  """The eigenvalues (not sorted for ``diagonal``/``rotated``) of a family's Sigma.

  ``ar1`` has no closed-form spectrum: its eigenvalues are computed (descending, float64).
  """
  d = validation.positive_int("d", d)
  if family == "identity":
    return np.ones(d)
  if family in ("diagonal", "rotated"):
    if spectrum is None:
      raise ValueError(f"spectrum must be given (length {d}) for covariance={family!r}")
    try:
      spec = np.asarray(spectrum, dtype=np.float64)
    except (TypeError, ValueError):
      raise ValueError(f"spectrum must be a sequence of {d} numbers, got {spectrum!r}") from None
    if spec.shape != (d,):
      raise ValueError(f"spectrum must have shape ({d},) (length d={d}), got shape {spec.shape}")
    if not np.all(np.isfinite(spec)) or np.any(spec <= 0):
      raise ValueError(f"spectrum must be finite and > 0, got {tuple(spec.tolist())}")
    return spec
  if family == "condition":
    kappa = validation.in_range("kappa", kappa, 1.0, np.inf, high_open=True)
    return np.geomspace(1.0, 1.0 / kappa, d) if d > 1 else np.ones(1)
  if family == "power_law":
    alpha = validation.in_range("alpha", alpha, 0.0, np.inf, high_open=True)
    return np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
  if family == "ar1":
    return np.linalg.eigvalsh(_ar1_matrix(d, rho))[::-1]
  raise ValueError(f"covariance must be one of {sorted(FAMILIES)}, got {family!r}")


def make_covariance(family: str, d: int, *, spectrum: Sequence[float] | None = None,
                    kappa: float = 1.0, rho: float = 0.0, alpha: float = 1.0,
                    cov_seed: int = 0) -> jax.Array:
  """Builds Sigma for one of ``FAMILIES``.

  Args:
    family: ``identity``; ``diagonal`` (diag(spectrum)); ``rotated`` (U diag(spectrum) U^T, U
      from ``cov_seed`` as in Ahn et al.); ``condition`` (diagonal, geometric spectrum from 1 to
      1/kappa); ``ar1`` (rho^|i-j|); ``power_law`` (diagonal, lambda_i = i^-alpha).
    d: dimension, >= 1.
    spectrum: eigenvalues for ``diagonal``/``rotated``.
    kappa: condition number for ``condition``, >= 1.
    rho: AR(1) correlation for ``ar1``, |rho| < 1.
    alpha: decay exponent for ``power_law``, >= 0.
    cov_seed: seed of the rotation for ``rotated``.

  Returns:
    Sigma, a ``(d, d)`` symmetric positive-definite array.
  """
  d = validation.positive_int("d", d)
  validation.choice("covariance", family, FAMILIES)
  dtype = linalg.float_dtype()
  if family == "ar1":
    return jnp.asarray(_ar1_matrix(d, rho), dtype=dtype)
  spec = spectrum_for(family, d, spectrum=spectrum, kappa=kappa, rho=rho, alpha=alpha)
  if family == "rotated":
    u = random_orthogonal(jax.random.key(int(cov_seed)), d)
    sigma = (u * jnp.asarray(spec, dtype)[None, :]) @ u.T
    return (sigma + sigma.T) / 2
  return jnp.diag(jnp.asarray(spec, dtype=dtype))


def random_covariance(key: jax.Array, d: int, kappa: float) -> jax.Array:
  """A random Sigma: Haar-like rotation, log-uniform spectrum in [1/kappa, 1] (OOD training).

  The extreme eigenvalues are pinned to 1 and 1/kappa so every draw has condition number kappa.
  """
  d = validation.positive_int("d", d)
  kappa = validation.in_range("kappa", kappa, 1.0, np.inf, high_open=True)
  k_rot, k_spec = jax.random.split(key)
  dtype = linalg.float_dtype()
  g = jax.random.normal(k_rot, (d, d), dtype=dtype)
  q, r = jnp.linalg.qr(g)
  q = q * jnp.sign(jnp.diagonal(r))[None, :]
  log_spec = jax.random.uniform(k_spec, (d,), dtype=dtype, minval=-np.log(kappa), maxval=0.0)
  if d > 1:
    log_spec = log_spec.at[0].set(0.0).at[1].set(-np.log(kappa))
  sigma = (q * jnp.exp(log_spec)[None, :]) @ q.T
  return (sigma + sigma.T) / 2


def sqrtm_psd(sigma: jax.Array) -> jax.Array:
  """Symmetric square root of a PSD matrix via eigh."""
  evals, evecs = jnp.linalg.eigh(sigma)
  return (evecs * jnp.sqrt(jnp.clip(evals, 0.0))[..., None, :]) @ jnp.swapaxes(evecs, -1, -2)


def inv_sqrtm_pd(sigma: jax.Array) -> jax.Array:
  """Symmetric inverse square root of a PD matrix via eigh."""
  evals, evecs = jnp.linalg.eigh(sigma)
  return (evecs * (1.0 / jnp.sqrt(evals))[..., None, :]) @ jnp.swapaxes(evecs, -1, -2)


def condition_number(sigma: jax.Array) -> jax.Array:
  evals = jnp.linalg.eigvalsh(sigma)
  return evals[..., -1] / evals[..., 0]
