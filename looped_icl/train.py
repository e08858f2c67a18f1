"""Training: one pure jitted update, run in log-sized chunks with lax.scan; the workdir contract.

``train_and_evaluate(config, workdir)`` writes into ``workdir``:
  config.json      the config as given (validated first; a bad field raises ValueError)
  metrics.jsonl    one JSON object per logged step: mean and last loss of the chunk, the last
                   step's gradient norm, learning rate, steps/s, wall time, and (linear models)
                   per-layer Dist(A_l, I) and whitened Dist of the effective preconditioners
  checkpoints/     orbax checkpoints of {params, opt_state} (atomic, last k kept)
  summary.json     final evaluation (see :mod:`looped_icl.evaluate`)
  figures/*.png    loss curve, learned preconditioners vs Sigma^-1, loss vs loops

Reproducibility: the step-t data key is fold_in(fold_in(key(seed), 1), t // resample_every), and
chunks always end on multiples of ``log_every``, so a run resumed from a checkpoint executes the
same compiled chunks on the same data and ends with bit-identical parameters.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import evaluate
from looped_icl import losses
from looped_icl import models
from looped_icl import optim
from looped_icl import tasks as tasks_lib
from looped_icl import theory


class TrainingDiverged(FloatingPointError):
  """The loss or the parameters became NaN/inf; the last good checkpoint is kept."""


def root_keys(seed: int) -> dict[str, jax.Array]:
  root = jax.random.key(seed)
  return {"init": jax.random.fold_in(root, 0), "data": jax.random.fold_in(root, 1),
          "eval": jax.random.fold_in(root, 2)}


def step_data_key(data_key: jax.Array, step: jax.Array, resample_every: int) -> jax.Array:
  """The key of step ``step``'s data: new every ``resample_every`` steps (0: never)."""
  index = step // resample_every if resample_every > 0 else jnp.zeros_like(step)
  return jax.random.fold_in(data_key, index)


def make_objective(exp: config_lib.Experiment):
  """loss(params, key) for the configured objective, drawing its own data from ``key``."""
  task, model, tc = exp.task, exp.model, exp.train
  if tc.objective == "population":
    def objective(params, key):
      s = tasks_lib.sample_empirical_covariance(key, task, tc.batch_size)
      return losses.population_loss(params, model, task, s)
  elif tc.forward == "gram":
    def objective(params, key):
      return losses.mc_loss(params, model, tasks_lib.sample_gram(key, task, tc.batch_size))
  else:
    def objective(params, key):
      batch = tasks_lib.sample_tasks(key, task, tc.batch_size)
      return losses.mc_loss(params, model, batch, forward="tokens")
  return objective


def make_train_chunk(exp: config_lib.Experiment, optimizer: optax.GradientTransformation,
                     data_key: jax.Array):
  """A jitted ``chunk(params, opt_state, steps_K) -> (params, opt_state, losses_K, grad_norms_K)``.

  ``grad_norms_K`` are the global norms of the raw (unclipped) gradients of each step.
  """
  objective = make_objective(exp)
  resample_every = exp.train.resample_every

  def train_step(carry, step):
    params, opt_state = carry
    key = step_data_key(data_key, step, resample_every)
    loss, grads = jax.value_and_grad(objective)(params, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, optax.tree.norm(grads))

  def chunk(params, opt_state, steps_K):
    (params, opt_state), (losses_K, grad_norms_K) = jax.lax.scan(
        train_step, (params, opt_state), steps_K)
    return params, opt_state, losses_K, grad_norms_K

  return jax.jit(chunk, donate_argnums=(0, 1))


def make_alignment_metrics(exp: config_lib.Experiment):
  """params -> {dist_to_identity, dist_to_identity_whitened}: per-layer lists, logged each row.

  Dist(A_l, I) and Dist(Sigma^1/2 A_l Sigma^1/2, I) of the effective preconditioners (Ahn et
  al.'s Fig. 1-2 metric), for linear models; an empty dict otherwise.
  """
  model = exp.model
  if model.activation != "linear":
    return lambda params: {}

  def alignment(params):
    a_eff = theory.effective_preconditioners(params, model)
    whitened = theory.whiten_preconditioner(a_eff, exp.task.cov)
    return {"dist_to_identity": np.asarray(theory.dist_to_identity(a_eff), np.float64).tolist(),
            "dist_to_identity_whitened": np.asarray(theory.dist_to_identity(whitened),
                                                    np.float64).tolist()}

  return alignment


