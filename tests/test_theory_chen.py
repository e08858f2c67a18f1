"""Tests for looped_icl.theory.chen (Chen et al. 2024's Theorem 4.5 as stated and corrected, on the
paper's construction; the regression-side bound and the fixed looped construction) against
explicit NumPy GD loops and hand-computed instances."""

import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import chen_construction
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


# ------------------------------------------------------------------------------------------------
# Theorem 4.5 as stated, on the paper's construction.
# ------------------------------------------------------------------------------------------------


def _numpy_generation_gd(gen, num_loops):
  """Explicit GD on q from q(0) = 0 with eta = 1/lambda_max(X^T X): q(1..T), (B, T, d)."""
  out = np.zeros((gen.x.shape[0], num_loops, gen.x.shape[2]))
  for b in range(gen.x.shape[0]):
    x, y, alpha = gen.x[b], gen.y[b], gen.alpha[b]
    eta = 1.0 / np.linalg.eigvalsh(x.T @ x)[-1]
    q = np.zeros(x.shape[1])
    for t in range(num_loops):
      q = q - eta * (x.T @ x @ q + alpha * x.T @ y)
      out[b, t] = q
  return out


def test_theorem_4_5_errors_from_an_explicit_gd_loop():
  gen = chen_construction.sample_tasks(2, 8, 4, 10)
  q = _numpy_generation_gd(gen, 30)
  np.testing.assert_allclose(chen_construction.generated_vectors(gen, 30), q, rtol=1e-9,
                             atol=1e-12)
  errors = theory.theorem_4_5_errors(gen, q)
  assert set(errors) == set(theory.THEOREM_4_5_READINGS)
  for b in range(8):
    theta, alpha = gen.theta[b], gen.alpha[b]
    inner = q[b] @ theta
    # The same sums in another order: they differ by round-off of |alpha| ||theta||^2 (x 1e-15).
    tol = dict(rtol=0, atol=1e-15 * abs(alpha) * (1 + theta @ theta))
    np.testing.assert_allclose(errors["as_stated"][0][b], np.abs(inner - alpha), **tol)
    np.testing.assert_allclose(errors["sign_only"][0][b], np.abs(-inner - alpha), **tol)
    np.testing.assert_allclose(errors["corrected"][0][b], np.abs(-inner - alpha * theta @ theta),
                               **tol)
    np.testing.assert_allclose(errors["corrected"][1][b], abs(alpha) * theta @ theta, rtol=1e-14)
  x = gen.x
  evals = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", x, x))
  np.testing.assert_allclose(theory.generation_kappa(x), evals[:, -1] / evals[:, 0], rtol=1e-12)


def test_theorem_4_5_as_stated_fails_for_every_task_and_loop():
  """<q(T), theta*> = -alpha theta*^T (I - (I - eta A)^T) theta*, a positive-definite form times
  -alpha: the error exceeds |alpha| >= the bound at every T >= 1 (ours; see
  docs/chen_2024_statements.md)."""
  gen = chen_construction.sample_tasks(3, 300, 4, 8)
  q = chen_construction.generated_vectors(gen, 40)
  inner = np.einsum("btd,bd->bt", q, gen.theta)
  assert np.all(inner * gen.alpha[:, None] < 0)
  checks = theory.theorem_4_5_checks(gen, q)
  assert checks["as_stated"].violations == checks["as_stated"].pairs == 300 * 40
  assert checks["corrected"].violations == 0
  # Without the normalisation the sign fix alone fails too, except where ||theta*|| ~ 1 and T is
  # small: strictly between none and all.
  assert 0 < checks["sign_only"].violations < checks["sign_only"].pairs


