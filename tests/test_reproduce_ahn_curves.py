"""Quick Ahn et al. loss curves (Figs 6-7): orderings, trained model vs solver, Thm 1 at L = 1.

Every family is measured on one shared sample of S per point, so the orderings are asserted on
paired per-sample differences: "a > b" means mean(a - b) > 3 standard errors of that mean.
"""

import json
import os

import numpy as np
import pytest

from looped_icl import reproduce
from looped_icl.reproduce import common

D = 5
# Trained transformer vs the family optimum (A_l = c_l Sigma^{-1}, c_l by the solver), paired:
# transformer - optimum must lie in [-LOWER, TRAINED_VS_OPTIMUM] x optimum, widened by 3 paired
# standard errors. TRAINED_VS_OPTIMUM: the quick budget (10k Adam steps of 32 samples) lands
# within 2% of the optimum at every N and L <= 3 and 3.6% at L = 4 (the flattest problem),
# measured on 100k paired draws of S. LOWER: the trained model cannot beat the family optimum in
# expectation; the optimum's c_l are fitted to 2000 draws of S, which moves its loss by ~1-2%.
TRAINED_VS_OPTIMUM = 0.05
LOWER = 0.02


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


def _near_optimum(row):
  diff, se = row["transformer_minus_optimum"], row["transformer_minus_optimum_stderr"]
  assert -LOWER * row["optimum"] - 3 * se <= diff, row
  assert diff <= TRAINED_VS_OPTIMUM * row["optimum"] + 3 * se, row


def test_loss_vs_n_trained_matches_solver(vs_n):
  for row in vs_n[2]:
    _near_optimum(row)


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
    _near_optimum(row)


def test_loss_vs_l_decreasing(vs_l):
  _, results, rows = vs_l
  for name in ("transformer", "optimum", "pgd", "gd"):
    values = np.asarray([r[name] for r in rows])
    errors = np.asarray([r[f"{name}_stderr"] for r in rows])
    # Each extra layer lowers every loss by >= 9% here; 3 combined standard errors (the points
    # share their sample of S, so this unpaired margin is conservative).
    assert np.all(values[:-1] - values[1:] > 3 * np.hypot(errors[:-1], errors[1:])), name
  assert all(results["decreasing_in_l"].values())


def test_loss_vs_l_one_layer_is_theorem1(vs_l):
  results = vs_l[1]
  # Ahn Thm 1: the 1-layer optimum is one PGD step, A* = N/(N+d+1) Sigma^{-1}. The solver's c_1
  # and PGD's exact line search, both on 2000 draws of S, land within 2% of N/(N+d+1) (measured
  # 0.2%): the sampling error of a one-parameter fit.
  assert abs(results["solver_c_l1"] / results["theorem1_c"] - 1) < 0.02
  assert abs(results["pgd_eta_l1"] / results["theorem1_c"] - 1) < 0.02
  # They minimise the same one-dimensional function on the same sample.
  assert abs(results["optimum_over_pgd_l1"] - 1) < 1e-4
  # The trained A_1 (25 free entries) within 3% (Frobenius) of A* (measured 0.2%).
  assert results["transformer_l1_rel_error_vs_theorem1"] < 0.03


@pytest.mark.parametrize("fixture", ["vs_n", "vs_l"])
def test_three_layer_steps_match_ahn(fixture, request):
  results = request.getfixturevalue(fixture)[1]
  # Ahn §4.3 (n = 20, L = 3): Sigma^{1/2} A_l Sigma^{1/2} ~ c_l I, c ~ (0.42, 0.69, 1.71) sorted,
  # two digits from their training run. The solver's c_l (3 numbers fitted to 2000 draws of S)
  # within 5% of the paper's (measured 1.3%); the trained model's within 5% of the solver's
  # (measured 1.3%).
  np.testing.assert_allclose(results["solver_c"], results["paper_c"], rtol=0.05)
  np.testing.assert_allclose(results["trained_c"], results["solver_c"], rtol=0.05)


