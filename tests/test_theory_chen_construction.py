"""Tests for looped_icl.chen_construction (Chen et al.'s looped transformer with tokens as rows and
Lemma 4.1) against explicit NumPy loops over tokens and over GD steps, and against the toolkit's
own token-space attention (attention.forward_tokens)."""

import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import attention
from looped_icl import chen_construction as cc

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout (one set of compilations).


def _numpy_attention(z, q, p, m):
  """(M o Z Q Z^T) Z P one token pair at a time: row i is sum_j M_ij (z_i^T Q z_j) z_j^T P."""
  out = np.zeros_like(z)
  for i in range(z.shape[0]):
    for j in range(z.shape[0]):
      out[i] += m[i, j] * (z[i] @ q @ z[j]) * (z[j] @ p)
  return out


def test_sample_tasks_law_and_priors():
  gauss = cc.sample_tasks(3, 4000, 3, 5)
  sphere = cc.sample_tasks(3, 4000, 3, 5, theta_prior="sphere")
  assert gauss.x.shape == (4000, 5, 3) and gauss.theta.shape == (4000, 3)
  np.testing.assert_array_equal(gauss.y, np.einsum("bni,bi->bn", gauss.x, gauss.theta))
  np.testing.assert_array_equal(gauss.x, sphere.x)
  np.testing.assert_array_equal(gauss.alpha, sphere.alpha)
  np.testing.assert_allclose(np.linalg.norm(sphere.theta, axis=1), 1.0, rtol=1e-14)
  np.testing.assert_allclose(sphere.theta * np.linalg.norm(gauss.theta, axis=1, keepdims=True),
                             gauss.theta, rtol=1e-12)
  # 60000 X entries and 4000 alphas: standard errors of the means <= 1/sqrt(4000) = 0.016.
  assert abs(np.mean(gauss.x)) < 0.02 and abs(np.var(gauss.x) - 1) < 0.03
  assert abs(np.mean(gauss.alpha)) < 0.07 and abs(np.var(gauss.alpha) - 1) < 0.1
  # E ||theta*||^2 = d = 3 (sd of ||theta||^2 is sqrt(2 d) = 2.4, se 0.04).
  assert abs(np.mean(np.sum(gauss.theta**2, axis=1)) - 3) < 0.16
  with pytest.raises(ValueError, match="n must be > d"):
    cc.sample_tasks(0, 2, 3, 3)
  with pytest.raises(ValueError, match="theta_prior"):
    cc.sample_tasks(0, 2, 3, 5, theta_prior="uniform")


def test_weights_mask_and_prompt_layout():
  q, p = cc.chen_weights(3)
  np.testing.assert_array_equal(q, np.eye(4))
  np.testing.assert_array_equal(p, np.diag([1.0, 1.0, 1.0, 0.0]))
  m = cc.query_mask(4)
  expected = np.zeros((5, 5))
  expected[4, :4] = 1.0
  np.testing.assert_array_equal(m, expected)
  tasks = cc.sample_tasks(1, 2, 3, 4)
  q0 = np.arange(6.0).reshape(2, 3)
  z0 = cc.initial_prompt(tasks, q0)
  assert z0.shape == (2, 5, 4)
  for b in range(2):
    np.testing.assert_array_equal(z0[b, :4], np.column_stack([tasks.x[b], tasks.y[b]]))
    np.testing.assert_array_equal(z0[b, 4], np.append(q0[b], tasks.alpha[b]))
  np.testing.assert_array_equal(cc.initial_prompt(tasks)[:, 4, :3], 0.0)


