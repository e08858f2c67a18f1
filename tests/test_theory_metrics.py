"""Tests for looped_icl.theory.metrics against independent computations (NumPy closed forms,
explicit GD loops), and for the theory package's re-exports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import constructions
from looped_icl import covariance
from looped_icl import models
from looped_icl import theory

import reference  # tests/reference.py: shared NumPy references
from looped_icl.theory import ahn
from looped_icl.theory import chen
from looped_icl.theory import chen_closed_form
from looped_icl.theory import gatmiry
from looped_icl.theory import metrics

D = 4
SPECTRUM = (1.0, 0.5, 0.25, 2.0)

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout (one set of compilations).


def _np_sqrtm(m, power):
  evals, evecs = np.linalg.eigh(np.asarray(m, np.float64))
  return (evecs * evals**power) @ evecs.T


def test_package_reexports_every_public_name():
  for module in (ahn, chen, chen_closed_form, gatmiry, metrics):
    for name in module.__all__:
      assert getattr(theory, name) is getattr(module, name), (module.__name__, name)
  assert sorted(theory.__all__) == sorted(
      name for m in (ahn, chen, chen_closed_form, gatmiry, metrics) for name in m.__all__)


# ------------------------------------------------------------------------------------------------
# Whitening and per-matrix summaries.
# ------------------------------------------------------------------------------------------------


def test_whiten_roundtrip_and_numpy():
  cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
  a = np.random.default_rng(1).normal(size=(3, D, D))
  root = _np_sqrtm(cov, 0.5)
  white = theory.whiten_preconditioner(a, cov)
  np.testing.assert_allclose(white, np.einsum("ij,bjk,kl->bil", root, a, root), rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(theory.unwhiten_preconditioner(white, cov), a, rtol=1e-10,
                             atol=1e-12)


def test_whitened_scales_and_mean_diagonal():
  """A_l = c_l Sigma^-1 gives c_l back (Sigma^1/2 Sigma^-1 Sigma^1/2 = I); a general A gives the
  NumPy trace of R A R / d, R the eigh square root."""
  cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
  c = np.array([0.7, -0.2, 1.9])
  a = c[:, None, None] * np.linalg.inv(np.asarray(cov))[None]
  np.testing.assert_allclose(theory.whitened_scales(a, cov), c, rtol=1e-10)
  m = np.random.default_rng(4).normal(size=(2, D, D))
  root = _np_sqrtm(cov, 0.5)
  want = [np.trace(root @ mi @ root) / D for mi in m]
  np.testing.assert_allclose(theory.whitened_scales(m, cov), want, rtol=1e-10)
  assert theory.whitened_scales(m, cov).dtype == np.float64
  np.testing.assert_allclose(theory.mean_diagonal(m), [np.mean(np.diag(mi)) for mi in m],
                             rtol=1e-14)
  assert theory.mean_diagonal(2.5 * np.eye(3)) == pytest.approx(2.5)
  with pytest.raises(ValueError, match="m must have shape"):
    theory.mean_diagonal(np.zeros((2, 3)))


def test_asymmetry():
  rng = np.random.default_rng(5)
  s = rng.normal(size=(4, 4))
  assert theory.asymmetry(s + s.T) == 0.0
  assert theory.asymmetry(s - s.T) == pytest.approx(2.0)
  m = rng.normal(size=(4, 4))
  want = np.sqrt(np.sum((m - m.T) ** 2)) / np.sqrt(np.sum(m**2))
  assert isinstance(theory.asymmetry(jnp.asarray(m)), float)
  assert theory.asymmetry(jnp.asarray(m)) == pytest.approx(want, rel=1e-12)
  with pytest.raises(ValueError, match=r"a_DxD must have shape \(d, d\)"):
    theory.asymmetry(np.zeros((2, 3, 3)))
  with pytest.raises(ValueError, match="a_DxD must have shape"):
    theory.asymmetry(np.zeros((2, 3)))


def test_dist_to_identity():
  for c in (1.0, -0.3, 7.5):
    assert float(theory.dist_to_identity(c * jnp.eye(5))) == pytest.approx(0.0, abs=1e-7)
  # diag(1, 2, 3): mean 2, residual diag(-1, 0, 1): sqrt(2) / sqrt(14).
  m = jnp.stack([jnp.diag(jnp.array([1.0, 2.0, 3.0])), 2.0 * jnp.eye(3)])
  np.testing.assert_allclose(theory.dist_to_identity(m), [np.sqrt(1 / 7), 0.0], atol=1e-7)
  r = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
  want = np.linalg.norm(r - np.trace(r, axis1=-2, axis2=-1)[..., None, None] / 4 * np.eye(4),
                        axis=(-2, -1)) / np.linalg.norm(r, axis=(-2, -1))
  np.testing.assert_allclose(theory.dist_to_identity(r), want, rtol=1e-5)
  assert float(theory.dist_to_identity(jnp.zeros((3, 3)))) == 0.0
  with pytest.raises(ValueError, match="m must have shape"):
    theory.dist_to_identity(jnp.zeros((3, 4)))


def test_alignment_distances_are_the_raw_and_whitened_dist_of_each_layer():
  cov = covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)
  cfg = models.ModelConfig(d=D, kind="layered", num_layers=3, parametrization="gdpp")
  params = models.init_params(jax.random.key(0), cfg)
  a = np.asarray(theory.effective_preconditioners(params, cfg), np.float64)
  root = _np_sqrtm(cov, 0.5)
  dist, dist_white = theory.alignment_distances(params, cfg, covariance.sqrtm_psd(cov))
  # NumPy's Dist of A_l and of Sigma^1/2 A_l Sigma^1/2, per layer.
  for got, m in ((dist, a), (dist_white, np.einsum("ij,bjk,kl->bil", root, a, root))):
    resid = m - np.trace(m, axis1=-2, axis2=-1)[:, None, None] / D * np.eye(D)
    want = np.linalg.norm(resid, axis=(-2, -1)) / np.linalg.norm(m, axis=(-2, -1))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_eigenvalues_as_pairs():
  theta = 0.3
  rot = jnp.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  diag = jnp.diag(jnp.array([0.5, 2.0]))
  got = theory.eigenvalues_as_pairs(jnp.stack([rot, diag]))
  want = [[[np.cos(theta), np.sin(theta)], [np.cos(theta), -np.sin(theta)]],
          [[2.0, 0.0], [0.5, 0.0]]]
  np.testing.assert_allclose(got, want, atol=1e-6)
  m = np.random.default_rng(3).normal(size=(5, 5))
  pairs = np.asarray(theory.eigenvalues_as_pairs(m))
  np.testing.assert_allclose(np.sort_complex(pairs[:, 0] + 1j * pairs[:, 1]),
                             np.sort_complex(np.linalg.eigvals(m)), atol=1e-5)
  assert np.all(np.diff(pairs[:, 0]) <= 1e-6)


# ------------------------------------------------------------------------------------------------
# Reading models as preconditioned GD.
# ------------------------------------------------------------------------------------------------


def test_effective_preconditioners_structured():
  rng = np.random.default_rng(5)
  a = rng.normal(size=(3, 3))
  cfg, params = constructions.preconditioned_gd(a, 4, eta=0.7, kind="looped")
  np.testing.assert_allclose(theory.effective_preconditioners(params, cfg), 0.7 * a[None],
                             rtol=1e-6)
  a3 = rng.normal(size=(3, 3, 3))
  cfg, params = constructions.preconditioned_gd(a3, 3, eta=0.5, kind="layered")
  np.testing.assert_allclose(theory.effective_preconditioners(params, cfg), 0.5 * a3, rtol=1e-6)
  cfg, params = constructions.chen_fixed(3, 4, 0.3)
  np.testing.assert_allclose(theory.effective_preconditioners(params, cfg),
                             0.3 * np.eye(3)[None], rtol=1e-6)
  full_cfg, full_params = constructions.to_full(params, cfg)   # eta folded into P, eta_full = 1
  np.testing.assert_allclose(theory.effective_preconditioners(full_params, full_cfg),
                             0.3 * np.eye(3)[None], rtol=1e-6)
  etas = np.array([0.1, 0.2, 0.3, 0.4])
  cfg, params = constructions.chen_fixed(3, 4, etas, per_loop_eta=True)
  np.testing.assert_allclose(theory.effective_preconditioners(params, cfg),
                             etas[:, None, None] * np.eye(3), rtol=1e-6)
  b = rng.normal(size=(3, 3))
  cfg, params = constructions.gdpp(a, b, 2, eta=0.6, kind="looped")
  np.testing.assert_allclose(theory.effective_preconditioners(params, cfg), 0.6 * a[None],
                             rtol=1e-6)
  res = theory.sparsity_residual(params, cfg)
  np.testing.assert_array_equal(res["p"], np.zeros(1))
  np.testing.assert_array_equal(res["q"], np.zeros(1))
  cfg, params = constructions.preconditioned_gd(a3, 3, kind="layered")
  res = theory.sparsity_residual(params, cfg)
  np.testing.assert_array_equal(res["p"], np.zeros(3))


@pytest.mark.parametrize("kind", ["looped", "layered"])
def test_effective_preconditioners_of_full_weights(kind):
  rng = np.random.default_rng(6)
  d, num_layers = 3, 3
  a = rng.normal(size=(d, d)) if kind == "looped" else rng.normal(size=(num_layers, d, d))
  cfg, params = constructions.preconditioned_gd(a, num_layers, eta=0.7, kind=kind)
  full_cfg, full_params = constructions.to_full(params, cfg)
  want = np.asarray(theory.effective_preconditioners(params, cfg))
  np.testing.assert_allclose(theory.effective_preconditioners(full_params, full_cfg), want,
                             rtol=1e-6)
  c = 2.5
  rescaled = {"p": c * full_params["p"], "q": full_params["q"] / c}
  np.testing.assert_allclose(theory.effective_preconditioners(rescaled, full_cfg), want,
                             rtol=1e-5)
  res = theory.sparsity_residual(full_params, full_cfg)
  np.testing.assert_array_equal(res["p"], 0.0)
  np.testing.assert_array_equal(res["q"], 0.0)
  # Random full weights: the residual is the off-sparse Frobenius fraction, computed in numpy.
  lead = () if kind == "looped" else (num_layers,)
  p, q = rng.normal(size=lead + (d + 1, d + 1)), rng.normal(size=lead + (d + 1, d + 1))
  res = theory.sparsity_residual({"p": jnp.asarray(p), "q": jnp.asarray(q)}, full_cfg)
  p, q = p.reshape(-1, d + 1, d + 1), q.reshape(-1, d + 1, d + 1)
  p_off = np.sqrt(np.sum(p**2, axis=(1, 2)) - p[:, d, d] ** 2) / np.linalg.norm(p, axis=(1, 2))
  q_off = (np.sqrt(np.sum(q**2, axis=(1, 2)) - np.sum(q[:, :d, :d] ** 2, axis=(1, 2)))
           / np.linalg.norm(q, axis=(1, 2)))
  np.testing.assert_allclose(res["p"], p_off, rtol=1e-5)
  np.testing.assert_allclose(res["q"], q_off, rtol=1e-5)
  assert np.all(np.asarray(res["p"]) > 0) and np.all(np.asarray(res["q"]) > 0)


@pytest.mark.parametrize("kind", ["looped", "layered"])
def test_sparse_full_model_predicts_as_its_effective_preconditioner(kind):
  """Sparse full weights (P = p e_D e_D^T, Q = [[Q11, 0], [0, 0]]): token-forward predictions
  equal the preconditioner model built from effective_preconditioners and an explicit numpy
  preconditioned-GD loop."""
  rng = np.random.default_rng(8)
  d, n, num_layers, eta = 3, 9, 3, 0.6
  num_mats = 1 if kind == "looped" else num_layers
  corner = rng.uniform(0.5, 2.0, size=num_mats)
  q11 = 0.4 * np.eye(d) + 0.15 * rng.normal(size=(num_mats, d, d))
  p = np.zeros((num_mats, d + 1, d + 1))
  p[:, d, d] = corner
  q = np.zeros((num_mats, d + 1, d + 1))
  q[:, :d, :d] = q11
  if kind == "looped":
    p, q = p[0], q[0]
  cfg = models.ModelConfig(d=d, num_layers=num_layers, kind=kind, parametrization="full",
                           eta=eta)
  params = {"p": jnp.asarray(p), "q": jnp.asarray(q)}
  a_eff = np.asarray(theory.effective_preconditioners(params, cfg))
  assert a_eff.shape == (num_mats, d, d)
  batch = reference.numpy_tasks(9, np.eye(d), n, 5, noise_std=0.3)
  got = models.predict(params, cfg, batch, forward="tokens")
  if kind == "looped":
    pcfg, pparams = constructions.preconditioned_gd(a_eff[0], num_layers, eta=1.0, kind=kind)
  else:
    pcfg, pparams = constructions.preconditioned_gd(a_eff, num_layers, kind=kind)
  np.testing.assert_allclose(got, models.predict(pparams, pcfg, batch), rtol=1e-9, atol=1e-12)
  for b in range(5):
    x, y = np.asarray(batch.x[b]), np.asarray(batch.y[b])
    w = np.zeros(d)
    for layer in range(num_layers):
      a_l = (eta * corner[0] * q11[0]) if kind == "looped" else corner[layer] * q11[layer]
      w = w + a_l.T @ x.T @ (y - x @ w) / n
    np.testing.assert_allclose(got[b], np.asarray(batch.x_query[b]) @ w, rtol=1e-9, atol=1e-12)


def test_input_validation():
  cov = jnp.eye(3)
  with pytest.raises(ValueError, match="a must have shape"):
    theory.whiten_preconditioner(jnp.eye(2), cov)
  with pytest.raises(ValueError, match="a_white must have shape"):
    theory.unwhiten_preconditioner(jnp.zeros((3, 2)), cov)
  cfg = models.ModelConfig(d=3, num_layers=2, parametrization="full", activation="relu")
  with pytest.raises(ValueError, match="cfg.activation"):
    theory.effective_preconditioners(models.init_params(jax.random.key(0), cfg), cfg)