def _all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _format_eta(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _read_metrics(path: str, up_to_step: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["step"] <= up_to_step]


def train(exp: config_lib.Experiment, workdir: str):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns (params, metrics)."""
  tc = exp.train
  keys = root_keys(exp.seed)
  optimizer = optim.make_optimizer(tc)
  schedule = optim.make_schedule(tc)
  params = models.init_params(keys["init"], exp.model)
  state = {"params": params, "opt_state": optimizer.init(params)}
  mngr = checkpointing.manager(workdir, tc.keep_checkpoints)
  start, state = checkpointing.restore_latest(mngr, state)
  if start:
    logging.info("Resuming from the checkpoint at step %d in %s", start, workdir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_metrics(metrics_path, start)
  with open(metrics_path, "w") as f:  # drop rows logged after the checkpoint we resume from
    f.writelines(json.dumps(r) + "\n" for r in history)

  chunk = make_train_chunk(exp, optimizer, keys["data"])
  alignment = make_alignment_metrics(exp)
  step, t_start = start, time.perf_counter()
  with open(metrics_path, "a") as metrics_file:
    while step < tc.steps:
      length = min(tc.log_every - step % tc.log_every, tc.steps - step)
      t0 = time.perf_counter()
      params, opt_state, losses_K, grad_norms_K = chunk(
          state["params"], state["opt_state"], jnp.arange(step, step + length))
      losses_K = np.asarray(losses_K)
      if not (np.all(np.isfinite(losses_K)) and _all_finite(params)):
        bad = int(np.argmax(~np.isfinite(losses_K))) if not np.all(np.isfinite(losses_K)) else (
            length - 1)
        mngr.wait_until_finished()
        last = mngr.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {workdir}/checkpoints"
                if last is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"training diverged at step {step + bad} (loss {losses_K[bad]}); {kept}. "
            f"Remedies: lower train.learning_rate (now {tc.learning_rate}), set "
            f"train.clip_global_norm or train.clip_per_matrix, or lower model.init_scale/eta.")
      state = {"params": params, "opt_state": opt_state}
      step += length
      elapsed = time.perf_counter() - t_start
      steps_per_s = length / max(time.perf_counter() - t0, 1e-9)
      row = {"step": step, "loss": float(np.mean(losses_K)), "last_loss": float(losses_K[-1]),
             "grad_norm": float(grad_norms_K[-1]), "learning_rate": float(schedule(step - 1)),
             "steps_per_s": steps_per_s, "wall_time_s": elapsed}
      row.update(alignment(params))
      if tc.mode == "gradient_flow":
        row["flow_time"] = step * tc.learning_rate
      metrics_file.write(json.dumps(row) + "\n")
      metrics_file.flush()
      history.append(row)
      logging.info("step %d/%d  loss %.4g  %.1f steps/s  ETA %s", step, tc.steps, row["loss"],
                   steps_per_s, _format_eta((tc.steps - step) / max(steps_per_s, 1e-9)))
      if step % tc.checkpoint_every == 0 or step == tc.steps:
        checkpointing.save(mngr, step, state)
  mngr.wait_until_finished()
  mngr.close()
  return state["params"], history


def load_trained_params(exp: config_lib.Experiment, workdir: str):
  """The params of the latest checkpoint in ``workdir`` (None if there is none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  optimizer = optim.make_optimizer(exp.train)
  params = models.init_params(root_keys(exp.seed)["init"], exp.model)
  mngr = checkpointing.manager(workdir, exp.train.keep_checkpoints)
  step, state = checkpointing.restore_latest(
      mngr, {"params": params, "opt_state": optimizer.init(params)})
  mngr.close()
  return state["params"] if step else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Validates ``config``, trains into ``workdir`` and writes the summary and figures."""
  exp = config_lib.from_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  t0 = time.perf_counter()
  params, history = train(exp, workdir)
  train_time = time.perf_counter() - t0
  summary = evaluate.summarize(params, exp, root_keys(exp.seed)["eval"])
  summary.update(steps=exp.train.steps, train_wall_time_s=train_time,
                 wall_time_s=time.perf_counter() - t0)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  evaluate.write_figures(workdir, exp, summary, history)
  logging.info("final_eval_loss %.5g (population %s) in %.1f s; summary in %s",
               summary["final_eval_loss"], summary.get("population_loss"),
               summary["wall_time_s"], workdir)
  return summary
