"""Quick reproductions of Gatmiry et al. 2024: looped models (gatmiry_loops) and the gradient
dominance exponent (gatmiry_gradient_dominance); the numbers behind each claim."""

import os

import numpy as np
import pytest

from looped_icl import reproduce
from looped_icl import theory
from looped_icl.reproduce import common
from looped_icl.reproduce import gatmiry_gradient_dominance as gd_lib


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gatmiry_loops"))
  return workdir, reproduce.run("gatmiry_loops", workdir, quick=True)


@pytest.fixture(scope="module")
def dominance(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gatmiry_gradient_dominance"))
  return workdir, reproduce.run("gatmiry_gradient_dominance", workdir, quick=True)


def test_loops_writes_tables_and_figures(loops):
  workdir, _ = loops
  for name in ("gatmiry_loops_flow.csv", "gatmiry_loops_final.csv", "gatmiry_loops_vs_n.csv",
               "gatmiry_loops_extrapolation.csv", "gatmiry_loops_flow.png",
               "gatmiry_loops_vs_n.png", "gatmiry_loops_extrapolation_mean.png",
               "gatmiry_loops_extrapolation_median.png", "results.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name


def test_loops_gradient_flow_decreases_and_approaches_the_optimum(loops):
  workdir, results = loops
  curve = common.read_csv(os.path.join(workdir, "gatmiry_loops_flow.csv"))
  for num in {r["L"] for r in curve}:
    losses = np.asarray([r["loss"] for r in curve if r["L"] == num])
    # Plain GD with a small step on one fixed objective never goes up (float32 rounding only).
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), (num, losses)
  final = results["final_vs_optimum"]
  for num, row in final.items():
    # Paired on the same samples of S: the trained model cannot beat the optimum beyond the
    # Monte Carlo error of the pair (3 standard errors), nor the optimum's own fit bias.
    assert row["ratio"] >= 1 - 3 * row["ratio_stderr"], (num, row)
  # L = 2 reaches the optimum within 10% at flow time 60 (measured 1.064 +- 0.003).
  assert final[2]["ratio"] < 1.10, final[2]
  # At equal flow time a larger L is further from its optimum (measured 1.63 +- 0.13 at L = 5),
  # and the reason is the lambda = 1/16 direction of Sigma, whose rate is ~ lambda^3: its gain
  # lambda v^T A v is far below the optimum's (measured 0.04 vs 0.28 and 0.09 vs 0.59).
  assert final[5]["ratio"] - 3 * final[5]["ratio_stderr"] > final[2]["ratio"], final
  for row in final.values():
    assert row["trained_gain_lambda_min"] < 0.5 * row["optimum_gain_lambda_min"], row


def test_loops_optimum_approaches_inverse_covariance_with_n(loops):
  _, results = loops
  vs_n = results["optimum_vs_n"]
  small, large = vs_n[min(vs_n)], vs_n[max(vs_n)]
  # The solver's optimum is exact up to its sample of S (2000): these are changes of 0.7 -> 0.2
  # (relative distance), 0.32 -> 0.13 (whitened Dist) and 0.30 -> 0.80 (scale c), far above it.
  assert large["rel_dist_to_inv_cov"] < 0.5 * small["rel_dist_to_inv_cov"], vs_n
  assert large["dist_whitened"] < 0.6 * small["dist_whitened"], vs_n
  assert abs(1 - large["scale_c"]) < 0.5 * abs(1 - small["scale_c"]), vs_n


def test_loops_extrapolation(loops):
  _, results = loops
  ext = results["extrapolation"]
  for name in ("trained_L2", "optimum_L2"):
    row = ext["train"][name]
    # In distribution a model trained with 2 loops keeps improving past 2 loops: the mean loss
    # at the best loop count (>= 3) is below the loss at 2 loops by more than 4 standard errors
    # of the paired difference (measured 0.17 vs 0.32; the mean is heavy-tailed, see below) ...
    gain = row["loss_at_trained_loops"] - row["best_loss"]
    assert row["best_loops"] >= 3 and gain > 4 * row["gain_stderr"], row
    # ... and the median prompt keeps improving for all 20 loops (noiseless, n > d: the loop
    # converges to w* on every prompt where I - A^T S is contracting) ...
    assert row["median_keeps_decreasing"], row
    # ... but not the mean: a fraction of prompts (0.6% measured; 0.1% would be 2 of the 2000
    # sampled) has spectral radius of I - A^T S above 1 and diverges geometrically.
    assert not row["keeps_decreasing"] and row["diverging_prompt_fraction"] > 1e-3, row
  # With n/d = 16 the optimum keeps improving for many loops in the median and in the mean (best
  # at >= 8 loops, far below its loss at 2 loops); whether the mean keeps falling to 20 loops is
  # decided by prompts of probability < 1e-4 (the importance sample finds some: its tail index
  # is > 1 past ~8 loops, flagged), so it is not asserted (the plain 2000-sample reading "keeps
  # decreasing, no prompt diverges" did not see them).
  large_n = next(v for k, v in ext.items() if k.startswith("train_n"))["optimum_L2"]
  assert large_n["median_keeps_decreasing"], large_n
  assert large_n["best_loops"] >= 8, large_n
  assert large_n["loss_at_trained_loops"] - large_n["best_loss"] > 4 * large_n["gain_stderr"]
  assert large_n["diverging_prompt_fraction"] < 1e-3, large_n
  # Out of distribution (another rotation of the same spectrum) the loop diverges on a large
  # fraction of prompts (0.54 measured for the trained L = 2 model).
  assert ext["rotated_seed1"]["trained_L2"]["diverging_prompt_fraction"] > 0.2, ext
  # k-step GD with its own step keeps improving everywhere (exact line search per k).
  for setting in ext.values():
    assert setting["gd_own_step"]["keeps_decreasing"], setting["gd_own_step"]


def test_dominance_writes_tables_and_figure(dominance):
  workdir, _ = dominance
  for name in ("gatmiry_gradient_dominance_trajectory.csv", "gatmiry_gradient_dominance_fits.csv",
               "gatmiry_gradient_dominance.png", "results.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name


@pytest.mark.parametrize("num_loops", gd_lib.LOOPS)
def test_dominance_exponent_matches_2l_minus_1_over_l(dominance, num_loops):
  _, results = dominance
  fit = results["exponents"][num_loops]
  assert fit["points"] >= 20, fit
  # Exact in the isotropic n -> infinity limit; here S = I + O(n^-1/2 = 1e-3), A starts 1e-3 off
  # the isotropic ray and the loss is float32 (relative 1e-7 at f - f* >= 5e-4): deviations of
  # order 1e-3 at most (measured <= 2e-4). 0.01 is still 8x below the gap between consecutive
  # (2L-1)/L values, so the test tells the exponents apart.
  assert fit["fitted_p"] == pytest.approx(theory.gradient_dominance_exponent(num_loops), abs=0.01)
  # Same perturbations on the constant: mu = 4 L^2 d^{(1-L)/L} within 1% (measured 0.08%).
  assert fit["fitted_mu"] == pytest.approx(fit["isotropic_mu"], rel=0.01)


def test_dominance_finite_n_exponent_is_one_near_the_optimum(dominance):
  workdir, results = dominance
  fits = common.read_csv(os.path.join(workdir, "gatmiry_gradient_dominance_fits.csv"))
  finite = [r for r in fits if r["n"] == gd_lib.FINITE_N]
  assert finite
  for row in finite:
    # Gradient flow reaches the solver's minimum of the same objective to float64 precision
    # (and never goes below it): the training sample of S was rebuilt exactly.
    assert abs(row["min_gap"]) < 1e-12, row
    # A non-degenerate minimum: locally ||grad f||^2 = 2 lambda_min(H) (f - f*) along the
    # slowest direction, i.e. exponent 1 (measured 0.999) and mu -> 2 lambda_min (measured
    # 2% below: the faster modes have not fully died out in the window).
    assert row["near_points"] >= 10, row
    assert row["near_p"] == pytest.approx(1.0, abs=0.02), row
    assert row["near_mu"] == pytest.approx(row["two_lambda_min"], rel=0.05), row
    # At the last row where f - f* is resolved the faster modes are gone: the ratio is
    # 2 lambda_min(H) itself (measured to 1e-5 at L = 2; 1% allows for an unfinished mode).
    assert row["last_resolved_grad_sq_over_excess"] == pytest.approx(row["two_lambda_min"],
                                                                     rel=0.01), row
    assert row["paper_p"] > 1.4  # the large-n law would give (2L-1)/L >= 1.5 here
