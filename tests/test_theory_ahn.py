"""Tests for looped_icl.theory.ahn (Ahn et al. 2023) against independent computations: Wishart
moments in NumPy, per-sample gradients of the library's exact loss, Monte Carlo with stated
tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import constructions
from looped_icl import covariance
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks
from looped_icl import theory

D, N, NOISE = 4, 10, 0.5
SPECTRUM = (1.0, 0.5, 0.25, 2.0)
NUM_S = 100_000  # samples of S = X^T X / n shared by the Theorem 1 tests.

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout (one set of compilations).


def _np_sqrtm(m, power):
  evals, evecs = np.linalg.eigh(np.asarray(m, np.float64))
  return (evecs * evals**power) @ evecs.T


@pytest.fixture(scope="module")
def ahn_samples():
  """Sigma (rotated, non-isotropic) and NUM_S float64 draws of S for n = N (law independent of
  the weight prior and the noise)."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
    task = tasks.make_task(cov, N)
    s = tasks.sample_empirical_covariance(jax.random.key(0), task, NUM_S)
  finally:
    jax.config.update("jax_enable_x64", previous)
  return cov, s


def _wishart_minimiser(sigma, sigma_w, n, noise_std):
  """Exact minimiser of the one-layer population loss from Wishart moments (numpy, float64).

  f(A) = E tr(Sigma (A^T S - I) Sigma_w (A^T S - I)^T) + s^2/n tr(Sigma A^T Sigma A) + s^2 is
  stationary iff A^T M = Sigma_w Sigma, M = E[S Sigma_w S] + s^2/n Sigma, with
  E[S C S] = Sigma C Sigma + (Sigma C Sigma + tr(C Sigma) Sigma) / n.
  """
  sigma, sigma_w = np.asarray(sigma, np.float64), np.asarray(sigma_w, np.float64)
  scs = sigma @ sigma_w @ sigma
  m = scs + (scs + np.trace(sigma_w @ sigma) * sigma) / n + noise_std**2 / n * sigma
  return np.linalg.solve(m, sigma @ sigma_w)   # A = M^{-1} Sigma Sigma_w (M symmetric).


def _one_layer(a):
  return constructions.preconditioned_gd(a, 1, kind="layered")


def test_wishart_moment_formula_matches_samples(ahn_samples):
  """The reference's E[S C S] formula against the Bartlett samples (4 standard errors)."""
  cov, s = ahn_samples
  sigma = np.asarray(cov)
  c = np.linalg.inv(sigma)
  scs = np.einsum("sij,jk,skl->sil", np.asarray(s), c, np.asarray(s))
  expect = sigma @ c @ sigma + (sigma @ c @ sigma + np.trace(c @ sigma) * sigma) / N
  se = scs.std(0, ddof=1) / np.sqrt(NUM_S)
  assert np.all(np.abs(scs.mean(0) - expect) <= 4 * se)
  assert np.all(np.abs(np.asarray(s).mean(0) - sigma) <= 4 * np.asarray(s).std(0) / np.sqrt(NUM_S))


@pytest.mark.parametrize("prior", ["identity", "inverse_covariance"])
def test_ahn_theorem1_matches_wishart_minimiser(prior):
  cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
  sigma = np.asarray(cov)
  sigma_w = np.eye(D) if prior == "identity" else np.linalg.inv(sigma)
  a_star = theory.ahn_theorem1(cov, N, noise_std=NOISE, weight_prior=prior)
  np.testing.assert_allclose(a_star, _wishart_minimiser(sigma, sigma_w, N, NOISE), rtol=1e-10,
                             atol=1e-12)


@pytest.mark.parametrize("noise_std", [0.0, 0.5])
def test_ahn_theorem1_isotropic_and_inverse_prior_closed_forms(noise_std):
  eye = np.eye(D)
  np.testing.assert_allclose(theory.ahn_theorem1(jnp.eye(D), N, noise_std=noise_std),
                             N / (N + D + 1 + noise_std**2) * eye, rtol=1e-12, atol=1e-14)
  cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
  got = theory.ahn_theorem1(cov, N, noise_std=noise_std, weight_prior="inverse_covariance")
  np.testing.assert_allclose(got, N / (N + D + 1 + noise_std**2) * np.linalg.inv(cov),
                             rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prior", ["identity", "inverse_covariance"])
def test_ahn_theorem1_is_stationary_and_minimal(ahn_samples, prior):
  """Per-sample gradients of the Rao-Blackwellised loss average to 0 at A* (each entry within 4
  standard errors), while a 5% scaling gives a clearly nonzero mean gradient (power check), and
  A* beats scaled and randomly perturbed matrices on the same samples of S."""
  cov, s = ahn_samples
  task = tasks.make_task(cov, N, noise_std=NOISE, weight_prior=prior)
  a_star = theory.ahn_theorem1(cov, N, noise_std=NOISE, weight_prior=prior)

  def per_sample_loss(a, s_DxD):
    cfg, params = _one_layer(a)
    return losses.population_loss_samples(params, cfg, task, s_DxD[None])[0, -1]

  per_sample_grad = jax.jit(jax.vmap(jax.grad(per_sample_loss), in_axes=(None, 0)))

  def mean_and_se(a):
    g = np.asarray(per_sample_grad(a, s))
    return g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])

  mean, se = mean_and_se(a_star)
  assert np.all(np.abs(mean) <= 4 * se), np.abs(mean / se).max()
  mean_off, se_off = mean_and_se(1.05 * a_star)
  assert np.max(np.abs(mean_off) / se_off) > 20

  @jax.jit
  def loss(a_DxD, s_SxDxD):
    cfg, params = _one_layer(a_DxD)
    return losses.population_loss(params, cfg, task, s_SxDxD)

  rng = np.random.default_rng(0)
  candidates = [c * a_star for c in (0.95, 1.05)]
  candidates += [a_star * (1 + 0.05 * rng.choice([-1.0, 1.0], size=(D, D))) for _ in range(8)]
  values = jax.vmap(loss, in_axes=(0, None))(jnp.stack([a_star] + candidates), s)
  assert np.all(np.asarray(values[1:]) > float(values[0]))


