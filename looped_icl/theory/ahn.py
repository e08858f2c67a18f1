"""Closed forms of Ahn et al. 2023 (arXiv 2306.00297): the optimal single-layer preconditioner
(Thm 1) and the isotropic GD++ loss (§5) (SPEC §5).

Conventions (SPEC §3): the preconditioner model computes w_0 = 0,
w_{k+1} = w_k + eta A^T X^T (y - X w_k) / n, and predicts y_hat = <x_q, w_L>. S = X^T X / n.

* :func:`ahn_theorem1`: Thm 1, extended to label noise and to the w* ~ N(0, Sigma^-1) prior.
* :func:`gdpp_isotropic_loss_samples`, :func:`gdpp_isotropic_params`: GD++ with A_l = a_l I,
  B_l = b_l I at Sigma = I, where the loss of one task is a function of S's eigenvalues.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import linalg
from looped_icl import tasks as tasks_lib
from looped_icl import validation
from looped_icl.theory import metrics


def ahn_theorem1(cov, n: int, *, noise_std: float = 0.0,
                 weight_prior: str = "identity") -> jax.Array:
  """The population-optimal single-layer preconditioner A* (Ahn et al. 2023, Thm 1), (d, d).

  Convention: one layer of the preconditioner model, w_1 = A^T X^T y / n and y_hat = <x_q, w_1>
  (``losses.population_loss`` of ``constructions.preconditioned_gd(A, 1, kind='layered')``).
  Valid for Gaussian designs x ~ N(0, Sigma) (it uses Wishart moments), any n >= 1.

  Derivation. With B = A^T, S = X^T X / n, xi = X^T eps / n (E[xi xi^T | X] = sigma^2 S / n) and
  w* ~ N(0, Sigma_w), the loss is
    f(A) = E_S[tr(Sigma (B S - I) Sigma_w (B S - I)^T)] + sigma^2/n tr(Sigma B Sigma B^T) + sigma^2,
  a convex quadratic in B with stationarity condition
    B (E[S Sigma_w S] + sigma^2/n Sigma) = Sigma_w Sigma.
  For Gaussian x, E[S C S] = Sigma C Sigma + (Sigma C Sigma + tr(C Sigma) Sigma) / n (C symmetric).

  * ``identity`` prior (Sigma_w = I), the paper's Theorem 1 plus label noise:
      A* = ((n+1)/n Sigma + (tr Sigma + sigma^2)/n I)^{-1};  for Sigma = I, n/(n+d+1+sigma^2) I.
  * ``inverse_covariance`` prior (Sigma_w = Sigma^{-1}) by whitening: write x = Sigma^{1/2} x~,
    w* = Sigma^{-1/2} w~ with x~ ~ N(0, I), w~ ~ N(0, I). Labels are unchanged,
    <w*, x> = <w~, x~>, S = Sigma^{1/2} S~ Sigma^{1/2}, and
      y_hat = x_q^T A^T X^T y / n = x~_q^T (Sigma^{1/2} A Sigma^{1/2})^T X~^T y / n,
    so the loss of A equals the Sigma = I, identity-prior loss of A~ = Sigma^{1/2} A Sigma^{1/2}
    (for every depth: w~_k = Sigma^{1/2} w_k follows the same recursion with A~). Hence
      A* = Sigma^{-1/2} A~* Sigma^{-1/2} = n/(n+d+1+sigma^2) Sigma^{-1},
    A~* = n/(n+d+1+sigma^2) I being the identity-prior optimum at Sigma = I.

  Args:
    cov: Sigma, (d, d) symmetric positive definite.
    n: number of in-context examples, >= 1.
    noise_std: label-noise standard deviation sigma >= 0.
    weight_prior: ``identity`` or ``inverse_covariance``.

  Returns:
    A*, (d, d), symmetric.
  """
  validation.covariance("cov", cov)
  n = validation.positive_int("n", n)
  validation.nonnegative("noise_std", noise_std)
  validation.choice("weight_prior", weight_prior, tasks_lib.WEIGHT_PRIORS)
  sigma = jnp.asarray(cov, linalg.float_dtype())
  d = sigma.shape[-1]
  noise_var = jnp.asarray(noise_std, sigma.dtype) ** 2
  eye = jnp.eye(d, dtype=sigma.dtype)
  if weight_prior == "identity":
    k_DxD = (n + 1) / n * sigma + (jnp.trace(sigma) + noise_var) / n * eye
    a_DxD = jnp.linalg.solve(k_DxD, eye)
    return (a_DxD + a_DxD.T) / 2
  a_white_DxD = ahn_theorem1(eye, n, noise_std=noise_std, weight_prior="identity")
  return metrics.unwhiten_preconditioner(a_white_DxD, sigma)


def gdpp_isotropic_loss_samples(a_L, b_L, eigs_SxD):
  """Per-sample population loss of isotropic GD++ from the eigenvalues of S, (S,).

  Sigma = I, w* ~ N(0, I), no noise, A_l = a_l I, B_l = b_l I (b_L: the first L - 1 layers'
  b; the last layer's B does not reach the prediction). In the eigenbasis of S every layer acts
  per eigenvalue lambda: with c_0 = 1 (the covariate map) and m_0 = -1 (the error), layer l has
  the effective step a~ = a_l c_l^2 and m <- (1 - a~ lambda) m, c <- (1 - b_l a~ lambda) c; the
  loss of the task is sum_j m(lambda_j)^2 (SPEC §4 with Sigma = Sigma_w = I).
  """
  m_SxD = -jnp.ones_like(eigs_SxD)
  c_SxD = jnp.ones_like(eigs_SxD)
  for layer in range(a_L.shape[0]):
    step_SxD = a_L[layer] * c_SxD**2
    m_SxD = (1 - step_SxD * eigs_SxD) * m_SxD
    if layer < b_L.shape[0]:
      c_SxD = (1 - b_L[layer] * step_SxD * eigs_SxD) * c_SxD
  return jnp.sum(m_SxD**2, axis=-1)


def gdpp_isotropic_params(a_L, b_L, d: int) -> dict:
  """The GD++ params {a, b} (L, d, d) of the scales a_L, b_L (the last layer's B is 0), for
  ``models.ModelConfig(parametrization='gdpp', kind='layered')``."""
  b_full = np.concatenate([np.asarray(b_L, np.float64), [0.0]])
  eye = np.eye(d)
  return {"a": jnp.asarray(np.asarray(a_L, np.float64)[:, None, None] * eye),
          "b": jnp.asarray(b_full[:, None, None] * eye)}


__all__ = ["ahn_theorem1", "gdpp_isotropic_loss_samples", "gdpp_isotropic_params"]