def test_theorem_4_5_smallest_counterexamples_by_hand():
  """d = 1, n = 2, X = [1, 1]^T: A = 2, eta = 1/2, q(1) = -eta alpha X^T y = -theta*."""
  stated = theory.theorem_4_5_counterexample("as_stated")
  assert (stated["d"], stated["n"], stated["T"], stated["kappa"], stated["eta"]) == (1, 2, 1, 1.0,
                                                                                     0.5)
  assert stated["q_T"] == -1.0 and stated["lhs"] == 2.0           # |(-1)(1) - 1|
  np.testing.assert_allclose(stated["bound"], np.exp(-0.5), rtol=1e-12)
  sign = theory.theorem_4_5_counterexample("sign_only")
  assert sign["theta"] == 2.0 and sign["q_T"] == -2.0 and sign["lhs"] == 3.0   # |2 * 2 - 1|
  assert stated["lhs"] > stated["bound"] and sign["lhs"] > sign["bound"]
  with pytest.raises(ValueError, match="reading"):
    theory.theorem_4_5_counterexample("corrected")


@pytest.mark.parametrize("n", [5, 8, 32])
def test_theorem_4_5_corrected_holds_with_the_sharper_rate(n):
  gen = chen_construction.sample_tasks(n, 200, 4, n)
  num_loops = 80
  q = chen_construction.generated_vectors(gen, num_loops)
  err, scale = theory.theorem_4_5_errors(gen, q)["corrected"]
  kappa = theory.generation_kappa(gen.x)
  t = np.arange(1, num_loops + 1)[None, :]
  floor = theory.ROUNDOFF_FLOOR_FACTOR * kappa * np.abs(gen.alpha) * (1 + np.sum(gen.theta**2, 1))
  # The proof's (1 - 1/kappa)^T, the sharper rate, up to the float64 floor.
  assert np.all(err <= scale[:, None] * (1 - 1 / kappa[:, None]) ** t * (1 + 1e-9) + floor[:, None])
  check = theory.theorem_4_5_checks(gen, q)["corrected"]
  assert check.violations == 0 and check.pairs == 200 * num_loops
  assert check.max_ratio > 0.5    # not vacuous: some task within a factor 2 of the bound


def test_theorem_4_5_paper_form_holds_on_the_unit_sphere():
  """||theta*|| = 1 and the output read as -q(T): the paper's form itself has no violation."""
  gen = chen_construction.sample_tasks(4, 300, 4, 12, theta_prior="sphere")
  q = chen_construction.generated_vectors(gen, 60)
  checks = theory.theorem_4_5_checks(gen, q)
  assert checks["sign_only"].violations == 0
  np.testing.assert_allclose(theory.theorem_4_5_errors(gen, q)["sign_only"][0],
                             theory.theorem_4_5_errors(gen, q)["corrected"][0], rtol=1e-12,
                             atol=1e-15)
  assert checks["as_stated"].violations == checks["as_stated"].pairs


def test_theorem_4_5_worst_case_is_the_bottom_eigenvector():
  """theta* along A's bottom eigenvector: error = scale (1 - 1/kappa)^T exactly, so the bound
  exp(-T/(2 kappa)) is loose by exp(-T/(2 kappa)) (up to O(T/kappa^2)) and no more."""
  d, n, kappa = 4, 8, 20.0
  rng = np.random.default_rng(9)
  u = np.linalg.qr(rng.normal(size=(n, d)))[0]
  v = np.linalg.qr(rng.normal(size=(d, d)))[0]
  x = (u * np.sqrt(np.geomspace(1.0, 1.0 / kappa, d))) @ v.T    # cond(X^T X) = 20
  evals, evecs = np.linalg.eigh(x.T @ x)
  theta = evecs[:, 0]
  gen = chen_construction.GenerationTasks(x=x[None], y=(x @ theta)[None], theta=theta[None],
                                          alpha=np.array([-1.5]))
  q = chen_construction.generated_vectors(gen, 40)
  err, scale = theory.theorem_4_5_errors(gen, q)["corrected"]
  t = np.arange(1, 41)
  np.testing.assert_allclose(err[0], 1.5 * (1 - 1 / kappa) ** t, rtol=1e-9)
  np.testing.assert_allclose(scale, [1.5], rtol=1e-12)
  ratio = err[0] / np.asarray(theory.chen_bound(1.5, t, kappa))
  # ln(1 - 1/kappa) >= -1/kappa - 1/kappa^2 (kappa >= 2).
  assert np.all(ratio <= 1.0) and np.all(ratio >= np.exp(-t / (2 * kappa) - t / kappa**2))
