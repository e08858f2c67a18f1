"""Quick Ahn et al. loss curves (Figs 6-7): orderings, trained model vs solver, Thm 1 at L = 1.

Every family is measured on one shared sample of S per point, so the orderings are asserted on
paired per-sample differences: "a > b" means mean(a - b) > 3 standard errors of that mean.
"""

import os

import numpy as np
import pytest

from looped_icl import reproduce
from looped_icl.reproduce import common

D = 5
# Quick trained model vs the quick solver, |transformer / optimum - 1|. Two measured parts:
# (a) the quick training budget (10k Adam steps of 32 samples) lands within 1.5% of a
#     20000-sample, 300-iteration solver at every N and L <= 3, and within 5% at L = 4 (the
#     flattest problem); (b) the quick solver fits 2000 samples of heavy-tailed S, so on fresh
#     samples its optimum is itself up to ~8% above the true optimum (measured at N = 6; 1-5%
#     elsewhere), which can put the trained model below it.
TRAINED_VS_SOLVER = 0.08


def _run(tmp_path_factory, name, csv):
  workdir = str(tmp_path_factory.mktemp(name))
  results = reproduce.run(name, workdir, quick=True)
  return workdir, results, common.read_csv(os.path.join(workdir, csv))


@pytest.fixture(scope="module")
def vs_n(tmp_path_factory):
  return _run(tmp_path_factory, "ahn_loss_vs_n", "loss_vs_n.csv")


@pytest.fixture(scope="module")
def vs_l(tmp_path_factory):
  return _run(tmp_path_factory, "ahn_loss_vs_L", "loss_vs_depth.csv")


def _greater(row, worse, better, sigmas=3.0):
  """mean(worse - better) > sigmas standard errors (paired on the shared sample of S)."""
  diff, se = row[f"{worse}_minus_{better}"], row[f"{worse}_minus_{better}_stderr"]
  assert diff > sigmas * se, (row["n"], row["layers"], worse, better, diff, se)


@pytest.mark.parametrize("fixture, files", [
    ("vs_n", ("loss_vs_n.csv", "loss_vs_n.png", "training_curves.csv", "results.json")),
    ("vs_l", ("loss_vs_depth.csv", "loss_vs_depth.png", "training_curves.csv", "results.json")),
])
def test_writes_tables_figure_and_results(fixture, files, request):
  workdir, results, _ = request.getfixturevalue(fixture)
  for name in files:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert results["quick"] and "paper_claim" in results


def test_loss_vs_n_transformer_beats_pgd_beats_gd(vs_n):
  _, results, rows = vs_n
  assert [r["n"] for r in rows] == results["ns"] and len(rows) >= 4
  for row in rows:
    assert row["layers"] == 3
    _greater(row, "gd", "pgd")
    _greater(row, "pgd", "transformer")
  assert results["ordering_holds"]


def test_loss_vs_n_trained_matches_solver(vs_n):
  for row in vs_n[2]:
    assert abs(row["transformer_over_optimum"] - 1) <= TRAINED_VS_SOLVER, row


def test_loss_vs_n_decreases_with_n(vs_n):
  # Consecutive N lower every loss by >= 20% here, far beyond the <= 3% standard errors.
  for name in ("transformer", "optimum", "pgd", "gd"):
    values = [r[name] for r in vs_n[2]]
    assert np.all(np.diff(values) < 0), (name, values)


def test_loss_vs_n_ols_zero_from_n_equal_d_and_mc_matches_exact(vs_n):
  for row in vs_n[2]:
    if row["n"] >= D:
      # Noiseless labels are interpolated exactly: R = I - S^+ S = 0, and the Monte Carlo error
      # is float64 rounding (~1e-20 and below).
      assert row["ols_exact"] == 0.0
      assert row["ols_mc"] < 1e-12
    else:
      # The Monte Carlo mean and the exact-given-S mean estimate the same number: 4 combined
      # standard errors (independent samples).
      se = np.hypot(row["ols_mc_stderr"], row["ols_exact_stderr"])
      assert row["ols_exact"] > 0.5
      assert abs(row["ols_mc"] - row["ols_exact"]) < 4 * se, row


def test_loss_vs_l_orderings(vs_l):
  _, results, rows = vs_l
  assert [r["layers"] for r in rows] == [1, 2, 3, 4]
  for row in rows:
    assert row["n"] == 20
    _greater(row, "gd", "pgd")
    if row["layers"] >= 2:
      # Per-layer preconditioners beat one shared step once there are two or more layers.
      _greater(row, "pgd", "transformer")
      _greater(row, "pgd", "optimum")
    assert abs(row["transformer_over_optimum"] - 1) <= TRAINED_VS_SOLVER, row


def test_loss_vs_l_decreasing(vs_l):
  _, results, rows = vs_l
  for name in ("transformer", "optimum", "pgd", "gd"):
    values = np.asarray([r[name] for r in rows])
    errors = np.asarray([r[f"{name}_stderr"] for r in rows])
    # Each extra layer lowers every loss by >= 13% here; 3 combined standard errors (the points
    # share their sample of S, so this unpaired margin is conservative).
    assert np.all(values[:-1] - values[1:] > 3 * np.hypot(errors[:-1], errors[1:])), name
  assert all(results["decreasing_in_l"].values())


def test_loss_vs_l_one_layer_is_theorem1(vs_l):
  results = vs_l[1]
  # Ahn Thm 1: the 1-layer optimum is one PGD step with eta = N/(N+d+1). PGD's exact line search
  # on 2000 samples of S lands within 2% of it (measured 0.4%).
  assert abs(results["pgd_eta_l1"] / results["theorem1_eta"] - 1) < 0.02
  # The solver's and the trained model's A_1 (25 free entries each) within 5% (Frobenius) of
  # A* (measured 0.5% and 0.2%).
  assert results["optimum_l1_rel_error_vs_theorem1"] < 0.05
  assert results["transformer_l1_rel_error_vs_theorem1"] < 0.05
  # PGD and the optimum are the same predictor at L = 1. The solver's 25 entries fitted to 2000
  # samples generalise slightly worse than PGD's one step: within 1% (measured 0.03%).
  assert abs(results["optimum_over_pgd_l1"] - 1) < 0.01
