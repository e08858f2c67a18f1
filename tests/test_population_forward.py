"""looped_icl.population_forward: the hand-written reverse mode equals autodiff of a reference.

The reference is SPEC section 4's recursion written with batch-first einsums
(M_{l+1} = (I - K_l S) M_l, N_{l+1} = (I - K_l S) N_l + K_l, loss_l = tr(Sigma_x M Sigma_w M^T)
+ sigma^2/n tr(Sigma_x N S N^T) + sigma^2) and differentiated by JAX; every input's cotangent is
compared (x64, 1e-10 relative), for shared and per-sample K.
"""

import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import losses
from looped_icl import models
from looped_icl import population_forward
from looped_icl import tasks


def _reference_losses(k_LxSxDxD, s_SxDxD, sigma_x, sigma_w, noise_var, n):
  eye = jnp.eye(s_SxDxD.shape[-1])
  m = -jnp.broadcast_to(eye, s_SxDxD.shape)
  nn = jnp.zeros_like(m)
  out = []
  for k in k_LxSxDxD:
    t = eye[None] - jnp.einsum("bij,bjk->bik", k, s_SxDxD)
    m = jnp.einsum("bij,bjk->bik", t, m)
    nn = jnp.einsum("bij,bjk->bik", t, nn) + k
    signal = jnp.einsum("ij,bjk,kl,bil->b", sigma_x, m, sigma_w, m)
    noise = jnp.einsum("ij,bjk,bkl,bil->b", sigma_x, nn, s_SxDxD, nn)
    out.append(signal + noise_var / n * noise + noise_var)
  return jnp.stack(out)


def _spd(key, d):
  a = jax.random.normal(key, (d, d))
  return a @ a.T / d + 0.5 * jnp.eye(d)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_vjp_of_every_input_equals_autodiff(x64, shared, num_layers):
  keys = jax.random.split(jax.random.key(5), 7)
  d, samples, n = 4, 9, 7
  x = jax.random.normal(keys[0], (samples, n, d))
  s = jnp.einsum("bni,bnj->bij", x, x) / n
  sigma_x, sigma_w = _spd(keys[1], d), _spd(keys[2], d)
  k = 0.3 * jax.random.normal(keys[3], (num_layers, d, d, 1 if shared else samples))
  noise_var = jnp.asarray(0.3)
  cot_LxS = jax.random.normal(keys[4], (num_layers, samples))

  def ref(k, s, sigma_x, sigma_w, noise_var):
    k_LxSxDxD = jnp.broadcast_to(jnp.moveaxis(k, -1, 1), (num_layers, samples, d, d))
    return jnp.sum(_reference_losses(k_LxSxDxD, s, sigma_x, sigma_w, noise_var, n) * cot_LxS)

  def fast(k, s, sigma_x, sigma_w, noise_var):
    losses_LxS = population_forward.population_losses(k, jnp.moveaxis(s, 0, -1), sigma_x,
                                                      sigma_w, noise_var, n)
    return jnp.sum(losses_LxS * cot_LxS)

  args = (k, s, sigma_x, sigma_w, noise_var)
  np.testing.assert_allclose(fast(*args), ref(*args), rtol=1e-12)
  expected = jax.jit(jax.grad(ref, argnums=range(5)))(*args)
  got = jax.jit(jax.grad(fast, argnums=range(5)))(*args)
  for name, e, g in zip(("k", "s", "sigma_x", "sigma_w", "noise_var"), expected, got):
    assert g.shape == e.shape, name
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-10 * np.max(np.abs(e)), err_msg=name)


@pytest.mark.parametrize("parametrization", ["preconditioner", "gdpp"])
def test_population_hessian_equals_the_reference_hessian(x64, parametrization):
  """Forward-over-reverse (jax.hessian) still works through the custom reverse mode."""
  d, n = 3, 6
  task = tasks.make_task(_spd(jax.random.key(1), d), n, noise_std=0.4)
  cfg = models.ModelConfig(d=d, num_layers=2, kind="layered", parametrization=parametrization)
  params = models.init_params(jax.random.key(2), cfg)
  s = tasks.sample_empirical_covariance(jax.random.key(3), task, 5)
  flat, unravel = flatten_util.ravel_pytree(params)

  def fast(x):
    return losses.population_loss(unravel(x), cfg, task, s)

  def ref(x):
    a, b, eta = losses._family_weights(unravel(x), cfg, None)   # pylint: disable=protected-access
    a_eff = losses.effective_preconditioners(unravel(x), cfg, s) if b is not None else (
        jnp.broadcast_to(a[:, None], (a.shape[0],) + s.shape))
    if b is not None:
      a_eff = jnp.moveaxis(a_eff, 1, 0)
    k = eta[:, None, None, None] * jnp.swapaxes(a_eff, -1, -2)
    return jnp.mean(_reference_losses(k, s, task.cov, task.weight_cov, task.noise_std**2, n)[-1])

  np.testing.assert_allclose(jax.jit(fast)(flat), jax.jit(ref)(flat), rtol=1e-12)
  expected = jax.jit(jax.hessian(ref))(flat)
  np.testing.assert_allclose(jax.jit(jax.hessian(fast))(flat), expected, rtol=0,
                             atol=1e-9 * np.max(np.abs(expected)))