def _paper_model_is_below_the_a_only_model(results, row, x_key, points):
  """The paper's model (B_l free; the official recipe, shrunk for quick) contains GD++: in the
  paper's measure (the mean squared error on one batch of 20000 fresh prompts, both models on the
  same prompts) it goes below the trained A-only model and below the A-only family's optimum.

  Paired, prompt by prompt, it has the lower error on more than half of them, by 3 binomial
  standard errors. The mean difference's standard error is an error bar only while its tail index
  is below 0.5. The paper model's per-prompt error is heavy-tailed, and which rare prompt blows up
  moves with the host CPU's float32 rounding in training: at Fig 7's L = 3, on an AVX-512 machine
  one prompt of 20000 has error 817 and carries 0.041 of the paper model's mean 0.118 (0.085
  where the test was recorded), so the mean difference is 0.014 +- 0.042 with tail index 0.68
  (an error bar of one prompt)."""
  assert row["paper_model_test"] < row["transformer_test"], row
  assert row["paper_model_test"] < row["optimum"] - 3 * row["optimum_stderr"], row
  wins, wins_se = row["paper_model_wins_test"], row["paper_model_wins_test_stderr"]
  assert wins - 0.5 > 3 * wins_se, (wins, wins_se)
  diff, se = (row["transformer_minus_paper_model_test"],
              row["transformer_minus_paper_model_test_stderr"])
  if row["transformer_minus_paper_model_test_tail_index"] < 0.5:
    assert diff > 3 * se, (diff, se)
  # results.json holds both models' test-batch losses at every point of the sweep.
  assert set(results["paper_model"]) == set(results["sparse_p"]) == {str(x) for x in points}
  assert results["paper_model"][str(row[x_key])] == row["paper_model_test"]
  assert results["sparse_p"][str(row[x_key])] == row["transformer_test"]
  # Every point's pick is the best of its last saved iterates on the validation batch.
  for pick in results["paper_model_selected"]:
    assert 0 < pick["step"] <= pick["last_step"] and np.isfinite(pick["validation_loss"])


def test_loss_vs_l_paper_model_is_below_the_a_only_model_at_l3(vs_l):
  # Measured: 64% of prompts, 40 binomial standard errors.
  _, results, rows = vs_l
  three = next(r for r in rows if r["layers"] == 3)
  _paper_model_is_below_the_a_only_model(results, three, "layers", [1, 2, 3, 4])
  # The A-only model's test-batch mean agrees with its population loss (light tail).
  assert abs(three["transformer_test"] - three["transformer"]) < 4 * np.hypot(
      three["transformer_test_stderr"], three["transformer_stderr"]), three


def test_loss_vs_n_paper_model_is_below_the_a_only_model_at_n20(vs_n):
  # Fig 6 with the variable_N_exp recipe. Measured: 0.056 vs 0.131, 69% of prompts.
  workdir, results, rows = vs_n
  _paper_model_is_below_the_a_only_model(results, next(r for r in rows if r["n"] == 20), "n",
                                         results["ns"])
  # The notebook's learning rate: 0.001 below N = 5, 0.01 from there.
  for n in results["ns"]:
    with open(os.path.join(workdir, "runs", f"paper_n={n},L=3", "config.json")) as f:
      assert json.load(f)["train"]["learning_rate"] == (0.001 if n < 5 else 0.01), n


@pytest.mark.parametrize("fixture", ["vs_l", "vs_n"])
def test_optimum_is_a_critical_point_over_general_a(fixture, request):
  """Ahn et al. Thm 3/4: A_l = c_l Sigma^-1 is a critical point of the loss over general A_l.

  Off the ray (the traceless part of the whitened gradient, 24 L entries): 0 within 4.5
  standard errors, at the solver's c_l and 5% off them alike, since isotropy of the whitened
  problem makes the whole ray critical off it (the largest |z| of 100 standard normals exceeds
  4.5 with probability 7e-4). Along the ray: 5% off the c_l some entry of the gradient is more
  than 6 standard errors from 0 (the check's power; measured 9.8-16), at the fitted c_l less
  than 6 (they carry their fit error on 2000-4000 draws of S; measured 2.3-4.0 here, 5.0 in the
  full run's 20000 evaluation draws). L in {2, 3, 4} at N = 20 (vs_l) and L = 3 at
  N in {4, 10, 20} (vs_n)."""
  _, _, rows = request.getfixturevalue(fixture)
  for row in rows:
    if row["layers"] < 2 or row["n"] < 4:
      continue
    assert row["optimum_grad_off_ray_max_abs_z"] < 4.5, row
    assert row["perturbed_grad_off_ray_max_abs_z"] < 4.5, row
    assert row["perturbed_grad_max_abs_z"] > 6, row
    assert row["optimum_grad_max_abs_z"] < 6, row
