"""looped_icl.gram_forward: the hand-written reverse mode equals autodiff of a plain reference.

The reference is SPEC section 3's Gram recursion written with batch-first einsums
(T_l = I - eta_l P_l G_l Q_l / n, G_{l+1} = T_l G_l T_l^T, u_{l+1} = T_l u_l, y_hat_l = -u_l[D-1])
and differentiated by JAX; every input's cotangent is compared (x64, 1e-10 relative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import gram_forward
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks


def _reference_preds(p, q, eta, gram_BxDxD, query_BxD, n):
  eye = jnp.eye(p.shape[-1])
  preds = []
  for l in range(p.shape[0]):
    t = eye[None] - (eta[l] / n) * jnp.einsum("ij,bjk,kl->bil", p[l], gram_BxDxD, q[l])
    gram_BxDxD = jnp.einsum("bij,bjk,blk->bil", t, gram_BxDxD, t)
    query_BxD = jnp.einsum("bij,bj->bi", t, query_BxD)
    preds.append(-query_BxD[:, -1])
  return jnp.stack(preds)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_vjp_of_every_input_equals_autodiff(x64, num_layers):
  keys = jax.random.split(jax.random.key(3), 6)
  dim, batch, n = 4, 9, 7
  x = jax.random.normal(keys[0], (batch, dim, n))
  gram = jnp.einsum("bin,bjn->bij", x, x)
  query = jax.random.normal(keys[1], (batch, dim))
  p = 0.4 * jax.random.normal(keys[2], (num_layers, dim, dim))
  q = 0.4 * jax.random.normal(keys[3], (num_layers, dim, dim))
  eta = 1.0 + 0.2 * jax.random.normal(keys[4], (num_layers,))
  cot_LxB = jax.random.normal(keys[5], (num_layers, batch))

  def ref(p, q, eta, gram, query):
    return jnp.sum(_reference_preds(p, q, eta, gram, query, n) * cot_LxB)

  def fast(p, q, eta, gram, query):
    preds = gram_forward.gram_predictions(p, q, eta, jnp.moveaxis(gram, 0, -1), query.T, n)
    return jnp.sum(preds * cot_LxB)

  args = (p, q, eta, gram, query)
  np.testing.assert_allclose(jax.jit(fast)(*args), jax.jit(ref)(*args), rtol=1e-12)
  expected = jax.jit(jax.grad(ref, argnums=range(5)))(*args)   # jitted: one program, not one per op
  got = jax.jit(jax.grad(fast, argnums=range(5)))(*args)
  for name, e, g in zip(("p", "q", "eta", "gram", "query"), expected, got):
    scale = np.max(np.abs(e))
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-10 * scale, err_msg=name)


def test_shared_weights_get_the_sum_of_the_layer_gradients(x64):
  """A looped model broadcasts one (P, Q) to every loop; its gradient sums the loops'."""
  keys = jax.random.split(jax.random.key(4), 4)
  dim, batch, n, loops = 3, 5, 6, 4
  x = jax.random.normal(keys[0], (batch, dim, n))
  gram_DxDxB = jnp.moveaxis(jnp.einsum("bin,bjn->bij", x, x), 0, -1)
  query_DxB = jax.random.normal(keys[1], (dim, batch))
  p = 0.3 * jax.random.normal(keys[2], (dim, dim))
  q = 0.3 * jax.random.normal(keys[3], (dim, dim))

  def loss(p, q):
    stack = lambda a: jnp.broadcast_to(a, (loops, dim, dim))
    preds = gram_forward.gram_predictions(stack(p), stack(q), jnp.full((loops,), 0.8),
                                          gram_DxDxB, query_DxB, n)
    return jnp.sum(preds[-1] ** 2)

  def ref(p, q):
    stack = lambda a: jnp.broadcast_to(a, (loops, dim, dim))
    preds = _reference_preds(stack(p), stack(q), jnp.full((loops,), 0.8),
                             jnp.moveaxis(gram_DxDxB, -1, 0), query_DxB.T, n)
    return jnp.sum(preds[-1] ** 2)

  grads = [jax.jit(jax.grad(f, argnums=(0, 1)))(p, q) for f in (loss, ref)]
  for g, e in zip(*grads):
    np.testing.assert_allclose(g, e, rtol=1e-10)


@pytest.mark.parametrize("kind", ["layered", "looped"])
@pytest.mark.parametrize("parametrization", ["full", "preconditioner", "gdpp", "fixed"])
def test_training_loss_and_gradient_equal_the_token_path(x64, kind, parametrization):
  """What a training step uses, mc_loss and its gradient, on one token-level batch: the Gram path
  (to_gram + the hand-written reverse mode) equals autodiff of the token path (1e-9)."""
  cfg = models.ModelConfig(d=3, num_layers=3, kind=kind, parametrization=parametrization,
                           eta=0.9, init_scale=0.3)
  params = models.init_params(jax.random.key(5), cfg)
  task = tasks.make_task(jnp.diag(jnp.array([1.0, 0.5, 2.0])), 6, noise_std=0.2)
  batch = tasks.sample_tasks(jax.random.key(6), task, 8)

  def value_and_grad(forward):
    return jax.value_and_grad(lambda p: losses.mc_loss(p, cfg, batch, forward=forward))(params)

  (loss_g, grads_g), (loss_t, grads_t) = value_and_grad("gram"), value_and_grad("tokens")
  np.testing.assert_allclose(loss_g, loss_t, rtol=1e-9)
  for name in grads_t:
    np.testing.assert_allclose(grads_g[name], grads_t[name], rtol=1e-9, atol=1e-12,
                               err_msg=name)
