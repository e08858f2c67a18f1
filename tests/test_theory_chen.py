"""Tests for looped_icl.theory.chen (Chen et al. 2024's bound and the fixed looped construction)
against explicit NumPy GD loops."""

import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import covariance
from looped_icl import tasks
from looped_icl import theory

import reference  # tests/reference.py: shared NumPy references

D = 4
SPECTRUM = (1.0, 0.5, 0.25, 2.0)

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout (one set of compilations).


def _numpy_gd_errors(x, y, num_loops):
  """Explicit GD loop with eta = 1/lambda_max(X^T X / n); errors in both norms and alphas."""
  n = x.shape[0]
  s = x.T @ x / n
  evals = np.linalg.eigvalsh(s)
  eta = 1.0 / evals[-1]
  w_hat = np.linalg.lstsq(x, y, rcond=None)[0]
  w = np.zeros(x.shape[1])
  loss_err, euc_err = [], []
  for _ in range(num_loops):
    w = w + eta * x.T @ (y - x @ w) / n
    e = w - w_hat
    # sqrt(2 (L(w) - L(w_hat))), L = ||y - Xw||^2 / (2n), computed from the residuals.
    loss_err.append(np.sqrt(max(np.sum((y - x @ w) ** 2) - np.sum((y - x @ w_hat) ** 2), 0) / n))
    euc_err.append(np.linalg.norm(e))
  alpha_loss = np.sqrt(max(np.sum(y**2) - np.sum((y - x @ w_hat) ** 2), 0) / n)
  return (np.array(loss_err), np.array(euc_err), alpha_loss, np.linalg.norm(w_hat),
          evals[-1] / evals[0])


