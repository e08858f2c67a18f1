"""Tests for looped_icl.theory.chen_closed_form against explicit NumPy GD loops, least squares
and hand-counted bound checks (the regression-side GD on w, and the paper's GD on q)."""

import math

import numpy as np
import pytest

from looped_icl import chen_construction
from looped_icl import tasks
from looped_icl import theory

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout (one set of compilations).


def _batch(seed, num, n, d, noise_std=0.1):
  """NumPy float64 tasks with a non-identity Sigma (diagonal spectrum 1..1/4)."""
  rng = np.random.default_rng(seed)
  scale = np.sqrt(np.geomspace(1.0, 0.25, d))
  x = rng.standard_normal((num, n, d)) * scale
  x_q = rng.standard_normal((num, d)) * scale
  w = rng.standard_normal((num, d))
  y = np.einsum("bni,bi->bn", x, w) + noise_std * rng.standard_normal((num, n))
  return tasks.Tasks(x=x, y=y, x_query=x_q, y_query=np.einsum("bi,bi->b", x_q, w), w=w)


def _explicit(batch, b, num_loops):
  """Explicit GD (eta = 1/lambda_max(S)) on task b: the four distances after t = 0..num_loops."""
  x, y, w_star, x_q = (np.asarray(a[b], np.float64) for a in (batch.x, batch.y, batch.w,
                                                                 batch.x_query))
  n = x.shape[0]
  s = x.T @ x / n
  eta = 1.0 / np.linalg.eigvalsh(s)[-1]
  w_hat = np.linalg.lstsq(x, y, rcond=None)[0]
  w = np.zeros(x.shape[1])
  out = {"s": [], "euclidean": [], "to_w_star": [], "probe": []}
  for t in range(num_loops + 1):
    if t:
      w = w + eta * x.T @ (y - x @ w) / n
    e = w - w_hat
    out["s"].append(np.sqrt(e @ s @ e))
    out["euclidean"].append(np.linalg.norm(e))
    out["to_w_star"].append(np.linalg.norm(w - w_star))
    out["probe"].append(abs((w - w_star) @ x_q))
  return {k: np.asarray(v) for k, v in out.items()}


def test_spectral_quantities_match_least_squares():
  batch = _batch(0, 6, 12, 4)
  spec = theory.chen_spectral(batch)
  for b in range(6):
    x, y = batch.x[b], batch.y[b]
    w_hat = np.linalg.lstsq(x, y, rcond=None)[0]
    evals = np.linalg.eigvalsh(x.T @ x / 12)
    assert spec.kappa_B[b] == pytest.approx(evals[-1] / evals[0], rel=1e-12)
    assert spec.alpha("euclidean")[b] == pytest.approx(np.linalg.norm(w_hat), rel=1e-10)
    assert spec.alpha("s")[b] == pytest.approx(np.sqrt(w_hat @ x.T @ x @ w_hat / 12), rel=1e-10)
    assert spec.ols_error_B[b] == pytest.approx(np.linalg.norm(w_hat - batch.w[b]), rel=1e-8)
    assert spec.probe_norm_B[b] == pytest.approx(np.linalg.norm(batch.x_query[b]), rel=1e-12)
  sub = spec.take(slice(2, 4))
  np.testing.assert_array_equal(sub.lam_BxD, spec.lam_BxD[2:4])


def test_closed_form_distances_match_explicit_gd():
  batch = _batch(1, 5, 10, 4)
  spec = theory.chen_spectral(batch)
  loops = np.arange(0, 31)
  dist = theory.chen_closed_form_distances(spec, loops)
  per_task = np.stack([loops[::3] + b for b in range(5)])         # (B, K) per-task loops
  dist_bk = theory.chen_closed_form_distances(spec, per_task)
  for b in range(5):
    want = _explicit(batch, b, 40)
    for key in ("s", "euclidean", "to_w_star", "probe"):
      np.testing.assert_allclose(dist[key][b], want[key][loops], rtol=1e-8, atol=1e-12)
      np.testing.assert_allclose(dist_bk[key][b], want[key][per_task[b]], rtol=1e-8,
                                 atol=1e-12)
  rel = theory.chen_relative_errors(spec, dist)
  np.testing.assert_allclose(rel["s"][:, 0], 1.0, rtol=1e-12)           # t = 0: error = alpha
  np.testing.assert_allclose(rel["euclidean"][:, 0], 1.0, rtol=1e-12)
  np.testing.assert_allclose(rel["to_w_star"], dist["to_w_star"]
                             / spec.alpha("euclidean")[:, None], rtol=1e-14)
  np.testing.assert_allclose(rel["probe"], dist["probe"] / (
      spec.alpha("euclidean") * np.linalg.norm(batch.x_query, axis=1))[:, None], rtol=1e-12)