@pytest.mark.parametrize("kind,num_layers", [("layered", 1), ("looped", 3)])
def test_whitened_problem_has_identical_population_loss(ahn_samples, kind, num_layers):
  """Thm 1's whitening step: the loss of A with w* ~ N(0, Sigma^-1) on Sigma == loss of
  Sigma^1/2 A Sigma^1/2 on Sigma = I (identity prior) with S~ = Sigma^-1/2 S Sigma^-1/2: equal per
  sample (an exact identity)."""
  cov, s_all = ahn_samples
  s = s_all[:2000]
  inv_root = _np_sqrtm(cov, -0.5)
  s_white = jnp.einsum("ij,sjk,kl->sil", inv_root, s, inv_root)
  a = 0.3 * np.eye(D) + 0.1 * np.random.default_rng(2).normal(size=(D, D))  # not symmetric
  a_white = theory.whiten_preconditioner(a, cov)
  task = tasks.make_task(cov, N, noise_std=NOISE, weight_prior="inverse_covariance")
  task_white = tasks.make_task(jnp.eye(D), N, noise_std=NOISE, weight_prior="identity")
  cfg, params = constructions.preconditioned_gd(a, num_layers, eta=0.8, kind=kind)
  cfg_w, params_w = constructions.preconditioned_gd(a_white, num_layers, eta=0.8, kind=kind)
  got = losses.population_loss_samples(params, cfg, task, s)
  want = losses.population_loss_samples(params_w, cfg_w, task_white, s_white)
  np.testing.assert_allclose(got, want, rtol=1e-9)


def test_ahn_theorem1_input_validation():
  cov = jnp.eye(3)
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    theory.ahn_theorem1(cov, 0)
  with pytest.raises(ValueError, match="noise_std"):
    theory.ahn_theorem1(cov, 5, noise_std=-1.0)
  with pytest.raises(ValueError, match="weight_prior"):
    theory.ahn_theorem1(cov, 5, weight_prior="laplace")
  with pytest.raises(ValueError, match="cov must be positive definite"):
    theory.ahn_theorem1(jnp.zeros((3, 3)), 5)


# ------------------------------------------------------------------------------------- GD++


def test_isotropic_gdpp_reduction_matches_library():
  """The eigenvalue form of the isotropic GD++ loss is the library's exact loss (SPEC §4)."""
  model = models.ModelConfig(d=5, num_layers=3, kind="layered", parametrization="gdpp")
  task = tasks.make_task(jnp.eye(5), 10)
  s = tasks.sample_empirical_covariance(jax.random.key(0), task, 500)
  a, b = np.array([0.6, 2.0, 15.0]), np.array([0.35, 0.96])
  params = theory.gdpp_isotropic_params(a, b, 5)
  library = losses.population_loss_samples(params, model, task, s)
  reduced = theory.gdpp_isotropic_loss_samples(jnp.asarray(a), jnp.asarray(b),
                                               jnp.linalg.eigvalsh(s))
  np.testing.assert_allclose(reduced, library[:, -1], rtol=1e-10)


def test_isotropic_gdpp_params_and_plain_gd_limit():
  """Params are a_l I and b_l I (the last B zero); with b = 0 the loss is preconditioned GD's,
  sum_j prod_l (1 - a_l lambda_j)^2 (computed here in NumPy)."""
  params = theory.gdpp_isotropic_params([0.5, 0.7], [0.3], 3)
  np.testing.assert_allclose(params["a"], [0.5 * np.eye(3), 0.7 * np.eye(3)])
  np.testing.assert_allclose(params["b"], [0.3 * np.eye(3), np.zeros((3, 3))])
  eigs = np.random.default_rng(1).uniform(0.1, 3.0, size=(20, 3))
  a = np.array([0.5, 0.7, 0.2])
  got = theory.gdpp_isotropic_loss_samples(jnp.asarray(a), jnp.zeros(2), jnp.asarray(eigs))
  want = np.sum(np.prod((1 - a[None, :, None] * eigs[:, None, :]) ** 2, axis=1), axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-12)
