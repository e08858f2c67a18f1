"""Quick gatmiry_section5 (d = 10, Sigma = I, n = 5 and 20, L = 2 and 5): the numbers behind each
claim, every model paired on one evaluation sample of S per n."""

import os

import pytest

from looped_icl import reproduce
from looped_icl.reproduce import common
from looped_icl.reproduce import gatmiry_section5 as lib


@pytest.fixture(scope="module")
def section5(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gatmiry_section5"))
  results = reproduce.run("gatmiry_section5", workdir, quick=True)
  return workdir, results, common.read_csv(os.path.join(workdir,
                                                        "gatmiry_section5_loss_vs_L.csv"))


def test_writes_tables_figures_and_results(section5):
  workdir, results, rows = section5
  for name in ("gatmiry_section5_loss_vs_L.csv", "gatmiry_section5_extrapolation.csv",
               "gatmiry_section5_loss_vs_L.png", "gatmiry_section5_extrapolation_mean.png",
               "gatmiry_section5_extrapolation_median.png", "results.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert {(r["n"], r["L"]) for r in rows} == {(n, num) for n in lib.QUICK_NS
                                              for num in lib.QUICK_LOOPS}
  assert min(lib.QUICK_NS) < 10 < max(lib.QUICK_NS)   # n below and above d
  assert results["quick"] and "paper_setting" in results


def test_looped_model_against_gd_with_its_best_step(section5):
  _, _, rows = section5
  for row in rows:
    ratio, se = row["looped_over_gd"], row["looped_over_gd_stderr"]
    if row["L"] == 2:
      # Two loops: the trained A is isotropic (Dist(A, c I) measured 0.020-0.028, no skew part)
      # and is GD with its best step (the exact line search on this sample): level within the
      # paired error or above by < 1% (measured 1.002-1.003) ...
      assert 1 - 3 * se <= ratio < 1.01, row
      assert row["looped_dist_to_multiple_of_identity"] < 0.05, row
      assert row["looped_asymmetry"] < 0.01, row
    else:
      # ... at five loops it is within 15% (measured 1.014 +- 0.006 and 1.096 +- 0.037, heavy-
      # tailed: tail index 0.9-1.3); the full run's 4000 steps leave the isotropic ray at n >= 20
      # and beat it at n = 40, so no lower bound holds here.
      assert ratio < 1.15, row
    # The learned scale c sits 2-9% above the best step (the per-matrix clip discounts the rare
    # prompts that pull the step down).
    assert abs(row["looped_scale_c"] / row["gd_eta"] - 1) < 0.15, row


def test_loss_falls_with_loops_and_layers_beat_the_loop(section5):
  _, _, rows = section5
  for n in lib.QUICK_NS:
    by_l = {r["L"]: r for r in rows if r["n"] == n}
    short, long = by_l[min(by_l)], by_l[max(by_l)]
    # 2 -> 5 loops: 6.20 -> 5.66 (n = 5), 2.12 -> 0.95 (n = 20), each many standard errors.
    for name in ("looped", "gd_best_step"):
      assert long[name] + 3 * long[f"{name}_stderr"] < short[name] - 3 * short[f"{name}_stderr"]
  layered = [r for r in rows if isinstance(r.get("layered"), float)]
  assert {(r["n"], r["L"]) for r in layered} == {(n, num) for n in lib.QUICK_LAYERED_NS
                                                 for num in lib.QUICK_LOOPS}
  for row in layered:
    # L separate layers (one step size per layer) go well below the loop (measured -0.42 +-
    # 0.003 at L = 2 and -0.32 +- 0.026 at L = 5, n = 20): in this setting the looped model
    # does not match the layered one at equal L.
    diff, se = row["layered_minus_looped"], row["layered_minus_looped_stderr"]
    assert diff < -3 * se, row


def test_extrapolation_in_and_out_of_distribution(section5):
  _, results, _ = section5
  ext = results["extrapolation"]
  for n in (min(lib.QUICK_NS), 20):
    for num in lib.EXTRAPOLATED:
      row = ext[f"train_n{n}"][f"trained_L{num}"]
      # In distribution the median prompt keeps improving for all 25 loops ...
      assert row["median_keeps_decreasing"], (n, num, row)
      # ... the mean does not: some prompts have I - A^T S expanding (measured 1-4%).
      assert not row["keeps_decreasing"] and row["diverging_prompt_fraction"] > 1e-3, row
    # The model trained with 2 loops is best at more loops in the mean (measured 4-5), by more
    # than 4 standard errors of the paired gain.
    two = ext[f"train_n{n}"]["trained_L2"]
    assert two["best_loops"] > 2, two
    assert two["loss_at_trained_loops"] - two["best_loss"] > 4 * two["gain_stderr"], two
    for num in lib.EXTRAPOLATED:
      # Sigma = 2 I: the learned step is twice too long; most prompts diverge (measured 0.74-1.0)
      # and one loop is best.
      scaled = ext[f"scaled_2_n{n}"][f"trained_L{num}"]
      assert scaled["diverging_prompt_fraction"] > 0.5 and scaled["best_loops"] == 1, scaled
      # kappa = 10 (eigenvalues 1 .. 1/10): the step is short enough, no prompt diverges
      # (measured < 2e-5) and the mean improves up to >= 10 loops.
      cond = ext[f"condition_10_n{n}"][f"trained_L{num}"]
      assert cond["diverging_prompt_fraction"] < 1e-3 and cond["best_loops"] >= 10, cond
    for setting in ("train", "scaled_2", "condition_10"):
      gd = ext[f"{setting}_n{n}"]["gd_own_step"]
      assert gd["keeps_decreasing"], (setting, n, gd)   # k-step GD with its own step per k
