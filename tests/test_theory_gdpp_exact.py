"""The exact isotropic GD++ population loss, gradient and minimiser against independent
computations: the one-layer closed form, Monte Carlo over plain draws of S, the gradient at a
minimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import estimators
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import wishart
from looped_icl.reproduce import ahn_gdpp
from looped_icl.theory import gdpp_exact

N, D = 20, 5


def test_one_layer_loss_and_derivative_equal_the_closed_form():
  # L = 1: f(a) = E tr((I - a S)^2) = d - 2 a E tr S + a^2 E tr S^2, E tr S = d,
  # E tr S^2 = d (n + d + 1) / n.
  for a in (0.1, 0.7, 2.5):
    m2 = D * (N + D + 1) / N
    np.testing.assert_allclose(gdpp_exact.exact_loss([a], N, D), D - 2 * a * D + a**2 * m2,
                               rtol=1e-14)
    np.testing.assert_allclose(gdpp_exact.exact_gradient([a], N, D), [-2 * D + 2 * a * m2],
                               rtol=1e-12)


def test_b_zero_is_plain_gd():
  eta = [0.3, 0.5, 0.2]
  np.testing.assert_allclose(gdpp_exact.exact_loss(eta + [0.0, 0.0], N, D),
                             float(wishart.isotropic_losses(eta, N, D)[-1]), rtol=1e-15)


def test_loss_and_gradient_equal_monte_carlo_over_plain_draws(x64):
  # A light-tailed point (small b, moderate steps): plain draws estimate the mean and the gradient
  # with reliable standard errors; each within 4 of them.
  theta = jnp.array([0.5, 0.6, 0.2])   # L = 2: (a_0, a_1, b_0)
  task = tasks_lib.make_task(jnp.eye(D, dtype=jnp.float64), N)
  sample = ahn_gdpp.sample_eigenvalues(jax.random.key(3), task, 40000, estimators.PLAIN)

  def per_sample(th):
    return theory.gdpp_isotropic_loss_samples(th[:2], th[2:], sample.eigs)

  loss = estimators.estimate(np.asarray(per_sample(theta)))
  assert loss["trusted"], loss
  assert abs(gdpp_exact.exact_loss(theta, N, D) - loss["value"]) < 4 * loss["stderr"]
  grads_SxK = np.asarray(jax.jacfwd(per_sample)(theta))
  mean_K, se_K = estimators.mean_and_stderrs(grads_SxK)
  np.testing.assert_array_less(np.abs(gdpp_exact.exact_gradient(theta, N, D) - mean_K),
                               4 * se_K)


def test_exact_minimum_is_a_local_minimum():
  found = gdpp_exact.exact_minimum([0.6, 1.2, 0.5], N, D)
  assert found["max_abs_grad"] < 1e-8
  assert found["loss"] < found["start_loss"]
  for k in range(3):
    for step in (-1e-3, 1e-3):
      moved = found["theta"].copy()
      moved[k] += step
      assert gdpp_exact.exact_loss(moved, N, D) > found["loss"]


def test_theta_must_have_2l_minus_1_scales():
  with pytest.raises(ValueError, match="2L - 1 scales"):
    gdpp_exact.exact_loss([0.1, 0.2], N, D)
