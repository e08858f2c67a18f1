"""Tests for looped_icl.theory.gatmiry: the isotropic-ray loss f = d (1 - a)^{2L} and its
gradient flow, computed independently (finite differences, an explicit Euler integration)."""

import math

import numpy as np
import pytest

from looped_icl import theory


@pytest.mark.parametrize("num_loops", [1, 2, 3, 4])
def test_gradient_dominance_is_tight_on_the_isotropic_ray(num_loops):
  """||grad f||^2 = mu f^p on A = a I for f(A) = tr((I - A)^{2L}) (Sigma = S = I), with the
  gradient by central finite differences over all d^2 entries."""
  d = 5
  p = theory.gradient_dominance_exponent(num_loops)
  mu = theory.isotropic_gradient_dominance_mu(num_loops, d)
  assert p == pytest.approx((2 * num_loops - 1) / num_loops)

  def f(a_DxD):
    m = np.linalg.matrix_power(np.eye(d) - a_DxD, 2 * num_loops)
    return np.trace(m)

  for a in (0.3, 0.7):
    base, h = a * np.eye(d), 1e-6
    grad = np.zeros((d, d))
    for i in range(d):
      for j in range(d):
        step = np.zeros((d, d))
        step[i, j] = h
        grad[i, j] = (f(base + step) - f(base - step)) / (2 * h)
    assert np.sum(grad**2) == pytest.approx(mu * f(base) ** p, rel=1e-6)


@pytest.mark.parametrize("num_loops", [1, 2, 3])
def test_isotropic_flow_time_matches_euler_integration(num_loops):
  """du/dt = -2L u^{2L-1} from u = 1 (A = 0), integrated with small Euler steps until
  f / f_0 = u^{2L} reaches the gap."""
  gap, dt = 1e-2, 1e-5
  u, t = 1.0, 0.0
  while u ** (2 * num_loops) > gap:
    u -= dt * 2 * num_loops * u ** (2 * num_loops - 1)
    t += dt
  assert theory.isotropic_flow_time(num_loops, gap) == pytest.approx(t, rel=1e-3)


def test_isotropic_flow_time_closed_form_and_validation():
  # u^{-(2L-2)} = 1 + 4 L (L-1) t and f/f0 = u^{2L}: inverse of the closed form.
  for num_loops in (2, 3, 4):
    t = theory.isotropic_flow_time(num_loops, 1e-4)
    u = (1 + 4 * num_loops * (num_loops - 1) * t) ** (-1 / (2 * num_loops - 2))
    assert u ** (2 * num_loops) == pytest.approx(1e-4, rel=1e-9)
  assert theory.isotropic_flow_time(1, np.exp(-4.0)) == pytest.approx(1.0)
  assert theory.isotropic_flow_time(3, 1.0) == 0.0
  with pytest.raises(ValueError, match="gap"):
    theory.isotropic_flow_time(2, 0.0)
  with pytest.raises(ValueError, match="num_loops"):
    theory.gradient_dominance_exponent(0)
  assert math.isclose(theory.isotropic_gradient_dominance_mu(1, 7), 4.0)