def test_transformer_distances_agree_with_closed_form():
  batch = _batch(2, 3, 9, 3)
  spec = theory.chen_spectral(batch)
  tf = theory.chen_transformer_distances(batch, spec, 12)
  cf = theory.chen_closed_form_distances(spec, np.arange(1, 13))
  assert theory.chen_agreement(tf, cf, spec) < 1e-10
  for b in range(3):
    np.testing.assert_allclose(tf["euclidean"][b], _explicit(batch, b, 12)["euclidean"][1:],
                               rtol=1e-7, atol=1e-12)


def test_loops_to_epsilon_is_the_first_loop_below_eps():
  batch = _batch(3, 8, 8, 4, noise_std=0.0)
  spec = theory.chen_spectral(batch)
  eps = 1e-2
  got = theory.chen_loops_to_epsilon(spec, eps)
  guarantee = theory.chen_loops_guarantee(spec.kappa_B, eps)
  np.testing.assert_array_equal(guarantee, np.ceil(2 * spec.kappa_B * math.log(100.0)))
  for b in range(8):
    errors = _explicit(batch, b, int(guarantee[b]))["euclidean"]
    first = int(np.flatnonzero(errors <= eps * errors[0])[0])
    assert got[b] == first
    assert got[b] <= guarantee[b]


def test_check_counts_violations_floors_and_ratios():
  err = np.array([[0.5, 1.2, 0.1], [2.0, 0.0, 3e-14]])
  bound = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1e-14]])
  check = theory.chen_check(err, bound, np.array([0.0, 1e-13]))
  # Task 0: 1.2 > 1 is a violation; task 1: 2.0 > 1 + 1e-13 is one, 3e-14 <= 1e-14 + 1e-13 not,
  # and its third bound (1e-14) is below the floor 1e-13.
  assert (check.violations, check.pairs, check.floor_pairs) == (2, 6, 1)
  assert check.max_ratio == pytest.approx(2.0)
  assert theory.chen_check(np.ones((1, 2)), np.ones((1, 2)) * (1 - 1e-10), 0.0).violations == 0


def test_bound_checks_and_evaluate_find_no_violation():
  batch = _batch(4, 20, 10, 4)
  ev = theory.chen_evaluate(batch, np.arange(1, 41), 4, 40,
                            transformer_keys=theory.DISTANCE_NORMS + ("to_w_star", "probe"))
  assert ev.agreement < 1e-10
  assert set(ev.checks) == set(theory.DISTANCE_NORMS)
  assert set(ev.transformer_checks) == {"s", "euclidean", "to_w_star", "probe"}
  assert all(c.violations == 0 and c.pairs == 20 * 40 for c in ev.checks.values())
  assert all(c.pairs == 4 * 40 for c in ev.transformer_checks.values())
  assert all(c.max_ratio <= 1.0 + 1e-9 for c in ev.checks.values())
  # A bound scaled down 10x is violated: the checks are not vacuous.
  bad = theory.chen_check(ev.closed_form["s"], 0.1 * theory.chen_bound_per_task(
      ev.spec.alpha("s"), np.arange(1, 41)[None, :], ev.spec.kappa_B), 0.0)
  assert bad.violations > 0
  s_grid = np.array([0.0, 0.5, 2.0])
  ev_k = theory.chen_evaluate(batch, s_grid, 2, 5, per_kappa=True)
  np.testing.assert_array_equal(ev_k.loops, np.ceil(s_grid[None, :] * ev_k.spec.kappa_B[:, None]))
  assert ev_k.loops.shape == (20, 3)