def test_attention_rows_is_the_masked_formula():
  """Any Q, P, M: the jitted attention equals the token-by-token sum."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 6, 4))
  q, p, m = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), rng.integers(0, 2, (6, 6)) * 1.0
  got = np.asarray(cc.attention_rows(jnp.asarray(z), jnp.asarray(q), jnp.asarray(p),
                                     jnp.asarray(m)))
  for b in range(3):
    np.testing.assert_allclose(got[b], _numpy_attention(z[b], q, p, m), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,n", [(1, 2), (4, 6), (4, 64), (8, 12)])
def test_lemma_4_1_holds_to_float64_precision(d, n):
  tasks = cc.sample_tasks(n, 50, d, n)
  q0 = np.random.default_rng(d).normal(size=(50, d))
  err, scale = cc.lemma_4_1_error(tasks, q0)
  # float64 sums of n products: error <~ n eps max|entry| (eps = 2.2e-16); measured 0.01 to 0.3
  # of that (1.7e-13 at n = 64, entries up to 309), far under the threshold 1e-9.
  assert err <= 1e-9 and err <= n * 2.2e-16 * scale
  rhs = cc.lemma_4_1_rhs(tasks, q0)
  for b in range(3):   # The right-hand side itself, from an explicit token sum.
    expected = sum((q0[b] @ tasks.x[b, j] + tasks.alpha[b] * tasks.y[b, j]) * tasks.x[b, j]
                   for j in range(n))
    np.testing.assert_allclose(rhs[b, n, :d], expected, rtol=1e-12)
  # The zero blocks are exact: the mask zeroes the example rows, P the last column.
  q, p = cc.chen_weights(d)
  attn = np.asarray(cc.attention_rows(jnp.asarray(cc.initial_prompt(tasks, q0)), jnp.asarray(q),
                                      jnp.asarray(p), jnp.asarray(cc.query_mask(n))))
  assert np.all(attn[:, :n] == 0.0) and np.all(attn[:, :, d] == 0.0)


def test_first_loop_matches_the_toolkit_forward_tokens():
  """forward_tokens (tokens as columns, keys = the n examples, 1/n) with Q = I and P = e_D e_k^T
  puts coordinate k of the query's attention into the label entry it reads out: after one layer
  with eta = n, y_hat + alpha = (X^T X q(0) + alpha X^T y)_k, Lemma 4.1's row."""
  d, n = 3, 7
  tasks = cc.sample_tasks(5, 4, d, n)
  q0 = np.random.default_rng(5).normal(size=(4, d))
  z0_rows = cc.initial_prompt(tasks, q0)
  z0_cols = jnp.asarray(np.swapaxes(z0_rows, 1, 2))
  q, p = cc.chen_weights(d)
  row = np.asarray(cc.attention_rows(jnp.asarray(z0_rows), jnp.asarray(q), jnp.asarray(p),
                                     jnp.asarray(cc.query_mask(n))))[:, n, :d]
  for k in range(d):
    p_k = np.zeros((d + 1, d + 1))
    p_k[d, k] = 1.0
    pred = attention.forward_tokens(jnp.asarray(p_k)[None], jnp.eye(d + 1)[None],
                                    jnp.asarray([float(n)]), z0_cols)[:, 0]
    np.testing.assert_allclose(np.asarray(pred) + tasks.alpha, row[:, k], rtol=1e-12)


def test_forward_rows_is_gd_on_q_with_per_loop_steps():
  d, n, loops = 3, 9, 12
  tasks = cc.sample_tasks(7, 5, d, n)
  rng = np.random.default_rng(7)
  q0 = rng.normal(size=(5, d))
  eta = rng.uniform(0.2, 1.0, size=(5, loops)) * cc.chen_step(tasks.x)[:, None]
  z_final, query = cc.forward_rows(cc.initial_prompt(tasks, q0), eta)
  assert query.shape == (5, loops, d + 1)
  for b in range(5):
    x, y, alpha = tasks.x[b], tasks.y[b], tasks.alpha[b]
    qb = q0[b].copy()
    for t in range(loops):
      qb = qb - eta[b, t] * (x.T @ x @ qb + alpha * x.T @ y)
      np.testing.assert_allclose(query[b, t, :d], qb, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(query[:, :, d], np.repeat(tasks.alpha[:, None], loops, 1))
  np.testing.assert_array_equal(z_final[:, :n], cc.initial_prompt(tasks)[:, :n])


def test_generated_vectors_default_step_converges_to_minus_alpha_theta():
  d, n = 4, 32
  tasks = cc.sample_tasks(11, 6, d, n)
  eta = cc.chen_step(tasks.x)
  for b in range(6):
    np.testing.assert_allclose(eta[b], 1 / np.linalg.eigvalsh(tasks.x[b].T @ tasks.x[b])[-1],
                               rtol=1e-12)
  q = cc.generated_vectors(tasks, 400)
  assert q.shape == (6, 400, d)
  # n/d = 8: kappa <~ 5, so (1 - 1/kappa)^400 < 1e-30: converged to float64 precision.
  np.testing.assert_allclose(q[:, -1], -tasks.alpha[:, None] * tasks.theta, rtol=1e-9,
                             atol=1e-12)
  with pytest.raises(ValueError, match="eta"):
    cc.generated_vectors(tasks, 3, eta_BxT=np.ones((6, 2)))
