"""Tests of looped_icl.attention against an explicit per-token NumPy implementation of SPEC §3.

The reference loops over tasks, layers, query tokens j and key tokens i <= n:
  score_ij = z_i^T Q z_j,  mix_ij = score_ij / n (linear), relu(score_ij) / n, or
  softmax_i(score_ij) over the n keys;  attn_j = sum_i mix_ij P z_i;  Z <- Z - eta_l attn,
and reads y_hat_l = -Z_l[d, n]. It never calls the library.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import attention
from looped_icl import models
from looped_icl import tasks
import reference  # tests/reference.py: shared NumPy references

D_COV = 3
N_CTX = 6
NUM_LAYERS = 3
BATCH = 4

_forward_tokens = jax.jit(attention.forward_tokens, static_argnames="activation")
_forward_gram = jax.jit(attention.forward_gram, static_argnames="n")


@pytest.fixture
def f32_matmul():
  """Float32 comparisons at ~1e-5 need true float32 matmuls (accelerators default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield


def _np_prompt(x, y, x_query) -> np.ndarray:
  """Z_0 = [[x_1 .. x_n x_q], [y_1 .. y_n 0]] built by hand, (B, d+1, n+1)."""
  num_tasks, n, d = x.shape
  z = np.zeros((num_tasks, d + 1, n + 1))
  for b in range(num_tasks):
    for i in range(n):
      z[b, :d, i] = x[b, i]
      z[b, d, i] = y[b, i]
    z[b, :d, n] = x_query[b]
  return z


def _reference(z0, p, q, eta, activation):
  """Per-token forward; returns predictions (B, L) and layer-0 scores (B, n, n+1)."""
  num_tasks, dim, num_tokens = z0.shape
  n = num_tokens - 1
  preds = np.zeros((num_tasks, len(p)))
  first_scores = np.zeros((num_tasks, n, num_tokens))
  for b in range(num_tasks):
    z = z0[b].copy()
    for l in range(len(p)):
      attn = np.zeros_like(z)
      for j in range(num_tokens):
        scores = np.array([z[:, i] @ q[l] @ z[:, j] for i in range(n)])
        if l == 0:
          first_scores[b, :, j] = scores
        if activation == "linear":
          mix = scores / n
        elif activation == "relu":
          mix = np.maximum(scores, 0.0) / n
        else:
          e = np.exp(scores - scores.max())
          mix = e / e.sum()
        for i in range(n):
          attn[:, j] += mix[i] * (p[l] @ z[:, i])
      z = z - eta[l] * attn
      preds[b, l] = -z[dim - 1, n]
  return preds, first_scores


def _setup(seed: int, scale: float = 0.3):
  """Token-level tasks (rotated Sigma, noisy labels) and random full per-layer weights."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((D_COV, D_COV)))
  cov = (u * np.array([1.0, 0.6, 0.3])) @ u.T
  task = tasks.make_task((cov + cov.T) / 2, N_CTX, noise_std=0.3)
  batch = tasks.sample_tasks(jax.random.key(seed), task, BATCH)
  x, y, xq = (np.asarray(v, np.float64) for v in (batch.x, batch.y, batch.x_query))
  dim = D_COV + 1
  p = scale * rng.standard_normal((NUM_LAYERS, dim, dim))
  q = scale * rng.standard_normal((NUM_LAYERS, dim, dim))
  eta = rng.uniform(0.5, 1.5, NUM_LAYERS)
  return batch, _np_prompt(x, y, xq), p, q, eta


def test_prompt_layout(x64):
  batch, z0, *_ = _setup(0)
  np.testing.assert_array_equal(np.asarray(tasks.to_prompt(batch)), z0)


@pytest.mark.parametrize("activation", attention.ACTIVATIONS)
def test_tokens_forward_equals_per_token_reference(x64, activation):
  batch, z0, p, q, eta = _setup(1)
  ref, scores = _reference(z0, p, q, eta, activation)
  if activation == "relu":  # the test must exercise both sides of the kink
    assert 0.2 < np.mean(scores < 0) < 0.8
  if activation == "softmax":  # and the softmax must be far from uniform
    assert np.max(np.abs(scores)) > 1.0
  preds = _forward_tokens(jnp.asarray(p), jnp.asarray(q), jnp.asarray(eta), jnp.asarray(z0),
                          activation=activation)
  assert preds.shape == (BATCH, NUM_LAYERS) and preds.dtype == jnp.float64
  reference.assert_rel_close(preds, ref, 1e-10)
  # M drops the query from the keys; a second prompt differing only in x_q checks that the
  # query column enters as a query only (a key-side leak would change every layer differently).
  z1 = z0.copy()
  z1[:, :D_COV, N_CTX] *= -2.0
  ref1, _ = _reference(z1, p, q, eta, activation)
  reference.assert_rel_close(_forward_tokens(jnp.asarray(p), jnp.asarray(q), jnp.asarray(eta),
                                    jnp.asarray(z1), activation=activation), ref1, 1e-10)


def test_gram_forward_equals_per_token_reference(x64):
  batch, z0, p, q, eta = _setup(2)
  ref, _ = _reference(z0, p, q, eta, "linear")
  gram = np.einsum("bin,bjn->bij", z0[:, :, :N_CTX], z0[:, :, :N_CTX])  # Z M Z^T by hand
  preds = _forward_gram(jnp.asarray(p), jnp.asarray(q), jnp.asarray(eta), jnp.asarray(gram),
                        jnp.asarray(z0[:, :, N_CTX]), n=N_CTX)
  reference.assert_rel_close(preds, ref, 1e-10)


@pytest.mark.usefixtures("x64", "f32_matmul")
def test_gram_forward_float32():
  """Tasks and the reference in float64; the forwards run in float32."""
  batch, z0, p, q, eta = _setup(3, scale=0.15)
  ref, _ = _reference(z0, p, q, eta, "linear")
  gram = np.einsum("bin,bjn->bij", z0[:, :, :N_CTX], z0[:, :, :N_CTX])
  with jax.enable_x64(False):
    f32 = [jnp.asarray(v, jnp.float32) for v in (p, q, eta, gram, z0[:, :, N_CTX], z0)]
    preds_gram = _forward_gram(*f32[:5], n=N_CTX)
    preds_tok = _forward_tokens(f32[0], f32[1], f32[2], f32[5])
    assert preds_gram.dtype == jnp.float32
  reference.assert_rel_close(preds_gram, ref, 1e-5)
  reference.assert_rel_close(preds_tok, ref, 1e-5)


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_models_thread_activation(x64, activation):
  """models.predict with a full layered model and a nonlinear activation uses that activation."""
  batch, z0, p, q, _ = _setup(4)
  ref, _ = _reference(z0, p, q, np.ones(NUM_LAYERS), activation)
  cfg = models.ModelConfig(d=D_COV, num_layers=NUM_LAYERS, kind="layered",
                           parametrization="full", activation=activation, eta=0.5)
  preds = models.predict({"p": jnp.asarray(p), "q": jnp.asarray(q)}, cfg, batch,
                         forward="tokens", all_layers=True)
  reference.assert_rel_close(preds, ref, 1e-10)


class AttentionVariantsTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(jax.default_matmul_precision("highest"))  # no TF32 on accelerators

  @chex.variants(with_jit=True, without_jit=True)
  def test_forwards_variants(self):
    _, z0, p, q, eta = _setup(5, scale=0.15)
    ref_relu, _ = _reference(z0, p, q, eta, "relu")
    ref_lin, _ = _reference(z0, p, q, eta, "linear")
    f32 = [jnp.asarray(v, jnp.float32) for v in (p, q, eta, z0)]
    relu = self.variant(functools.partial(attention.forward_tokens, activation="relu"))
    reference.assert_rel_close(relu(*f32), ref_relu, 1e-5)
    gram = np.einsum("bin,bjn->bij", z0[:, :, :N_CTX], z0[:, :, :N_CTX])
    fwd_gram = self.variant(functools.partial(attention.forward_gram, n=N_CTX))
    reference.assert_rel_close(fwd_gram(*f32[:3], jnp.asarray(gram, jnp.float32),
                               jnp.asarray(z0[:, :, N_CTX], jnp.float32)), ref_lin, 1e-5)


def test_shape_and_activation_errors():
  z = jnp.zeros((2, 4, 5))
  p = jnp.zeros((3, 4, 4))
  with pytest.raises(ValueError, match="activation must be one of"):
    attention.forward_tokens(p, p, jnp.ones(3), z, activation="gelu")
  with pytest.raises(AssertionError):
    attention.forward_tokens(p, p, jnp.ones(2), z)
  with pytest.raises(AssertionError):
    attention.forward_tokens(jnp.zeros((3, 5, 5)), jnp.zeros((3, 5, 5)), jnp.ones(3), z)
  with pytest.raises(AssertionError):
    attention.forward_gram(p, p, jnp.ones(3), jnp.zeros((2, 4, 4)), jnp.zeros((2, 3)), n=4)


def test_gram_forward_gradients_equal_token_autodiff(x64):
  """The Gram path's hand-written reverse mode equals autodiff of the token path (P, Q, eta)."""
  keys = jax.random.split(jax.random.key(7), 4)
  task = tasks.make_task(jnp.diag(jnp.array([1.0, 0.5, 2.0])), 7, noise_std=0.3)
  batch = tasks.sample_tasks(keys[0], task, 11)
  gram = tasks.to_gram(batch)
  p = 0.3 * jax.random.normal(keys[1], (2, 4, 4))
  q = 0.3 * jax.random.normal(keys[2], (2, 4, 4))
  eta = jnp.array([0.7, 1.3])
  weights_L = jax.random.normal(keys[3], (2,))

  def loss(forward, p, q, eta):
    preds_BxL = forward(p, q, eta)
    return jnp.sum(jnp.mean((preds_BxL - batch.y_query[:, None]) ** 2, axis=0) * weights_L)

  tokens = lambda p, q, eta: attention.forward_tokens(p, q, eta, tasks.to_prompt(batch))
  grams = lambda p, q, eta: attention.forward_gram(p, q, eta, gram.gram, gram.query, 7)
  expected = jax.jit(jax.grad(functools.partial(loss, tokens), argnums=(0, 1, 2)))(p, q, eta)
  got = jax.jit(jax.grad(functools.partial(loss, grams), argnums=(0, 1, 2)))(p, q, eta)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
