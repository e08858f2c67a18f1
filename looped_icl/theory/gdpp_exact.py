"""The exact population loss of isotropic GD++, its gradient and its local minima (Ahn et al. §5).

With Sigma = I, w* ~ N(0, I) and no noise (or any Sigma under w* ~ N(0, Sigma^-1), by whitening:
A_l = a_l Sigma^-1, B_l = b_l I), GD++ with A_l = a_l I, B_l = b_l I has per-S loss tr(R(S)) for a
polynomial R of degree 2 (3^L - 1) / 2 in S whose coefficients are polynomials in the scales
(:func:`looped_icl.wishart.isotropic_loss_polynomials`; degree 26 at L = 3). Its expectation over
S = X^T X / n is a finite sum of Wishart trace moments E tr(S^k), computed exactly
(:func:`looped_icl.wishart.isotropic_losses`, rational arithmetic). So the population loss of this
family needs no sampling: the Monte Carlo estimators, whose means are carried by rare S with a
large lambda_max here (tail indices above 1), are checked against it rather than trusted.

The gradient is a central difference in exact rational arithmetic with step 2^-30: the loss is a
polynomial in each scale, so the truncation error is h^2 f''' / 6 + O(h^4), below float64
rounding at these scales (tests: the one-layer loss's derivative in closed form). The minimiser is
BFGS on the exact loss and gradient, float64 iterates.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np
import scipy.optimize

from looped_icl import wishart

STEP = Fraction(1, 2**30)


def _loss(theta: Sequence[Fraction], num_layers: int, n: int, d: int) -> Fraction:
  a, b = list(theta[:num_layers]), list(theta[num_layers:]) + [Fraction(0)]
  return wishart.isotropic_losses([1] * num_layers, n, d, gdpp_ab=list(zip(a, b)))[-1]


def _exact(theta) -> list[Fraction]:
  return [Fraction(float(x)) for x in np.asarray(theta, np.float64).ravel()]


def _layers(theta) -> int:
  size = np.asarray(theta).size
  if size % 2 != 1:
    raise ValueError(f"theta must be (a_0..a_{{L-1}}, b_0..b_{{L-2}}), 2L - 1 scales, got {size}")
  return (size + 1) // 2


def exact_loss(theta, n: int, d: int) -> float:
  """The population loss of isotropic GD++ at theta = (a_0..a_{L-1}, b_0..b_{L-2}), exactly (the
  float theta converted exactly; the result rounded once to float)."""
  return float(_loss(_exact(theta), _layers(theta), n, d))


def exact_gradient(theta, n: int, d: int) -> np.ndarray:
  """d loss / d theta, (2L - 1,) float64 (exact central differences, module doc)."""
  num_layers, base = _layers(theta), _exact(theta)
  grad = []
  for k in range(len(base)):
    up, down = list(base), list(base)
    up[k] += STEP
    down[k] -= STEP
    grad.append(float((_loss(up, num_layers, n, d) - _loss(down, num_layers, n, d)) / (2 * STEP)))
  return np.asarray(grad)


def exact_minimum(theta0, n: int, d: int, *, gtol: float = 1e-10, max_iters: int = 500) -> dict:
  """The local minimum of the exact loss that BFGS reaches from ``theta0``.

  Returns:
    {"theta", "loss", "max_abs_grad" (at the result), "iterations", "start", "start_loss"}.
  """
  res = scipy.optimize.minimize(lambda th: exact_loss(th, n, d), np.asarray(theta0, np.float64),
                                jac=lambda th: exact_gradient(th, n, d), method="BFGS",
                                options={"gtol": gtol, "maxiter": max_iters})
  # res.jac is exact_gradient at res.x (BFGS's last gradient evaluation), not recomputed.
  return {"theta": np.asarray(res.x), "loss": float(res.fun),
          "max_abs_grad": float(np.max(np.abs(res.jac))),
          "iterations": int(res.nit), "start": np.asarray(theta0, np.float64),
          "start_loss": exact_loss(theta0, n, d)}


__all__ = ["exact_gradient", "exact_loss", "exact_minimum"]
