"""The exact Wishart moments and isotropic losses (looped_icl.wishart) against independent facts.

* Closed forms: E tr W = nd, E tr W^2 = nd(n + d + 1), E tr W^3 = nd(n^2 + d^2 + 3nd + 3n + 3d + 4)
  (Letac and Massam 2004); for d = 1, W ~ chi^2_n and E W^k = n(n + 2)...(n + 2k - 2); tr W ~
  chi^2_{nd}, so the joint moments E (tr W)^k = nd(nd + 2)...(nd + 2k - 2).
* Monte Carlo of W = X^T X in NumPy (float64), within 4 standard errors.
* The isotropic loss polynomials against a one-layer closed form derived independently (Wishart
  second moments, general K and Sigma) and against brute-force NumPy Monte Carlo of the
  Rao-Blackwellised loss (the explicit M/N recursion, not the library's kernel).
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from looped_icl import wishart


@pytest.mark.parametrize("n,d", [(1, 1), (5, 3), (20, 4), (7, 10)])
def test_low_moments_match_closed_forms(n, d):
  assert wishart.trace_moment(1, n, d) == n * d
  assert wishart.trace_moment(2, n, d) == n * d * (n + d + 1)
  assert wishart.trace_moment(3, n, d) == n * d * (n * n + d * d + 3 * n * d + 3 * n + 3 * d + 4)


@pytest.mark.parametrize("n", [1, 4, 13])
def test_one_dimensional_moments_are_chi_square_moments(n):
  for k in range(1, 21):
    assert wishart.trace_moment(k, n, 1) == math.prod(n + 2 * i for i in range(k))


@pytest.mark.parametrize("n,d", [(3, 2), (20, 5)])
def test_joint_moments_of_the_trace_are_chi_square_moments(n, d):
  for k in range(1, 11):
    assert wishart.joint_moment((1,) * k, n, d) == math.prod(n * d + 2 * i for i in range(k))
  assert wishart.joint_moment((0, 2), n, d) == d * wishart.trace_moment(2, n, d)


def test_moments_match_monte_carlo():
  rng = np.random.default_rng(0)
  n, d, num = 8, 3, 200_000
  x = rng.standard_normal((num, n, d))
  w = np.einsum("bni,bnj->bij", x, x)
  power = np.broadcast_to(np.eye(d), w.shape)
  traces = {}
  for k in range(1, 6):
    power = power @ w
    traces[k] = np.trace(power, axis1=1, axis2=2)
  for parts in [(1,), (2,), (3,), (4,), (5,), (2, 1), (3, 2), (2, 2)]:
    values = np.prod([traces[p] for p in parts], axis=0)
    mean, se = values.mean(), values.std() / np.sqrt(num)
    assert abs(mean - wishart.joint_moment(parts, n, d)) < 4 * se, parts


def test_bad_arguments_are_one_line_errors():
  with pytest.raises(ValueError, match="^n must be an integer >= 1"):
    wishart.trace_moment(2, 0, 3)
  with pytest.raises(ValueError, match="^parts must be >= 0"):
    wishart.joint_moment((-1,), 3, 3)
  with pytest.raises(ValueError, match="^total degree must be <="):
    wishart.trace_moment(wishart.MAX_DEGREE + 1, 3, 3)


@pytest.mark.parametrize("noise_var", [0.0, 0.3])
def test_one_layer_isotropic_loss_equals_the_general_closed_form(noise_var):
  n, d, c = 12, 4, 0.7
  exact = float(wishart.isotropic_losses([c], n, d, noise_var)[0])
  eye = np.eye(d)
  assert exact == pytest.approx(wishart.one_layer_loss(c * eye, eye, eye, n, noise_var),
                                rel=1e-13)
  # And the expansion by hand: d - 2 c d + c^2 E tr S^2 + sigma^2 / n c^2 d + sigma^2.
  by_hand = (d - 2 * c * d + c * c * d * (n + d + 1) / n + noise_var / n * c * c * d + noise_var)
  assert exact == pytest.approx(by_hand, rel=1e-13)


def _numpy_rb_loss(s_SxDxD, k_layers, noise_var, n, gdpp_ab=None):
  """The Rao-Blackwellised last-layer loss per sample, Sigma = I, by the explicit recursion."""
  num, d = s_SxDxD.shape[:2]
  eye = np.broadcast_to(np.eye(d), s_SxDxD.shape)
  m, nn, c = -eye, np.zeros_like(s_SxDxD), eye
  for l, k in enumerate(k_layers):
    if gdpp_ab is None:
      kk = k * eye
    else:
      a, b = gdpp_ab[l]
      kk = k * a * np.swapaxes(c, 1, 2) @ c
      c = (eye - k * a * b * c @ s_SxDxD @ np.swapaxes(c, 1, 2)) @ c
    t = eye - kk @ s_SxDxD
    m, nn = t @ m, t @ nn + kk
  return (np.einsum("bij,bij->b", m, m)
          + noise_var / n * np.einsum("bij,bjk,bik->b", nn, s_SxDxD, nn) + noise_var)


@pytest.mark.parametrize("k_layers,noise_var,gdpp_ab", [
    ([0.5, 0.5, 0.5], 0.0, None),
    ([0.3, 0.8], 0.25, None),
    ([1.0, 1.0], 0.0, [(0.6, 0.4), (0.5, 0.9)]),
])
def test_isotropic_losses_match_numpy_monte_carlo(k_layers, noise_var, gdpp_ab):
  """n/d = 10: light tails, so plain Monte Carlo is a fair judge (4 standard errors)."""
  rng = np.random.default_rng(1)
  n, d, num = 30, 3, 200_000
  x = rng.standard_normal((num, n, d))
  s = np.einsum("bni,bnj->bij", x, x) / n
  values = _numpy_rb_loss(s, k_layers, noise_var, n, gdpp_ab)
  exact = float(wishart.isotropic_losses(k_layers, n, d, noise_var, gdpp_ab=gdpp_ab)[-1])
  assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(num)


def test_exact_variance_matches_monte_carlo_variance():
  rng = np.random.default_rng(2)
  n, d, num = 30, 3, 400_000
  x = rng.standard_normal((num, n, d))
  s = np.einsum("bni,bnj->bij", x, x) / n
  values = _numpy_rb_loss(s, [0.6, 0.6], 0.1, n)
  var = float(wishart.isotropic_loss_variance([0.6, 0.6], n, d, 0.1))
  # The sample variance's standard error: sqrt((m4 - var^2) / num).
  centred = values - values.mean()
  se = np.sqrt((np.mean(centred**4) - values.var()**2) / num)
  assert abs(values.var() - var) < 4 * se


def test_exact_importance_variance_matches_monte_carlo():
  """Single inflated proposal s = 1.3: Var_q(w f) by its exact tilting formula vs sampling."""
  rng = np.random.default_rng(3)
  n, d, num, scale = 30, 3, 400_000, 1.3
  x = np.sqrt(scale) * rng.standard_normal((num, n, d))
  s = np.einsum("bni,bnj->bij", x, x) / n
  t = np.trace(s, axis1=1, axis2=2)
  w = scale ** (n * d / 2) * np.exp(-(n / 2) * (1 - 1 / scale) * t)
  y = w * _numpy_rb_loss(s, [0.6, 0.6], 0.0, n)
  exact_mean = float(wishart.isotropic_losses([0.6, 0.6], n, d)[-1])
  assert abs(y.mean() - exact_mean) < 4 * y.std() / np.sqrt(num)
  var = float(wishart.isotropic_loss_variance([0.6, 0.6], n, d, proposal_scale=scale))
  centred = y - y.mean()
  se = np.sqrt((np.mean(centred**4) - y.var()**2) / num)
  assert abs(y.var() - var) < 4 * se


def test_exact_arithmetic_survives_cancellation():
  """L = 10 at n/d = 2: the alternating sum has terms ~ 1e13 times the result; exact anyway."""
  losses = wishart.isotropic_losses([Fraction(1, 2)] * 10, 8, 4)
  assert all(isinstance(v, Fraction) for v in losses)
  assert all(v > 0 for v in losses)
  n, d = 8, 4   # layer 1 by hand

  assert losses[0] == d - 2 * Fraction(1, 2) * d + Fraction(1, 4) * d * (n + d + 1) / n


def test_general_losses_equal_the_isotropic_recursion_and_the_one_layer_closed_form():
  """Isserlis over the examples (general matrices) against the integer moment recursion
  (isotropic) and the one-layer Wishart closed form: three derivations, one number."""
  n, d = 12, 4
  eye = np.eye(d)
  np.testing.assert_allclose(
      wishart.general_losses([0.5 * eye, 0.3 * eye], eye, eye, n, 0.25),
      [float(v) for v in wishart.isotropic_losses([0.5, 0.3], n, d, 0.25)], rtol=1e-12)
  rng = np.random.default_rng(0)
  a = 0.5 * eye + 0.2 * rng.standard_normal((d, d))
  u, _ = np.linalg.qr(rng.standard_normal((d, d)))
  cov = (u * np.array([1.0, 0.5, 0.25, 2.0])) @ u.T
  weight_cov = np.linalg.inv(cov)
  assert wishart.general_losses([a.T], cov, weight_cov, n, 0.3)[0] == pytest.approx(
      wishart.one_layer_loss(a.T, cov, weight_cov, n, 0.3), rel=1e-12)


def test_expected_trace_word_matches_monte_carlo():
  rng = np.random.default_rng(5)
  n, d, num = 6, 3, 400_000
  u, _ = np.linalg.qr(rng.standard_normal((d, d)))
  cov = (u * np.array([1.0, 0.5, 2.0])) @ u.T
  fs = [rng.standard_normal((d, d)) for _ in range(4)]
  x = rng.standard_normal((num, n, d)) @ np.linalg.cholesky(cov).T
  s = np.einsum("bni,bnj->bij", x, x) / n
  prod = np.broadcast_to(np.eye(d), s.shape)
  for f in fs:
    prod = prod @ f @ s
  values = np.trace(prod, axis1=1, axis2=2)
  exact = wishart.expected_trace_word(fs, cov, n)
  assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(num)
