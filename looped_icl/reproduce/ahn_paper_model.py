"""Ahn et al.'s loss curves (Figs 6 and 7) with the paper's own model: training, the paper's
measure, and the figure.

The official code (chengxiang/LinearTransformer, docs/ahn_2023_official_recipe.md) trains
``Transformer_F``, whose P and Q have free B_l and A_l blocks: our layered ``gdpp`` family, with
the recipe of configs/ahn_paper_model.py (Fig 7) or configs/ahn_paper_model_vs_n.py (Fig 6) and
the best of the last saved iterates on a validation batch. :func:`train_points` trains it at each
point of a sweep; :func:`held_out_losses` measures it as the notebooks do (one test batch of fresh
prompts), next to the A-only model of :mod:`ahn_curves` on the same prompts. Its population loss
(heavy-tailed) is part of :func:`looped_icl.reproduce.ahn_curves.evaluate_sweep`.
:func:`curves_figure` and :func:`results_by` draw and report both figures' sweeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import selection
from looped_icl import tasks as tasks_lib
from looped_icl import train
from looped_icl import train_step
from looped_icl.reproduce import common
from looped_icl.reproduce.ahn_curves import task64

PAPER_CONFIG = "ahn_paper_model"


def train_points(ctx: common.Context, exp: config_lib.Experiment, ns: Sequence[int],
                 depths: Sequence[int], *, config_name: str = PAPER_CONFIG,
                 learning_rate: Callable[[int], float] | None = None
                 ) -> tuple[list[dict], list[dict]]:
  """The paper's model at each point: the official code's ``Transformer_F`` (our layered gdpp
  family, B_l and A_l free) trained with its recipe (``config_name``: configs/ahn_paper_model.py,
  Fig 7's; configs/ahn_paper_model_vs_n.py, Fig 6's) in ``runs/paper_n=N,L=L``, then the best of
  its last saved iterates on a validation batch (:func:`looped_icl.selection.best_checkpoint`),
  as the official notebooks pick. ``learning_rate(n)``, if given, sets the rate at each N (the
  Fig 6 notebook's depends on N).

  Returns:
    (params, picks): ``params[k]`` {"a", "b"} of point k, (L, d, d) float64 NumPy; ``picks[k]``
    the chosen step, the last step and the chosen iterate's validation loss.
  """
  params, picks = [], []
  for n, depth in zip(ns, depths):
    config = common.load_config(config_name, ctx)
    config.task.n, config.model.num_layers = n, depth
    if learning_rate is not None:
      config.train.learning_rate = learning_rate(n)
    paper = config_lib.from_config(config)
    if not np.array_equal(np.asarray(paper.task.cov), np.asarray(exp.task.cov)):
      raise ValueError(f"{config_name}'s Sigma differs from the sweep's: the families would not "
                       f"be compared on one task")
    name = f"paper_n={n},L={depth}"
    # Trained only (its summary and its latest params are not what is reported): the pick below
    # restores the candidates itself.
    train.train_and_evaluate(config, ctx.run_dir(name), evaluate=False)
    pick = selection.best_checkpoint(paper, ctx.run_dir(name))
    params.append({k: np.asarray(v, np.float64) for k, v in pick["params"].items()})
    picks.append({"n": n, "layers": depth, "step": pick["step"], "last_step": pick["last_step"],
                  "validation_loss": pick["validation_loss"][pick["step"]]})
  return params, picks


# The official notebooks' test batch (seed 99), whose mean squared error they report: 20000 fresh
# prompts in variable_L_exp (Fig 7), 40000 in variable_N_exp (Fig 6).
TEST_TASKS = 20000


def held_out_losses(exp: config_lib.Experiment, ns: Sequence[int], depths: Sequence[int],
                    trained: Sequence[np.ndarray], paper: Sequence[dict], *,
                    num_tasks: int = TEST_TASKS) -> list[dict]:
  """The paper's own measure at each point: the mean squared error on one batch of ``num_tasks``
  fresh tasks, the paper model and the A-only model on the same tasks.

  The GD++ family's per-prompt loss is heavy-tailed (rare S make its covariate maps expansive):
  the batch mean is then a typical-prompt loss, far below the population mean that
  :func:`evaluate_sweep` estimates. Each value comes with its standard error, the Pareto tail
  index of the batch (``tail_index`` > 0.5: the standard error is not reliable) and the median;
  the paired comparison comes as the mean difference (with its tail index) and as the share of
  prompts the paper model wins (``paper_model_wins_test``, binomial standard error).
  """
  key = jax.random.fold_in(train_step.root_keys(exp.seed)["eval"], 3)
  rows = []
  with jax.enable_x64(True):
    for k, (n, depth) in enumerate(zip(ns, depths)):
      batch = tasks_lib.sample_gram(jax.random.fold_in(key, k), task64(exp, n), num_tasks)
      cfg = dataclasses.replace(exp.model, num_layers=depth)
      errors = {
          "paper_model": np.asarray(selection.squared_errors(
              {name: jnp.asarray(value) for name, value in paper[k].items()},
              dataclasses.replace(cfg, parametrization="gdpp"), batch, "gram")),
          "transformer": np.asarray(selection.squared_errors(
              {"a": jnp.asarray(trained[k])}, cfg, batch, "gram"))}
      row = {"n": n, "layers": depth}
      for name, err in errors.items():
        est = estimators.estimate(err)
        row.update({f"{name}_test": est["value"], f"{name}_test_stderr": est["stderr"],
                    f"{name}_test_tail_index": est["tail_index"],
                    f"{name}_test_median": float(np.median(err))})
      diff_T = errors["transformer"] - errors["paper_model"]
      diff = estimators.estimate(diff_T)
      row["transformer_minus_paper_model_test"] = diff["value"]
      row["transformer_minus_paper_model_test_stderr"] = diff["stderr"]
      row["transformer_minus_paper_model_test_tail_index"] = diff["tail_index"]
      # The share of prompts on which the paper model's error is the lower one, with its
      # binomial standard error: a paired comparison whose error bar holds however heavy the
      # tail (the mean's does not once the tail index is above 0.5).
      wins = float(np.mean(diff_T > 0))
      row["paper_model_wins_test"] = wins
      row["paper_model_wins_test_stderr"] = float(np.sqrt(wins * (1 - wins) / diff_T.size))
      rows.append(row)
  return rows


TRAINED = ("paper_model", "transformer")


def curves_figure(ctx: common.Context, filename: str, rows: Sequence[dict], curve: np.ndarray, *,
                  x_key: str, x_name: str, labels: Mapping[str, str], xlabel: str, title: str,
                  suptitle: str, extra: Sequence[common.Series] = ()) -> str:
  """Figs 6 and 7: three panels against ``x_name`` = ``rows[k][x_key]``; returns the PNG's path.

  First (``title``): the paper's measure (the test-batch mean, +- its standard error) for the
  two trained models, next to the population losses of the other families in ``labels`` (family
  -> legend label; light-tailed: a
  test batch reads the same) and the ``extra`` lines. Second: the two trained models' population
  means (importance-sampled; the paper model's is carried by rare prompts) and their median
  prompts. Third: the A-only models' training curves (``curve``, one column per row).
  """
  x = [r[x_key] for r in rows]
  measure = [common.Series(f"{labels[name]}, test batch", x, [r[f"{name}_test"] for r in rows],
                           yerr=[r[f"{name}_test_stderr"] for r in rows], style="s-")
             for name in TRAINED]
  measure += [common.Series(labels[name], x, [r[name] for r in rows],
                            yerr=[r[f"{name}_stderr"] for r in rows], style="o:")
              for name in labels if name in rows[0] and name not in TRAINED]
  population = [common.Series(f"{labels[name]}, mean", x, [r[name] for r in rows],
                              yerr=[r[f"{name}_stderr"] for r in rows]) for name in TRAINED]
  population += [common.Series(f"{labels[name]}, median", x,
                               [r[f"{name}_test_median"] for r in rows], style="x--")
                 for name in TRAINED]
  return common.line_figure(ctx, filename, [
      common.Panel(measure + list(extra), xlabel, "in-context loss", logy=True, title=title),
      common.Panel(population, xlabel, "in-context loss", logy=True,
                   title="population mean (tail index in the CSV), median prompt"),
      common.Panel([common.Series(f"{x_name} = {v}", curve[:, 0], curve[:, k + 1], style="-")
                    for k, v in enumerate(x)], "Adam step", "training loss (chunk mean)",
                   logy=True, title="training of the A-only transformers")],
      suptitle=suptitle)


def results_by(rows: Sequence[dict], x_key: str) -> dict:
  """The paper's model (B_l and A_l free, the official recipe and selection) and ours with P
  sparse (B_l = 0, A_l only) at each ``rows[k][x_key]``, in the paper's measure: the test-batch
  mean squared error (:func:`held_out_losses`). Their population losses are the rows'
  ``paper_model`` and ``transformer``; the paper model's is heavy-tailed (its tail index here)."""
  return {
      "paper_model": {str(r[x_key]): r["paper_model_test"] for r in rows},
      "sparse_p": {str(r[x_key]): r["transformer_test"] for r in rows},
      "paper_model_population": {
          str(r[x_key]): {"value": r["paper_model"], "stderr": r["paper_model_stderr"],
                          "tail_index": r["paper_model_tail_index"]} for r in rows},
      "paper_model_wins_test": {str(r[x_key]): r["paper_model_wins_test"] for r in rows},
  }
