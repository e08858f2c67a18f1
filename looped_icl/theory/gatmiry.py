"""Closed forms of Gatmiry et al. 2024 for looped models: the gradient-dominance exponent of
the L-loop in-context loss and the isotropic gradient flow it describes (SPEC §5).

Claim: the loss f(A) of the looped preconditioner model with L loops satisfies
||grad_A f||^2 >= mu (f - f*)^{(2L-1)/L}; the exponent exceeds 1 for L >= 2 (a degenerate
optimum), so gradient flow converges polynomially, not linearly.

Why the exponent is (2L-1)/L, exactly, in the isotropic scalar case: with Sigma = I, w* ~ N(0, I)
and S = X^T X / n = Sigma exactly (n -> infinity), on the ray A = a I the loss is
f = d (1 - a)^{2L} (f* = 0) and df/dA = -2L (1 - a)^{2L-1} I, so
  ||grad f||^2 = 4 L^2 d (1 - a)^{4L-2} = mu f^{(2L-1)/L},  mu = 4 L^2 d^{(1-L)/L}.
"""

from __future__ import annotations

import math

from looped_icl import validation


def gradient_dominance_exponent(num_loops: int) -> float:
  """(2L - 1) / L, the exponent of f - f* in the gradient-dominance inequality."""
  num_loops = validation.positive_int("num_loops", num_loops)
  return (2 * num_loops - 1) / num_loops


def isotropic_gradient_dominance_mu(num_loops: int, d: int) -> float:
  """mu of the isotropic n -> infinity case, 4 L^2 d^{(1-L)/L} (the inequality is an equality)."""
  num_loops = validation.positive_int("num_loops", num_loops)
  d = validation.positive_int("d", d)
  return 4 * num_loops**2 * d ** ((1 - num_loops) / num_loops)


def isotropic_flow_time(num_loops: int, gap: float) -> float:
  """Gradient-flow time for f / f_0 to fall to ``gap`` on the isotropic ray (Sigma = S = I), from
  A = 0.

  u = 1 - a obeys du/dt = -2L u^{2L-1}: u = exp(-2t) for L = 1, otherwise
  u^{-(2L-2)} = 1 + 4L(L-1) t; and f / f_0 = u^{2L}.
  """
  num_loops = validation.positive_int("num_loops", num_loops)
  gap = validation.in_range("gap", gap, 0.0, 1.0, low_open=True)
  if num_loops == 1:
    return math.log(1 / gap) / 4
  return (gap ** (-(num_loops - 1) / num_loops) - 1) / (4 * num_loops * (num_loops - 1))


__all__ = ["gradient_dominance_exponent", "isotropic_gradient_dominance_mu",
           "isotropic_flow_time"]