@pytest.mark.parametrize("ratio", [1.5, 2, 4])
def test_chen_bound_holds_for_random_tasks(ratio):
  num_loops, d = 50, D
  n = int(ratio * d)
  cov = covariance.make_covariance("rotated", d, spectrum=SPECTRUM, cov_seed=3)
  batch = reference.numpy_tasks(int(10 * ratio), cov, n, 16, noise_std=0.1)
  res = {norm: theory.chen_fixed_errors(batch, num_loops, norm=norm) for norm in theory.CHEN_NORMS}
  t = np.arange(1, num_loops + 1)
  for b in range(16):
    loss_err, euc_err, alpha_loss, alpha_euc, kappa = _numpy_gd_errors(
        np.asarray(batch.x[b]), np.asarray(batch.y[b]), num_loops)
    np.testing.assert_allclose(res["loss"].kappa[b], kappa, rtol=1e-8)
    np.testing.assert_allclose(res["loss"].alpha[b], alpha_loss, rtol=1e-8)
    np.testing.assert_allclose(res["euclidean"].alpha[b], alpha_euc, rtol=1e-8)
    np.testing.assert_allclose(res["loss"].errors[b], loss_err, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(res["euclidean"].errors[b], euc_err, rtol=1e-6, atol=1e-12)
  for r in res.values():
    bound = np.asarray(theory.chen_bound(r.alpha[:, None], t[None, :], r.kappa[:, None]))
    assert np.all(np.asarray(r.errors) <= bound * (1 + 1e-9))
    # The sharper rate the proof gives: (1 - 1/kappa)^T <= exp(-T / kappa).
    sharp = np.asarray(r.alpha)[:, None] * np.exp(-t[None, :] / np.asarray(r.kappa)[:, None])
    assert np.all(np.asarray(r.errors) <= sharp * (1 + 1e-9))


def test_chen_bound_tight_on_worst_case_prompt():
  """Worst case: noiseless y = X v_min, v_min the bottom eigenvector of S (kappa = 40). Then
  error_T = (1 - 1/kappa)^T alpha exactly, and for every T <= kappa the bound exceeds the error
  by less than a factor 2 (log(error/bound) >= -T/(2 kappa) - T/kappa^2 >= -0.53 here)."""
  d, n, kappa = D, 2 * D, 40.0
  rng = np.random.default_rng(4)
  u = np.linalg.qr(rng.normal(size=(n, d)))[0]
  v = np.linalg.qr(rng.normal(size=(d, d)))[0]
  x = (u * np.sqrt(n * np.geomspace(1.0, 1.0 / kappa, d))) @ v.T   # cond(X^T X) = 40
  evals, evecs = np.linalg.eigh(x.T @ x / n)
  np.testing.assert_allclose(evals[-1] / evals[0], kappa, rtol=1e-10)
  y = x @ evecs[:, 0]
  batch = tasks.Tasks(x=jnp.asarray(x)[None], y=jnp.asarray(y)[None], x_query=jnp.zeros((1, d)),
                      y_query=jnp.zeros((1,)), w=jnp.asarray(evecs[:, 0])[None])
  num_loops = int(kappa)
  t = np.arange(1, num_loops + 1)
  for norm in theory.CHEN_NORMS:
    r = theory.chen_fixed_errors(batch, num_loops, norm=norm)
    alpha = float(r.alpha[0])
    np.testing.assert_allclose(r.errors[0], alpha * (1 - 1 / kappa) ** t, rtol=1e-7)
    ratio = np.asarray(r.errors[0]) / np.asarray(theory.chen_bound(alpha, t, kappa))
    assert np.all(ratio <= 1 + 1e-9)
    assert np.all(ratio >= 0.5)


def test_chen_fixed_iterates_are_gd():
  """The transformer's read-out vectors equal an explicit GD loop (the "generated vector")."""
  cov = covariance.make_covariance("diagonal", 3, spectrum=(1.0, 0.3, 2.0))
  batch = reference.numpy_tasks(7, cov, 7, 4, noise_std=0.2)
  w, eta = theory.chen_fixed_iterates(batch, 5)
  assert w.shape == (4, 5, 3)
  for b in range(4):
    x, y = np.asarray(batch.x[b]), np.asarray(batch.y[b])
    step = 1.0 / np.linalg.eigvalsh(x.T @ x / 7)[-1]
    np.testing.assert_allclose(eta[b], step, rtol=1e-10)
    wk = np.zeros(3)
    for k in range(5):
      wk = wk + step * x.T @ (y - x @ wk) / 7
      np.testing.assert_allclose(w[b, k], wk, rtol=1e-9, atol=1e-12)


def test_chen_bound_values_and_validation():
  np.testing.assert_allclose(theory.chen_bound(-2.0, 3, 1.5), 2.0 * np.exp(-1.0), rtol=1e-6)
  np.testing.assert_allclose(theory.chen_bound(1.0, 0, 1.0), 1.0)
  np.testing.assert_allclose(theory.chen_bound(1.0, 7, np.inf), 1.0)
  with pytest.raises(ValueError, match="kappa"):
    theory.chen_bound(1.0, 3, 0.5)
  with pytest.raises(ValueError, match="num_loops"):
    theory.chen_bound(1.0, -1, 2.0)
  with pytest.raises(ValueError, match="num_loops"):
    theory.chen_bound(1.0, 1.5, 2.0)
  with pytest.raises(ValueError, match="alpha"):
    theory.chen_bound(np.nan, 1, 2.0)
  batch = tasks.Tasks(x=jnp.ones((2, 3, 4)), y=jnp.ones((2, 3)), x_query=jnp.ones((2, 4)),
                      y_query=jnp.ones((2,)), w=jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="n must be >= d"):
    theory.chen_fixed_errors(batch, 2)
  with pytest.raises(ValueError, match="norm"):
    theory.chen_fixed_errors(batch, 2, norm="l1")


def test_chen_fixed_iterates_accept_gram_batches_only():
  batch = reference.numpy_tasks(3, np.eye(3), 5, 2, noise_std=0.0)
  w_tokens, _ = theory.chen_fixed_iterates(batch, 3)
  w_gram, _ = theory.chen_fixed_iterates(tasks.to_gram(batch), 3)
  np.testing.assert_array_equal(w_tokens, w_gram)
  with pytest.raises(ValueError, match="^batch must be a tasks.GramTasks or tasks.Tasks batch"):
    theory.chen_fixed_iterates(np.zeros((2, 4, 4)), 3)
