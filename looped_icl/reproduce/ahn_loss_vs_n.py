r"""Ahn et al. 2023, Fig 6: in-context loss vs the number of examples N, three layers.

Paper claim: a trained 3-layer linear transformer has a lower in-context loss than 3 steps of GD
and of preconditioned GD (PGD, A = Sigma^{-1}), each at its best step, for every N = 2..20; least
squares (OLS) is plotted alongside.

Setting (configs/ahn_loss_curves.py): d = 5, rotated Sigma with spectrum (1, 1, 1/4, 1/16, 1),
w* ~ N(0, Sigma^{-1}) as in the official notebook (w = U D^{-1} g; with w* ~ N(0, I) PGD loses
to GD for N <= 10, so the prior matters), no label noise; N = 2, 4, ..., 20 as the notebook
(quick: 2, 4, 10, 20); L = 3.

Measured at each N, on one shared sample of S (paired; :mod:`ahn_curves`): the trained layered
preconditioner transformer (Adam, exact population objective), the family's population optimum
in Ahn's form A_l = c_l Sigma^{-1} (solver over the c_l; the full run also runs the solver over
general A_l), 3-step GD and PGD at their population-optimal steps, and OLS (exact given S, and
Monte Carlo over tasks with :func:`looped_icl.baselines.ols_predict`).

The paper's own model (``paper_model``: Transformer_F of the official code, B_l and A_l free,
trained with the ``variable_N_exp`` recipe and its best-of-the-last-10 pick;
configs/ahn_paper_model_vs_n.py) is the main series, measured as the notebook does (the mean
squared error on one test batch of fresh prompts) next to its heavy-tailed population mean; the
A-only model above (``transformer``, P sparse: B_l = 0) is the second. The official GD / PGD
baselines use N - 1 of the N examples (docs/ahn_2023_official_recipe.md); ours use all N.

Expected: transformer ~ optimum < PGD < GD at every N (the family contains PGD and GD:
A_l = eta Sigma^{-1} or eta I); at N = 20 the optimum's c_l match Ahn §4.3's (0.42, 0.69, 1.71).
OLS is 0 for N >= d: noiseless labels are interpolated exactly, so there is no OLS spike at
N ~ d (the spike is label noise amplified by (X^T X)^{-1}); for N < d the minimum-norm solution
has a finite loss. The paper's model contains GD++, so its curve can lie below the A-only
family's optimum (it does at N = 20 in the quick run).
"""

from __future__ import annotations

import numpy as np

from looped_icl.configs import ahn_paper_model_vs_n as paper_config
from looped_icl.reproduce import ahn_curves
from looped_icl.reproduce import ahn_paper_model
from looped_icl.reproduce import common

NS = tuple(range(2, 21, 2))   # the official variable_N_exp grid
QUICK_NS = (2, 4, 10, 20)
LAYERS = 3
LABELS = ahn_curves.family_labels(str(LAYERS))
PAPER_CONFIG = "ahn_paper_model_vs_n"
TEST_TASKS = 40000   # variable_N_exp's test batch (ahn_paper_model.TEST_TASKS is Fig 7's 20000)


def run(ctx: common.Context) -> dict:
  exp = ahn_curves.experiment(ctx)
  ns = QUICK_NS if ctx.quick else NS
  depths = (LAYERS,) * len(ns)
  trained, curve = ahn_curves.train_points(ctx, ns, depths)
  paper, picks = ahn_paper_model.train_points(ctx, exp, ns, depths, config_name=PAPER_CONFIG,
                                              learning_rate=paper_config.learning_rate)
  rows = ahn_curves.evaluate_sweep(exp, ns, depths, trained, general_solver=not ctx.quick,
                                   paper=paper)
  held_out = ahn_paper_model.held_out_losses(exp, ns, depths, trained, paper,
                                             num_tasks=TEST_TASKS)
  rows = [dict(r, **{k: v for k, v in t.items() if k not in r}, **o)
          for r, t, o in zip(rows, held_out, ahn_curves.ols_losses(exp, ns))]
  common.write_csv(ctx, "loss_vs_n.csv", rows)
  common.write_csv(ctx, "training_curves.csv", [
      dict(step=int(c[0]), **{f"loss_n{v}": c[k + 1] for k, v in enumerate(ns)}) for c in curve])
  # OLS is exactly 0 for N >= d: only its positive (N < d) values fit a log axis.
  ols = common.Series("OLS (0 for N >= d)", list(ns),
                      [r["ols_exact"] if r["ols_exact"] > 0 else float("nan") for r in rows],
                      style="s--")
  ahn_paper_model.curves_figure(
      ctx, "loss_vs_n.png", rows, curve, x_key="n", x_name="N", labels=LABELS,
      xlabel="N (in-context examples)", extra=[ols],
      title=f"loss vs N, L = 3 (test batch of {TEST_TASKS})",
      suptitle="Ahn et al. 2023, Fig 6: d = 5, rotated Sigma, w* ~ N(0, Sigma^-1)")
  ratio = [r["transformer_over_optimum"] for r in rows]
  at20 = next((r for r in rows if r["n"] == 20), None)
  results = {
      "paper_claim": "3-layer transformer < 3-step PGD < 3-step GD at every N (Fig 6, no numbers)",
      "ns": list(ns),
      "layers": LAYERS,
      **{name: [r[name] for r in rows] for name in LABELS
         if name in rows[0] and name != "paper_model"},   # paper_model: results_by below
      "ols_exact": [r["ols_exact"] for r in rows],
      "ols_mc": [r["ols_mc"] for r in rows],
      "transformer_over_optimum": ratio,
      "max_abs_transformer_over_optimum_minus_1": float(np.max(np.abs(np.asarray(ratio) - 1))),
      # Paired z-scores of the ordering (positive: the claimed order; > 3: resolved).
      "min_z_pgd_minus_transformer": min(ahn_curves.z_score(r, "pgd_minus_transformer")
                                         for r in rows),
      "min_z_gd_minus_pgd": min(ahn_curves.z_score(r, "gd_minus_pgd") for r in rows),
      "min_z_pgd_minus_optimum": min(ahn_curves.z_score(r, "pgd_minus_optimum") for r in rows),
      "paper_model_selected": picks,
      **ahn_paper_model.results_by(rows, "n"),
      "ordering_holds": all(r["optimum"] <= r["pgd"] <= r["gd"] and r["transformer"] <= r["pgd"]
                            for r in rows),
  }
  if at20 is not None:  # Ahn §4.3's c_l (n = 20, L = 3), sorted: the layers' order is free.
    results.update(paper_c=list(ahn_curves.PAPER_STEPS_L3),
                   solver_c=sorted(float(v) for v in at20["optimum_steps"].split()),
                   trained_c=sorted(float(v) for v in at20["transformer_steps"].split()))
  return results
