"""Paper-independent metrics: read a (trained) model as preconditioned GD and summarise its
preconditioners (SPEC §5).

Conventions (SPEC §3): the preconditioner model computes w_0 = 0,
w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n, and predicts y_hat = <x_q, w_L>.

* :func:`effective_preconditioners`, :func:`sparsity_residual`: each layer's A of any linear model.
* :func:`whiten_preconditioner`, :func:`unwhiten_preconditioner`: A -> Sigma^{1/2} A Sigma^{1/2},
  which maps the w* ~ N(0, Sigma^-1) problem on Sigma to the isotropic one.
* :func:`alignment_distances`: both Dists of every layer in one program (logged each row).
* :func:`dist_to_identity` (Ahn et al.'s Dist(M, I)), :func:`mean_diagonal` (tr M / d),
  :func:`whitened_scales` (the c_l of A_l ~ c_l Sigma^-1), :func:`asymmetry`,
  :func:`eigenvalues_as_pairs`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import covariance as cov_lib
from looped_icl import linalg
from looped_icl import models
from looped_icl import validation


def _float_square(m) -> jax.Array:
  """``m`` as a floating (..., d, d) array; raises if it is not square."""
  linalg.check_square("m", m)
  m = jnp.asarray(m)
  return m if jnp.issubdtype(m.dtype, jnp.floating) else m.astype(linalg.float_dtype())


# ------------------------------------------------------------------------------------------------
# Whitening.
# ------------------------------------------------------------------------------------------------


def whiten_preconditioner(a, cov) -> jax.Array:
  """A~ = Sigma^{1/2} A Sigma^{1/2} for A of shape (..., d, d).

  Under x = Sigma^{1/2} x~ and w* ~ N(0, Sigma^-1) the model with A on Sigma is the model with A~
  on the whitened problem (see :func:`looped_icl.theory.ahn_theorem1`); Ahn et al. §4.3 report
  A~ ~ c I.
  """
  validation.covariance("cov", cov)
  linalg.check_square("a", a)
  validation.shape("a", a, (None,) * (np.ndim(a) - 2) + np.shape(cov))
  dtype = linalg.float_dtype()
  return _sandwich(jnp.asarray(a, dtype), cov_lib.sqrtm_psd(jnp.asarray(cov, dtype)))


def unwhiten_preconditioner(a_white, cov) -> jax.Array:
  """A = Sigma^{-1/2} A~ Sigma^{-1/2}, the inverse of :func:`whiten_preconditioner`."""
  validation.covariance("cov", cov)
  linalg.check_square("a_white", a_white)
  validation.shape("a_white", a_white, (None,) * (np.ndim(a_white) - 2) + np.shape(cov))
  dtype = linalg.float_dtype()
  return _sandwich(jnp.asarray(a_white, dtype), cov_lib.inv_sqrtm_pd(jnp.asarray(cov, dtype)))


@jax.jit
def _sandwich(a_xDxD: jax.Array, r_DxD: jax.Array) -> jax.Array:
  """R A R for A of shape (..., d, d)."""
  return jnp.einsum("ij,...jk,kl->...il", r_DxD, a_xDxD, r_DxD)


@functools.partial(jax.jit, static_argnames=("cfg",))
def alignment_distances(params, cfg: models.ModelConfig, root_DxD: jax.Array):
  """(Dist(A_l, I), Dist(R A_l R, I)) of each layer's effective preconditioner, each (L,).

  With R = Sigma^{1/2} (``covariance.sqrtm_psd``, computed once by the caller) the second is the
  whitened Dist of :func:`whiten_preconditioner`. One program per model shape: the trainer logs it
  every row.
  """
  a_eff = effective_preconditioners(params, cfg)
  whitened = _sandwich(a_eff, root_DxD.astype(a_eff.dtype))
  return _dist_to_identity(a_eff), _dist_to_identity(whitened)


# ------------------------------------------------------------------------------------------------
# Summaries of one matrix (or a stack of them).
# ------------------------------------------------------------------------------------------------


def dist_to_identity(m) -> jax.Array:
  """Ahn et al.'s Dist(M, I) = ||M - (tr M / d) I||_F / ||M||_F, batched over leading axes.

  0 iff M is a multiple of the identity; scale invariant; in [0, 1]. Defined as 0 for M = 0.

  Args:
    m: (..., d, d).

  Returns:
    (...,) distances.
  """
  return _dist_to_identity(_float_square(m))


@jax.jit
def _dist_to_identity(m: jax.Array) -> jax.Array:
  d = m.shape[-1]
  mean_diag = jnp.trace(m, axis1=-2, axis2=-1) / d
  resid = m - mean_diag[..., None, None] * jnp.broadcast_to(jnp.eye(d, dtype=m.dtype), m.shape)
  num = jnp.sqrt(jnp.sum(resid**2, axis=(-2, -1)))
  den = jnp.sqrt(jnp.sum(m**2, axis=(-2, -1)))
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def mean_diagonal(m) -> np.ndarray:
  """tr(M) / d of each matrix, (...,) in NumPy float64: the c of the closest c I (Frobenius)."""
  linalg.check_square("m", m)
  m = np.asarray(m, np.float64)
  return np.trace(m, axis1=-2, axis2=-1) / m.shape[-1]


def whitened_scales(a_LxDxD, cov_DxD) -> np.ndarray:
  """c_l = tr(Sigma^{1/2} A_l Sigma^{1/2}) / d of each layer, (L,) float64: the c_l of
  A_l ~ c_l Sigma^-1 (the whitened A~_l ~ c_l I of Ahn et al. §4.3)."""
  return mean_diagonal(whiten_preconditioner(jnp.asarray(a_LxDxD), cov_DxD))


def asymmetry(a_DxD) -> float:
  """||A - A^T||_F / ||A||_F (NumPy float64): 0 for symmetric A, 2 for antisymmetric A."""
  a_DxD = np.asarray(a_DxD, np.float64)
  if a_DxD.ndim != 2:
    raise ValueError(f"a_DxD must have shape (d, d), got {a_DxD.shape}")
  linalg.check_square("a_DxD", a_DxD)
  return float(np.linalg.norm(a_DxD - a_DxD.T) / np.linalg.norm(a_DxD))


def eigenvalues_as_pairs(m) -> jax.Array:
  """Eigenvalues of (possibly non-symmetric) M as [re, im] pairs, (..., d, 2), for JSON.

  Sorted by descending real part, then descending imaginary part, so conjugate pairs are
  adjacent and the order is deterministic. Uses jnp.linalg.eig (CPU backend only in JAX).
  """
  return _eigenvalues_as_pairs(_float_square(m))


@jax.jit
def _eigenvalues_as_pairs(m: jax.Array) -> jax.Array:
  evals = jnp.linalg.eigvals(m)
  pairs = jnp.stack([jnp.real(evals), jnp.imag(evals)], axis=-1).astype(m.dtype)
  order = jnp.lexsort((-pairs[..., 1], -pairs[..., 0]), axis=-1)
  return jnp.take_along_axis(pairs, order[..., None], axis=-2)


# ------------------------------------------------------------------------------------------------
# Reading trained models as preconditioned GD.
# ------------------------------------------------------------------------------------------------


def effective_preconditioners(params, cfg: models.ModelConfig) -> jax.Array:
  """Each layer's preconditioner A_eff in w <- w + A_eff^T X^T (y - X w) / n, (L, d, d).

  L = cfg.num_layers for layered models and 1 for looped ones (shared weights), except a looped
  ``fixed`` model with ``per_loop_eta``, which returns its trained eta_t I, (num_layers, d, d).
  The step is folded in (eta = cfg.eta for looped, 1 for layered; see models.attention_weights):

  * preconditioner: eta A.   * fixed: eta I.
  * gdpp: eta A, the first-layer preconditioner; GD++ also moves the covariates with B, so its
    later-layer preconditioners depend on S (see ``losses.effective_preconditioners``).
  * full: eta P[d, d] Q[:d, :d]. Why: in the sparse form P = p e_D e_D^T, Q = [[Q11, 0], [0, 0]]
    the covariate rows of Z never change (P's top rows are 0), and the label row (residuals
    r_i = y_i - <x_i, w>, the query entry -<x_q, w>) moves by
      -eta (P G Q Z)[d, j] / n = -eta p r^T X Q11 x_j / n = -<x_j, (eta p Q11)^T X^T r / n>,
    i.e. w <- w + A^T X^T r / n with A = eta p Q11: exactly the preconditioner model. The
    rescaling (c P, Q / c) leaves P G Q, hence the model and A, unchanged. For full weights off
    the sparse form this is only the label-to-label part (check :func:`sparsity_residual`).

  Sign convention: ours is Z <- Z - Attn (SPEC §3). Ahn et al.'s code writes Z <- Z + Attn, so
  their raw Q is -Q here (and their tokens are rows, transposing the stored matrices); their
  "A" in Q = -[[A, 0], [0, 0]] is the same A as ours.
  """
  if cfg.activation != "linear":
    raise ValueError(f"cfg.activation must be 'linear' for an effective preconditioner, got "
                     f"{cfg.activation!r}")
  return _effective_preconditioners(params, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _effective_preconditioners(params, cfg: models.ModelConfig) -> jax.Array:
  p, q, eta = models.attention_weights(params, cfg)
  d = cfg.d
  if cfg.parametrization == "full":
    a = p[..., d, d][..., None, None] * q[..., :d, :d]
  else:
    a = q[..., :d, :d]
  eta = jnp.asarray(eta)
  lead = jnp.broadcast_shapes(eta.shape, a.shape[:-2])
  a = jnp.broadcast_to(eta, lead)[..., None, None] * jnp.broadcast_to(a, lead + (d, d))
  return jnp.reshape(a, (-1, d, d))


def sparsity_residual(params, cfg: models.ModelConfig) -> dict[str, jax.Array]:
  """Per layer, how far full (P, Q) are from the sparse (preconditioner) form, in [0, 1].

  Sparse form: P = p e_D e_D^T and Q = [[Q11, 0], [0, 0]]. Returns
  {'p': ||P - P[d,d] e_D e_D^T||_F / ||P||_F, 'q': ||Q - [[Q11, 0], [0, 0]]||_F / ||Q||_F},
  each (L,) (L = 1 for looped), 0 where the norm in the denominator is 0. The structured
  parametrizations (preconditioner, gdpp, fixed) return zeros: they are in their own structured
  form by construction (GD++'s B block is part of that structure, not a residual).
  """
  if cfg.parametrization != "full":
    num = cfg.num_layers if cfg.kind == "layered" else 1
    zeros = jnp.zeros((num,), linalg.float_dtype())
    return {"p": zeros, "q": zeros}
  return _sparsity_residual(params, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _sparsity_residual(params, cfg: models.ModelConfig) -> dict[str, jax.Array]:
  d = cfg.d
  p = jnp.reshape(params["p"], (-1, cfg.dim, cfg.dim))
  q = jnp.reshape(params["q"], (-1, cfg.dim, cfg.dim))
  p_off = p.at[:, d, d].set(0.0)
  q_off = q.at[:, :d, :d].set(0.0)

  def ratio(off, full):
    num = jnp.sqrt(jnp.sum(off**2, axis=(-2, -1)))
    den = jnp.sqrt(jnp.sum(full**2, axis=(-2, -1)))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

  return {"p": ratio(p_off, p), "q": ratio(q_off, q)}


__all__ = [
    "whiten_preconditioner", "unwhiten_preconditioner", "dist_to_identity", "mean_diagonal",
    "whitened_scales", "asymmetry", "eigenvalues_as_pairs", "effective_preconditioners",
    "sparsity_residual", "alignment_distances",
]