def test_observed_rate_and_marchenko_pastur():
  kappa = np.array([2.0, 10.0])
  loops = np.array([4, 30])
  rel = (1 - 1 / kappa) ** loops          # the worst-case decay (1 - 1/kappa)^T
  rate = theory.chen_observed_rate(rel, loops, kappa)
  np.testing.assert_allclose(rate, -kappa * np.log1p(-1 / kappa), rtol=1e-12)
  assert np.all(rate >= 1.0)
  assert theory.marchenko_pastur_kappa(1, 4) == pytest.approx(9.0)     # ((1 + 1/2) / (1/2))^2


# ------------------------------------------------------------------------------------------------
# The paper's construction: GD on q in closed form, Lemma 4.1 and Theorem 4.5 per setting.
# ------------------------------------------------------------------------------------------------


def test_generation_closed_form_is_the_explicit_gd_on_q():
  gen = chen_construction.sample_tasks(0, 6, 3, 7)
  loops = np.array([1, 2, 5, 17])
  q_cf = theory.generation_closed_form(gen, loops)
  assert q_cf.shape == (6, 4, 3)
  for b in range(6):
    x, y, alpha = gen.x[b], gen.y[b], gen.alpha[b]
    eta = 1 / np.linalg.eigvalsh(x.T @ x)[-1]
    q, out = np.zeros(3), []
    for t in range(1, 18):
      q = q - eta * (x.T @ x @ q + alpha * x.T @ y)
      if t in loops:
        out.append(q.copy())
    np.testing.assert_allclose(q_cf[b], np.array(out), rtol=1e-10, atol=1e-13)
  # T -> inf: q* = -alpha theta_hat = -alpha theta* (noiseless, n > d).
  np.testing.assert_allclose(theory.generation_closed_form(gen, np.array([np.inf]))[:, 0],
                             -gen.alpha[:, None] * gen.theta, rtol=1e-10, atol=1e-13)


def test_theorem_4_5_evaluate_summary_and_totals():
  gen = chen_construction.sample_tasks(1, 40, 4, 6)
  ev = theory.theorem_4_5_evaluate(gen, 25, lemma_seed=3)
  q0 = np.random.default_rng(3).standard_normal((40, 4))
  assert ev.lemma_4_1 == chen_construction.lemma_4_1_error(gen, q0)
  assert ev.lemma_4_1[0] <= 1e-12
  assert ev.agreement < 1e-10
  np.testing.assert_allclose(ev.kappa, theory.generation_kappa(gen.x), rtol=1e-12)
  summary = theory.theorem_4_5_summary(ev, rate_s=3.0)
  assert summary["as_stated_violations"] == summary["as_stated_pairs"] == 40 * 25
  assert summary["corrected_violations"] == 0
  assert summary["as_stated_err_over_alpha_final_median"] > 1.0
  # The exponent, by hand at T = min(25, ceil(3 kappa)) per task.
  err, scale = ev.errors["corrected"]
  loops = np.minimum(25, np.ceil(3.0 * ev.kappa)).astype(int)
  rate = -np.log(err[np.arange(40), loops - 1] / scale) * ev.kappa / loops
  assert summary["rate_per_kappa_median"] == pytest.approx(np.median(rate), rel=1e-12)
  assert summary["rate_per_kappa_min"] == pytest.approx(np.min(rate), rel=1e-12)
  assert summary["rate_per_kappa_min"] >= 1.0 - 1e-9     # (1 - 1/kappa)^T <= exp(-T / kappa)
  rows = [dict(summary, d=4, n=6), dict(summary, d=4, n=6, lemma_4_1_max_abs_error=1.0)]
  totals = theory.theorem_4_5_totals(rows)
  assert totals["lemma_4_1"] == {"max_abs_error": 1.0, "max_abs_entry": ev.lemma_4_1[1],
                                 "tasks": 80}
  stated = totals["theorem_4_5"]["as_stated"]
  assert (stated["pairs"], stated["violations"]) == (2000, 2000)
  assert stated["claim"] == theory.THEOREM_4_5_CLAIMS["as_stated"]
  assert totals["theorem_4_5"]["n"] == [6, 6]
