r"""Ahn et al. 2023, Fig. 1-2 and §4.3: three trained layers implement preconditioned GD with
A_i proportional to Sigma^{-1}.

Paper claim: a 3-layer linear transformer (sparse preconditioner form, d = 5, n = 20, rotated
Sigma with spectrum (1, 1, 1/4, 1/16, 1), w* ~ N(0, Sigma^{-1}), no noise) trained on the in-context
loss converges to Sigma^{1/2} A_i Sigma^{1/2} = c_i I (Dist to I -> 0, while Dist(A_i, I) stays
large), with c ~ (0.69, 0.42, 1.71).

Setting: ``configs/ahn_multilayer.py`` (its docstring gives the training recipe and why it differs
from the paper's; ``--quick`` trains on the exact population objective).

Measured: the per-layer Dist(Sigma^{1/2} A_i Sigma^{1/2}, I) and Dist(A_i, I) and the training
loss at every logged step (``ahn_fig1_2_history.csv``, ``ahn_fig1_2.png``); the trained model's
c_i = tr(Sigma^{1/2} A_i Sigma^{1/2}) / d next to the population optimum's (float64 L-BFGS solver
on general, unconstrained A_i, same run directory so the trained and optimal losses are compared on
the same held-out samples of S) and the paper's (``ahn_fig1_2_layers.csv``).

Order of the layers: at A~_i = c_i I the error is prod_i (I - c_i S~) e_0 and the factors commute,
so the loss is invariant under permuting the c_i: any order of the paper's c is an optimum, and
training or a solver restart lands in one of them. The c_i are therefore compared SORTED.

Expected: every whitened Dist near 0 (<= ~0.05), the unwhitened Dist large; sorted trained c_i
within 10% of the solver's (quick; measured ~1%), the solver's within a few % of the paper's;
paired loss ratio trained / optimum near 1.
"""

from __future__ import annotations

import numpy as np

from looped_icl import config_lib
from looped_icl import theory
from looped_icl.reproduce import common

PAPER_C = (0.69, 0.42, 1.71)
RUN = "ahn_multilayer"


def history_rows(history: list[dict]) -> list[dict]:
  """One CSV row per logged step: loss and per-layer Dist (whitened and not)."""
  rows = []
  for h in history:
    row = {"step": h["step"], "loss": h["loss"], "last_loss": h["last_loss"],
           "grad_norm": h["grad_norm"], "learning_rate": h["learning_rate"]}
    for i, value in enumerate(h["dist_to_identity_whitened"]):
      row[f"dist_whitened_layer{i}"] = value
    for i, value in enumerate(h["dist_to_identity"]):
      row[f"dist_layer{i}"] = value
    rows.append(row)
  return rows


def figure(ctx: common.Context, history: list[dict], optimum_loss: float) -> str:
  steps = [h["step"] for h in history]
  num_layers = len(history[0]["dist_to_identity"])

  def per_layer(key):
    return [common.Series(f"layer {i}", steps, [h[key][i] for h in history])
            for i in range(num_layers)]

  return common.line_figure(ctx, "ahn_fig1_2.png", [
      common.Panel(per_layer("dist_to_identity_whitened"), "training step",
                   r"Dist($\Sigma^{1/2}A_i\Sigma^{1/2}$, I)", logy=True,
                   title="whitened preconditioners -> c_i I"),
      common.Panel(per_layer("dist_to_identity"), "training step", r"Dist($A_i$, I)",
                   title="raw preconditioners (not ~ I)"),
      common.Panel([common.Series("training loss (chunk mean)", steps,
                                  [h["loss"] for h in history], "-")],
                   "training step", "in-context loss", logy=True, title="loss",
                   hlines={"population optimum (solver)": optimum_loss}),
  ], suptitle="Ahn et al. Fig. 1-2: 3 layers, d=5, n=20, rotated Sigma, w* ~ N(0, Sigma^-1)")


def run(ctx: common.Context) -> dict:
  config = common.load_config(RUN, ctx)
  if ctx.quick:
    # Finer logging for the figure; one solver restart (each restart lands on the isotropic
    # optimum up to the order of the layers, and c_i are compared sorted) keeps it <= 40 s.
    config.train.log_every, config.train.checkpoint_every = 50, 500
    config.solver.restarts = 1
  exp = config_lib.from_config(config)
  cov = np.asarray(exp.task.cov, np.float64)
  summary, history, _ = common.train_run(ctx, RUN, config)
  optimum = common.solve_run(ctx, RUN, config)

  trained_c = theory.whitened_scales(summary["effective_preconditioners"], cov)
  solver_c = theory.whitened_scales(optimum["preconditioners"], cov)
  trained_sorted, solver_sorted = np.sort(trained_c), np.sort(solver_c)
  paper_sorted = np.sort(PAPER_C)
  layers = [{"layer": i, "trained_c": trained_c[i], "solver_c": solver_c[i],
             "paper_c": PAPER_C[i], "trained_c_sorted": trained_sorted[i],
             "solver_c_sorted": solver_sorted[i], "paper_c_sorted": paper_sorted[i],
             "trained_dist_whitened": summary["dist_to_identity_whitened"][i],
             "solver_dist_whitened": optimum["dist_to_identity_whitened"][i],
             "trained_dist": summary["dist_to_identity"][i]} for i in range(len(trained_c))]
  common.write_csv(ctx, "ahn_fig1_2_history.csv", history_rows(history))
  common.write_csv(ctx, "ahn_fig1_2_layers.csv", layers)
  figure(ctx, history, optimum["loss"])
  trained_vs_solver = np.abs(trained_sorted - solver_sorted) / np.abs(solver_sorted)
  return {
      "paper_c": list(PAPER_C),
      "trained_c": trained_c, "solver_c": solver_c,
      "trained_c_sorted": trained_sorted, "solver_c_sorted": solver_sorted,
      "paper_c_sorted": paper_sorted,
      "max_rel_diff_trained_vs_solver_sorted": float(trained_vs_solver.max()),
      "max_rel_diff_solver_vs_paper_sorted": float(
          np.max(np.abs(solver_sorted - paper_sorted) / paper_sorted)),
      "trained_dist_whitened": summary["dist_to_identity_whitened"],
      "trained_dist": summary["dist_to_identity"],
      "solver_dist_whitened": optimum["dist_to_identity_whitened"],
      "first_logged_loss": history[0]["loss"],
      "final_train_loss": history[-1]["loss"],
      "trained_population_loss": optimum["trained_model"]["loss"],
      "solver_loss": optimum["loss"],
      "solver_loss_stderr": optimum["loss_stderr"],
      "trained_over_optimum_ratio": optimum["trained_model"]["ratio"],
      # Monte Carlo losses on the same evaluation tasks: trained model vs 3 steps of GD
      # preconditioned by Sigma^-1 with the best constant step (c_1 = c_2 = c_3).
      "trained_mc_eval_loss": summary["final_eval_loss"],
      "pgd_inv_cov_mc_eval_loss": summary["baselines"]["pgd_inv_cov"],
      "train_objective": exp.train.objective,
      "train_steps": exp.train.steps,
      "train_wall_time_s": summary["train_wall_time_s"],
  }
