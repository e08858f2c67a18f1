"""Ahn et al.'s loss curves with the paper's own model: training and the paper's measure.

The official code (chengxiang/LinearTransformer, docs/ahn_2023_official_recipe.md) trains
``Transformer_F``, whose P and Q have free B_l and A_l blocks: our layered ``gdpp`` family, with
the recipe of configs/ahn_paper_model.py and the best of the last saved iterates on a validation
batch. :func:`ahn_paper_model.train_points` trains it at each point of a sweep;
:func:`held_out_losses` measures it as the notebooks do (one test batch of fresh prompts), next
to the A-only model of :mod:`ahn_curves` on the same prompts. Its population loss (heavy-tailed)
is part of :func:`looped_icl.reproduce.ahn_curves.evaluate_sweep`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
                       depths: Sequence[int]) -> tuple[list[dict], list[dict]]:
  """The paper's model at each point: the official code's ``Transformer_F`` (our layered gdpp
  family, B_l and A_l free) trained with its recipe (configs/ahn_paper_model.py) in
  ``runs/paper_n=N,L=L``, then the best of its last saved iterates on a validation batch
  (:func:`looped_icl.selection.best_checkpoint`), as the official notebooks pick.

  Returns:
    (params, picks): ``params[k]`` {"a", "b"} of point k, (L, d, d) float64 NumPy; ``picks[k]``
    the chosen step, the last step and the chosen iterate's validation loss.
  """
  params, picks = [], []
  for n, depth in zip(ns, depths):
    config = common.load_config(PAPER_CONFIG, ctx)
    config.task.n, config.model.num_layers = n, depth
    paper = config_lib.from_config(config)
    if not np.array_equal(np.asarray(paper.task.cov), np.asarray(exp.task.cov)):
      raise ValueError(f"{PAPER_CONFIG}'s Sigma differs from the sweep's: the families would not "
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


# The official notebooks' test batch: B = 20000 fresh prompts (seed 99), its mean squared error.
TEST_TASKS = 20000


def held_out_losses(exp: config_lib.Experiment, ns: Sequence[int], depths: Sequence[int],
                      trained: Sequence[np.ndarray], paper: Sequence[dict]) -> list[dict]:
  """The paper's own measure at each point: the mean squared error on one batch of
  :data:`TEST_TASKS` fresh tasks, the paper model and the A-only model on the same tasks.

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
      batch = tasks_lib.sample_gram(jax.random.fold_in(key, k), task64(exp, n), TEST_TASKS)
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
