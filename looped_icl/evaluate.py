"""Final evaluation of a trained model: the numbers of ``summary.json`` and the figures.

Everything is measured on one fixed set of fresh evaluation tasks (``train.eval_tasks``, drawn
from the evaluation key), so the model, its loop extrapolation and the baselines are compared on
the same tasks. Models trained on per-task random covariances are evaluated on ``task.cov``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from looped_icl import baselines
from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import losses
from looped_icl import models
from looped_icl import plotting
from looped_icl import tasks as tasks_lib
from looped_icl import theory


# One compiled program per (model, forward, loops, batch shape) in a process, not per summary.
_predict = jax.jit(models.predict, static_argnames=("cfg", "forward", "num_loops", "all_layers"))


def alignment_with_inverse_covariance(a_DxD, cov) -> dict[str, float]:
  """Best scale c of Sigma^-1 for A, and ||A - c Sigma^-1||_F / ||A||_F."""
  inv = np.linalg.inv(np.asarray(cov, np.float64))
  a = np.asarray(a_DxD, np.float64)
  c = float(np.sum(a * inv) / np.sum(inv * inv))
  return {"scale": c, "relative_residual": float(np.linalg.norm(a - c * inv) /
                                                 max(np.linalg.norm(a), 1e-300))}


def summarize(params, exp: config_lib.Experiment, key: jax.Array) -> dict:
  """The summary dict (JSON-ready) of a trained model."""
  model, tc = exp.model, exp.train
  task = dataclasses.replace(exp.task, random_cov_kappa=None)
  k_tasks, k_s = jax.random.split(key)
  num_loops = 2 * model.num_layers if model.kind == "looped" else model.num_layers
  forward = tc.forward if model.activation == "linear" else "tokens"
  if forward == "gram":
    batch = tasks_lib.sample_gram(k_tasks, task, tc.eval_tasks)
    gram = batch
  else:
    batch = tasks_lib.sample_tasks(k_tasks, task, tc.eval_tasks)
    gram = tasks_lib.to_gram(batch) if model.activation == "linear" else None
  preds_BxL = _predict(params, model, batch, forward=forward, num_loops=num_loops,
                       all_layers=True)
  sq_err_BxL = np.asarray((preds_BxL - batch.y_query[:, None]) ** 2, np.float64)
  trained = model.num_layers
  # One reduction for every depth: the trained depth's loss is loss_vs_loops' entry, bit for bit
  # (a column's own mean is summed in another order, and differs in the last bit on some CPUs).
  loss_L, stderr_L = estimators.mean_and_stderr(sq_err_BxL)
  summary = {
      "final_eval_loss": float(loss_L[trained - 1]),
      "final_eval_loss_stderr": float(stderr_L[trained - 1]),
      "eval_tasks": tc.eval_tasks,
      "covariance": np.asarray(task.cov).tolist(),
      "loss_vs_loops": loss_L.tolist(),
  }
  if model.parametrization in losses.POPULATION_FAMILIES and model.activation == "linear":
    report, s_samples, _ = losses.estimate_population_loss(
        params, model, task, k_s, tc.eval_population_samples, num_loops=num_loops,
        layer=trained - 1)
    summary["population_loss"] = report["value"]
    summary["population_loss_stderr"] = report["stderr"]
    summary["population_loss_vs_loops"] = report.pop("values")
    summary["population_loss_vs_loops_stderr"] = report.pop("stderrs")
    summary["population_loss_estimate"] = report
    if report["warning"]:
      logging.warning("population loss %s", estimators.format_estimate(report))
  else:
    s_samples = tasks_lib.sample_empirical_covariance(k_s, task, tc.eval_population_samples)
  if model.activation == "linear":
    a_eff = np.asarray(theory.effective_preconditioners(params, model), np.float64)
    whitened = np.asarray(theory.whiten_preconditioner(jnp.asarray(a_eff, task.cov.dtype),
                                                       task.cov), np.float64)
    summary.update(
        effective_preconditioners=a_eff.tolist(),
        effective_preconditioner_eigenvalues=np.asarray(
            theory.eigenvalues_as_pairs(a_eff)).tolist(),
        dist_to_identity_whitened=np.asarray(theory.dist_to_identity(whitened)).tolist(),
        dist_to_identity=np.asarray(theory.dist_to_identity(a_eff)).tolist(),
        alignment_with_inverse_covariance=[
            alignment_with_inverse_covariance(a, task.cov) for a in a_eff],
        sparsity_residual={k: np.asarray(v).tolist()
                           for k, v in theory.sparsity_residual(params, model).items()},
    )
    if model.parametrization == "gdpp":
      summary["b_matrices"] = np.asarray(params["b"]).reshape(-1, model.d, model.d).tolist()
  if gram is not None:
    summary["baselines"] = baselines.baseline_losses(gram, task, trained, s_samples)
  if model.parametrization == "fixed":
    summary["eta"] = np.asarray(params["eta"]).tolist()
  return summary


def write_figures(workdir: str, exp: config_lib.Experiment, summary: dict,
                  history: list[dict]) -> list[str]:
  """Writes figures/*.png; returns their paths."""
  fig_dir = os.path.join(workdir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  paths = [plotting.loss_curve(os.path.join(fig_dir, "loss_curve.png"), history, summary)]
  paths.append(plotting.loss_vs_loops(os.path.join(fig_dir, "loss_vs_loops.png"), summary,
                                      exp.model.num_layers, exp.model.kind))
  if "effective_preconditioners" in summary:
    paths.append(plotting.preconditioners(os.path.join(fig_dir, "preconditioners.png"),
                                          summary["effective_preconditioners"],
                                          summary["covariance"]))
  return paths
