"""Exact Wishart moments and the exact isotropic population loss (the estimators' test oracle).

**Moments.** For W ~ Wishart_d(n, I) (W = X^T X, X an n x d matrix of i.i.d. N(0, 1), any n >= 1)
write p_lambda(W) = prod_j tr(W^lambda_j) for a multiset lambda of positive integers. Gaussian
integration by parts, E[X_ai F(X)] = E[dF / dX_ai], applied to
tr(W^k) G = sum_ai X_ai (X W^(k-1))_ai G with G = p_mu(W) gives the closed recursion (tr W^0 = d)

  E[tr(W^k) p_mu] = (n + k - 1) E[tr(W^(k-1)) p_mu]
                    + sum_{r=0}^{k-2} E[tr(W^(r+1)) tr(W^(k-2-r)) p_mu]
                    + sum_{j} 2 mu_j E[tr(W^(k + mu_j - 1)) p_(mu - mu_j)],

(the three terms: d(X W^m)_ai / dX_ai summed is n tr W^m + m tr W^m + sum_r tr W^(r+1) tr W^(m-1-r),
and d tr(W^m) / dX_ai = 2 m (W^(m-1) x_a)_i). Every term has total degree one less, so memoised
integer arithmetic gives E p_lambda exactly (Python integers, no rounding) for any n, d. Checks:
E tr W = nd, E tr W^2 = nd(n + d + 1), and for d = 1 E W^k = n (n + 2) ... (n + 2k - 2).

**Isotropic losses.** With Sigma = I and w* ~ N(0, I) (or, by whitening, A_l = c_l Sigma^-1 under
w* ~ N(0, Sigma^-1)), every matrix of the population loss's recursion (SPEC section 4) is a
polynomial in S = W / n: K_l = k_l(S), M_{l+1} = (1 - k_l(x) x) M_l, N_{l+1} = (1 - k_l(x) x) N_l
+ k_l(x), M_0 = -1, N_0 = 0, and loss_l = E tr(M_{l+1}(S)^2) + sigma^2 / n E tr(N_{l+1}(S)^2 S) +
sigma^2. For preconditioned GD k_l = eta_l c_l is a constant; for GD++ with A_l = a_l I and
B_l = b_l I the covariate transform C_l is a polynomial too (C_0 = 1, C_{l+1} = (1 - eta_l a_l
b_l C_l^2 x) C_l, k_l = eta_l a_l C_l^2). The loss is then a rational-coefficient polynomial in
the parameters and E tr(S^k); it is evaluated in exact rational arithmetic (``fractions``), so the
alternating sums of large moments lose nothing.

**General matrices** (:func:`general_losses`, L <= 2): for any K_l, Sigma, Sigma_w and noise,
the recursion is expanded into words in S and each E tr(F_1 S ... F_k S) is computed exactly by
Isserlis' theorem over the examples (:func:`expected_trace_word`); it equals the isotropic
recursion and the one-layer closed form :func:`one_layer_loss` to rounding (tests).
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction
from typing import Sequence

import numpy as np

MAX_DEGREE = 40


def _canonical(parts) -> tuple[int, ...]:
  return tuple(sorted((p for p in parts if p > 0), reverse=True))


@functools.lru_cache(maxsize=None)
def _moment(parts: tuple[int, ...], n: int, d: int) -> int:
  """E prod_j tr(W^parts_j), W ~ Wishart_d(n, I); ``parts`` canonical (positive, descending)."""
  if not parts:
    return 1
  k, rest = parts[0], parts[1:]

  def m(extra):
    zeros = sum(1 for p in extra if p == 0)
    return d**zeros * _moment(_canonical(rest + tuple(extra)), n, d)

  total = (n + k - 1) * m((k - 1,))
  total += sum(m((r + 1, k - 2 - r)) for r in range(k - 1))
  for j, mu in enumerate(rest):
    others = rest[:j] + rest[j + 1:]
    total += 2 * mu * _moment(_canonical(others + (k + mu - 1,)), n, d)
  return total


def trace_moment(k: int, n: int, d: int) -> int:
  """E tr(W^k) for W ~ Wishart_d(n, I), exactly (an integer)."""
  return joint_moment((k,), n, d)


def joint_moment(parts: Sequence[int], n: int, d: int) -> int:
  """E prod_j tr(W^parts_j) for W ~ Wishart_d(n, I), exactly; parts >= 0 (tr W^0 = d)."""
  _check_sizes(n, d)
  parts = tuple(int(p) for p in parts)
  if any(p < 0 for p in parts):
    raise ValueError(f"parts must be >= 0, got {parts}")
  if sum(parts) > MAX_DEGREE:
    raise ValueError(f"total degree must be <= {MAX_DEGREE}, got {sum(parts)}")
  zeros = sum(1 for p in parts if p == 0)
  return d**zeros * _moment(_canonical(parts), n, d)


def _check_sizes(n: int, d: int) -> None:
  for name, value in (("n", n), ("d", d)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# Polynomials in x as lists of Fraction coefficients (index = power).

def _mul(p, q):
  out = [Fraction(0)] * (len(p) + len(q) - 1)
  for i, a in enumerate(p):
    if a:
      for j, b in enumerate(q):
        out[i + j] += a * b
  return out


def _add(p, q):
  out = [Fraction(0)] * max(len(p), len(q))
  for i, a in enumerate(p):
    out[i] += a
  for i, b in enumerate(q):
    out[i] += b
  return out


def _scale(p, c):
  return [c * a for a in p]


def _shift(p):
  """x p(x)."""
  return [Fraction(0)] + list(p)


def expected_trace_poly(coeffs, n: int, d: int) -> Fraction:
  """E tr(p(S)) for S = W / n, W ~ Wishart_d(n, I), p(x) = sum_k coeffs[k] x^k, exactly."""
  _check_sizes(n, d)
  if len(coeffs) - 1 > MAX_DEGREE:
    raise ValueError(f"polynomial degree must be <= {MAX_DEGREE}, got {len(coeffs) - 1}")
  total = Fraction(0)
  for k, c in enumerate(coeffs):
    if c:
      total += Fraction(c) * Fraction(trace_moment(k, n, d) if k else d, n**k)
  return total


def isotropic_loss_polynomials(k_layers: Sequence, n: int, noise_var=0, *,
                               gdpp_ab: Sequence | None = None) -> list[list[Fraction]]:
  """Per layer, the polynomial R_l with per-S loss tr(R_l(S)) + sigma^2 (Sigma = I, w* ~ N(0, I)):
  R_l = M_{l+1}^2 + sigma^2 / n x N_{l+1}^2 (module doc; arguments as :func:`isotropic_losses`)."""
  noise_var = Fraction(noise_var)
  one = [Fraction(1)]
  m_poly, n_poly, c_poly = [Fraction(-1)], [Fraction(0)], one
  out = []
  for l, k in enumerate(k_layers):
    k = Fraction(k)
    if gdpp_ab is None:
      k_poly = [k]
    else:
      a, b = (Fraction(v) for v in gdpp_ab[l])
      c2 = _mul(c_poly, c_poly)
      k_poly = _scale(c2, k * a)
      c_poly = _mul(_add(one, _scale(_shift(c2), -k * a * b)), c_poly)
    t_poly = _add(one, _scale(_shift(k_poly), -1))       # 1 - k(x) x
    m_poly = _mul(t_poly, m_poly)
    n_poly = _add(_mul(t_poly, n_poly), k_poly)
    out.append(_add(_mul(m_poly, m_poly), _scale(_shift(_mul(n_poly, n_poly)), noise_var / n)))
  return out


def isotropic_losses(k_layers: Sequence, n: int, d: int, noise_var=0, *,
                     gdpp_ab: Sequence | None = None) -> list[Fraction]:
  """Exact population loss after each layer, Sigma = I, w* ~ N(0, I) (module doc).

  Args:
    k_layers: k_l = eta_l c_l per layer (preconditioned GD with A_l = c_l I); for GD++, eta_l.
    n, d: examples and dimension; noise_var: sigma^2.
    gdpp_ab: for GD++, the (a_l, b_l) of A_l = a_l I, B_l = b_l I per layer.

  Floats are converted exactly (``Fraction(float)``), so the result is the exact loss of the
  float parameters; convert with ``float``.
  """
  _check_sizes(n, d)
  polys = isotropic_loss_polynomials(k_layers, n, noise_var, gdpp_ab=gdpp_ab)
  return [expected_trace_poly(r, n, d) + Fraction(noise_var) for r in polys]


def trace_poly_second_moment(coeffs, n: int, d: int, cov_scale=1) -> Fraction:
  """E[tr(p(S))^2] for S = W / n, W ~ Wishart_d(n, cov_scale I), exactly."""
  _check_sizes(n, d)
  if 2 * (len(coeffs) - 1) > MAX_DEGREE:
    raise ValueError(f"polynomial degree must be <= {MAX_DEGREE // 2}, got {len(coeffs) - 1}")
  scale = Fraction(cov_scale) / n
  total = Fraction(0)
  for i, a in enumerate(coeffs):
    for j, b in enumerate(coeffs):
      if a and b:
        total += Fraction(a) * Fraction(b) * joint_moment((i, j), n, d) * scale**(i + j)
  return total


def isotropic_loss_variance(k_layers: Sequence, n: int, d: int, noise_var=0, *,
                            proposal_scale=1) -> Fraction:
  """Exact per-sample variance of the last layer's loss estimator, Var_q(w f), for S drawn with
  covariance ``proposal_scale`` s times Sigma (s = 1: plain sampling, Var_p f).

  E_q[(w f)^2] = E_p[w f^2] with w = s^(nd/2) exp(-(n/2)(1 - 1/s) tr S), and tilting a Wishart
  by exp(-beta tr S) rescales its covariance: E_p[w f^2] = (s / (2 - 1/s))^(nd/2) E_{c I}[f^2]
  with c = 1 / (2 - 1/s) (needs s > 1/2). The constant sigma^2 of f is included.
  """
  s = Fraction(proposal_scale)
  if s <= Fraction(1, 2):
    raise ValueError(f"proposal_scale must be > 1/2, got {proposal_scale!r}")
  r = isotropic_loss_polynomials(k_layers, n, noise_var)[-1]
  r = _add(r, [Fraction(noise_var) / d])       # tr(r + sigma^2 / d) = tr r + sigma^2
  mean = expected_trace_poly(r, n, d)
  c = 1 / (2 - 1 / s)
  factor = (s * c) ** (n * d // 2) * ((s * c) ** Fraction(1, 2) if n * d % 2 else 1)
  if n * d % 2:
    return float(factor) * float(trace_poly_second_moment(r, n, d, c)) - float(mean)**2
  return factor * trace_poly_second_moment(r, n, d, c) - mean**2


def one_layer_loss(k_DxD, cov_DxD, weight_cov_DxD, n: int, noise_var: float = 0.0) -> float:
  """Exact population loss of one layer with general K = eta A^T and general Sigma (float64).

  M_1 = K S - I, so with E S = Sigma and E[S B S] = Sigma B Sigma + (Sigma B^T Sigma +
  tr(B Sigma) Sigma) / n (Wishart second moments, B = Sigma_w symmetric):
    loss = tr(Sigma Sigma_w) - 2 tr(Sigma K Sigma Sigma_w) + tr(Sigma K E[S Sigma_w S] K^T)
           + sigma^2 / n tr(Sigma K Sigma K^T) + sigma^2.
  """
  k, cov, sw = (np.asarray(m, np.float64) for m in (k_DxD, cov_DxD, weight_cov_DxD))
  e_sbs = cov @ sw @ cov + (cov @ sw.T @ cov + np.trace(sw @ cov) * cov) / n
  return float(np.trace(cov @ sw) - 2 * np.trace(cov @ k @ cov @ sw)
               + np.trace(cov @ k @ e_sbs @ k.T) + noise_var / n * np.trace(cov @ k @ cov @ k.T)
               + noise_var)


# General matrices: E tr(F_1 S F_2 S ... F_k S) by Isserlis' theorem over the examples.

MAX_GENERAL_DEGREE = 4


def _set_partitions(items):
  if not items:
    yield []
    return
  first, rest = items[0], items[1:]
  for partition in _set_partitions(rest):
    for i in range(len(partition)):
      yield partition[:i] + [[first] + partition[i]] + partition[i + 1:]
    yield [[first]] + partition


def _perfect_matchings(items):
  if not items:
    yield []
    return
  first = items[0]
  for i in range(1, len(items)):
    for rest in _perfect_matchings(items[1:i] + items[i + 1:]):
      yield [(first, items[i])] + rest


def expected_trace_word(fs, cov, n: int) -> float:
  """E tr(F_1 S F_2 S ... F_k S) for S = X^T X / n, rows of X ~ N(0, Sigma) (exact, float64).

  With x_a = C z_a (C C^T = Sigma) the trace is n^-k sum_{a_1..a_k} prod_i x_{a_i}^T F_{i+1}
  x_{a_{i+1}} (cyclic). Indices that coincide form a set partition pi of {1..k}, realised by
  n (n - 1) ... (n - |pi| + 1) assignments; given pi, Isserlis' theorem pairs the 2k occurrences
  of the z's within each block, and each pairing contracts the matrices G_i = C^T F_{i+1} C
  into a product of traces (an einsum). k <= MAX_GENERAL_DEGREE.
  """
  k = len(fs)
  if k > MAX_GENERAL_DEGREE:
    raise ValueError(f"the word's degree in S must be <= {MAX_GENERAL_DEGREE}, got {k}")
  chol = np.linalg.cholesky(np.asarray(cov, np.float64))
  g = [chol.T @ np.asarray(fs[(i + 1) % k], np.float64) @ chol for i in range(k)]
  # Occurrence 2i: the left vector of form i (vector i); 2i + 1: its right vector (vector i+1).
  vector_of = [i if j == 0 else (i + 1) % k for i in range(k) for j in (0, 1)]
  total = 0.0
  for partition in _set_partitions(list(range(k))):
    count = float(np.prod([n - j for j in range(len(partition))]))
    if count == 0:
      continue
    per_block = [list(_perfect_matchings([o for o in range(2 * k) if vector_of[o] in block]))
                 for block in partition]
    for matchings in itertools.product(*per_block):
      letter = list(range(2 * k))
      for matching in matchings:
        for a, b in matching:
          letter[b] = letter[a]
      subscripts = ",".join(chr(97 + letter[2 * i]) + chr(97 + letter[2 * i + 1])
                            for i in range(k))
      total += count * float(np.einsum(subscripts + "->", *g))
  return total / n**k


def _expected_trace_tokens(tokens, cov, n: int) -> float:
  """E tr of a word of matrices and 'S' tokens (consecutive matrices multiplied)."""
  d = np.asarray(cov).shape[0]
  if not any(isinstance(t, str) for t in tokens):
    out = np.eye(d)
    for t in tokens:
      out = out @ t
    return float(np.trace(out))
  last = max(i for i, t in enumerate(tokens) if isinstance(t, str))
  tokens = tokens[last + 1:] + tokens[:last + 1]       # rotate: the word ends with S
  fs, run = [], np.eye(d)
  for t in tokens:
    if isinstance(t, str):
      fs.append(run)
      run = np.eye(d)
    else:
      run = run @ t
  return expected_trace_word(fs, cov, n)


def _transpose_word(tokens):
  return [t if isinstance(t, str) else np.asarray(t).T for t in reversed(tokens)]


def general_losses(k_layers, cov, weight_cov, n: int, noise_var: float = 0.0) -> list[float]:
  """Exact population loss after each layer for general K_l = eta_l A_l^T and general Sigma,
  Sigma_w, noise (layered; a looped model repeats its K). The recursion of SPEC section 4 is
  expanded into words in S (M_{l+1} = M_l - K_l S M_l, N_{l+1} = N_l - K_l S N_l + K_l) and each
  E tr(Sigma M Sigma_w M^T), E tr(Sigma N S N^T) by :func:`expected_trace_word`; L <= 2."""
  if len(k_layers) > MAX_GENERAL_DEGREE // 2:
    raise ValueError(f"general_losses needs L <= {MAX_GENERAL_DEGREE // 2}, got {len(k_layers)}")
  cov, weight_cov = np.asarray(cov, np.float64), np.asarray(weight_cov, np.float64)
  m_words, n_words, out = [(-1.0, [])], [], []
  for k in k_layers:
    k = np.asarray(k, np.float64)
    m_words = m_words + [(-c, [k, "S"] + w) for c, w in m_words]
    n_words = n_words + [(-c, [k, "S"] + w) for c, w in n_words] + [(1.0, [k])]
    loss = sum(c1 * c2 * _expected_trace_tokens([cov] + w1 + [weight_cov] + _transpose_word(w2),
                                                 cov, n)
               for c1, w1 in m_words for c2, w2 in m_words)
    if noise_var:
      loss += noise_var / n * sum(
          c1 * c2 * _expected_trace_tokens([cov] + w1 + ["S"] + _transpose_word(w2), cov, n)
          for c1, w1 in n_words for c2, w2 in n_words)
    out.append(float(loss + noise_var))
  return out
