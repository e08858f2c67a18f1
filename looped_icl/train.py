"""Training: one pure jitted update, run in log-sized chunks with lax.scan; the workdir contract.

``train_and_evaluate(config, workdir)`` writes into ``workdir``:
  config.json      the config as given (validated first; a bad field raises ValueError)
  metrics.jsonl    one JSON object per logged step: mean (+- its standard error over the
                   chunk's steps) and last loss of the chunk, the largest single sample's share
                   of the chunk's loss (max_share) and of one step's (max_step_share), the last
                   step's gradient norm, learning rate, steps/s, wall time, and (linear models)
                   per-layer Dist(A_l, I) and whitened Dist of the effective preconditioners
  checkpoints/     orbax checkpoints of {params, opt_state} (atomic, last k kept)
  summary.json     final evaluation (see :mod:`looped_icl.evaluate`)
  figures/*.png    loss curve, learned preconditioners vs Sigma^-1, loss vs loops

One run (:func:`train`) and a vmapped group of runs that share shapes (:func:`train_runs`, used
by sweeps) execute the same pure chunk function (:func:`make_chunk_fn`); what runs may differ in
is the traced :class:`Hyper`. Every chunk is data parallel over the devices (:mod:`sharding`).

Reproducibility: the step-t data key is fold_in(fold_in(key(seed), 1), t // resample_every), and
chunks always end on multiples of ``log_every``, so a run resumed from a checkpoint executes the
same compiled chunks on the same data and ends with bit-identical parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import evaluate
from looped_icl import losses
from looped_icl import models
from looped_icl import optim
from looped_icl import sharding
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


@struct.dataclass
class Hyper:
  """The numbers that runs of one compiled training program may differ in (traced leaves).

  A vmapped sweep stacks one Hyper per run: runs that differ only in seed, learning rate, looped
  step eta, label noise or covariance share a program. ``data_key`` is the raw key data of the
  run's data key (root_keys(seed)["data"]).
  """
  data_key: jax.Array
  learning_rate: jax.Array
  eta: jax.Array
  task: tasks_lib.TaskDistribution


def make_hyper(exp: config_lib.Experiment) -> Hyper:
  dtype = exp.task.cov.dtype
  return Hyper(data_key=jax.random.key_data(root_keys(exp.seed)["data"]),
               learning_rate=jnp.asarray(exp.train.learning_rate, dtype),
               eta=jnp.asarray(exp.model.eta, dtype), task=exp.task)


def population_proposal(exp: config_lib.Experiment) -> estimators.Proposal:
  """The law of the population objective's samples of S (``train.population_proposal``)."""
  if exp.train.population_proposal == "defensive":
    return estimators.default_proposal(exp.task)
  return estimators.PLAIN


def population_samples(exp: config_lib.Experiment, key: jax.Array,
                       task: tasks_lib.TaskDistribution | None = None) -> estimators.WeightedS:
  """The population objective's ``train.batch_size`` weighted samples of S at ``key``."""
  return estimators.sample(key, exp.task if task is None else task, exp.train.batch_size,
                           population_proposal(exp))


def _max_share(values_B: jax.Array) -> jax.Array:
  """The largest single sample's share of a batch's summed loss (a tail diagnostic)."""
  values_B = jnp.abs(values_B)
  return jnp.max(values_B) / jnp.maximum(jnp.sum(values_B), jnp.finfo(values_B.dtype).tiny)


def make_objective(exp: config_lib.Experiment, layout: sharding.Layout | None = None):
  """loss(params, key, hyper) -> (loss, max_share) for the configured objective, drawing its own
  data from ``key``; max_share is the largest sample's share of the batch's loss.

  The task law and eta come from ``hyper`` (traced); the rest of ``exp`` is static. With a
  ``layout``, each step's batch is split over its mesh.
  """
  model, tc = exp.model, exp.train

  def constrain(batch):
    return batch if layout is None else layout.constrain_batch(batch, tc.batch_size)

  if tc.objective == "population":
    def objective(params, key, hyper):
      samples = constrain(population_samples(exp, key, hyper.task))
      values_S = losses.population_loss_samples(params, models.with_eta(model, hyper.eta),
                                                hyper.task, samples)[:, -1]
      weighted_S = samples.weight * values_S
      return jnp.mean(weighted_S), _max_share(weighted_S)
  else:
    def objective(params, key, hyper):
      if tc.forward == "gram":
        batch = constrain(tasks_lib.sample_gram(key, hyper.task, tc.batch_size))
      else:
        batch = constrain(tasks_lib.sample_tasks(key, hyper.task, tc.batch_size))
      preds = models.predict(params, models.with_eta(model, hyper.eta), batch, forward=tc.forward)
      sq_err_B = (preds - batch.y_query) ** 2
      return jnp.mean(sq_err_B), _max_share(sq_err_B)
  return objective


def make_chunk_fn(exp: config_lib.Experiment, layout: sharding.Layout | None = None):
  """The pure (un-jitted) ``chunk(params, opt_state, hyper, steps_K) -> (params, opt_state,
  losses_K, grad_norms_K, shares_K)``: ``len(steps_K)`` training steps in one lax.scan.

  ``grad_norms_K`` are the global norms of the raw (unclipped) gradients of each step,
  ``shares_K`` the largest sample's share of each step's batch loss. The
  update is -hyper.learning_rate * direction (see :func:`optim.make_direction`).
  """
  objective = make_objective(exp, layout)
  direction = optim.make_direction(exp.train)
  resample_every = exp.train.resample_every

  def chunk(params, opt_state, hyper, steps_K):
    data_key = jax.random.wrap_key_data(hyper.data_key)

    def train_step(carry, step):
      params, opt_state = carry
      key = step_data_key(data_key, step, resample_every)
      (loss, share), grads = jax.value_and_grad(objective, has_aux=True)(params, key, hyper)
      updates, opt_state = direction.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - hyper.learning_rate * u, params, updates)
      return (params, opt_state), (loss, optax.tree.norm(grads), share)

    (params, opt_state), (losses_K, grad_norms_K, shares_K) = jax.lax.scan(
        train_step, (params, opt_state), steps_K)
    return params, opt_state, losses_K, grad_norms_K, shares_K

  return chunk


def make_train_chunk(exp: config_lib.Experiment, layout: sharding.Layout | None = None,
                     num_runs: int | None = None):
  """The jitted chunk of one run (``num_runs`` None) or of a vmapped group of ``num_runs`` runs
  (params, opt_state and hyper stacked on a leading axis; losses (num_runs, K)).

  Inputs and outputs are placed by ``layout`` (jit in/out shardings); params and optimizer state
  are donated.
  """
  layout = sharding.layout_for(num_runs) if layout is None else layout
  chunk = make_chunk_fn(exp, layout)
  if num_runs is not None:
    chunk = jax.vmap(chunk, in_axes=(0, 0, 0, None))
  state, rep = layout.state(), layout.replicated()
  return jax.jit(chunk, donate_argnums=(0, 1), in_shardings=(state, state, state, rep),
                 out_shardings=(state, state, state, state, state))


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


def _format_loss(row: dict) -> str:
  """'0.0834+-0.0012 (max share 0.3%)': the chunk's mean loss, the standard error of that mean
  over its steps, and the largest single sample's share of the chunk's summed loss."""
  return (f"{row['loss']:.4g}+-{row['loss_stderr']:.2g} (max share "
          f"{100 * row['max_share']:.2g}%)")


def _tail_warning(rows: list[dict]) -> str:
  worst = max(row["max_share"] for row in rows)
  if worst <= estimators.MAX_SHARE:
    return ""
  return (f"  WARNING: one sample carried {100 * worst:.0f}% of the logged loss (heavy tail: "
          f"the mean is not reliable; raise train.batch_size or train.log_every)")


def read_metrics(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` (those logged up to ``up_to_step``); [] if none."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return rows if up_to_step is None else [r for r in rows if r["step"] <= up_to_step]


def same_config(workdir: str, config: ml_collections.ConfigDict,
                filename: str = "config.json") -> bool:
  """Whether ``workdir/filename`` holds exactly ``config`` (False if missing or unreadable):
  how a finished run is recognised and reused."""
  try:
    with open(os.path.join(workdir, filename)) as f:
      return json.load(f) == json.loads(config.to_json_best_effort())
  except (OSError, ValueError):
    return False


def initial_state(exp: config_lib.Experiment) -> dict:
  """{params, opt_state} at step 0 (params from root_keys(seed)["init"])."""
  params = models.init_params(root_keys(exp.seed)["init"], exp.model)
  return {"params": params, "opt_state": optim.make_direction(exp.train).init(params)}


def _restore(exps, mngrs) -> tuple[int, list[dict]]:
  """The step the runs resume from and their states there (0 and fresh states if none).

  The runs of a group checkpoint together; if a preemption hit between their saves, the latest
  step they all have is used (a fresh start if keep_checkpoints already dropped it).
  """
  fresh = [initial_state(exp) for exp in exps]
  if len(exps) == 1:
    step, state = checkpointing.restore_latest(mngrs[0], fresh[0])
    return step, [state]
  common = set.intersection(*(set(m.all_steps()) for m in mngrs))
  if not common:
    if any(m.latest_step() is not None for m in mngrs):
      logging.warning("the runs of this group have no checkpoint step in common; starting again")
    return 0, fresh
  step = max(common)
  return step, [checkpointing.restore(m, step, like) for m, like in zip(mngrs, fresh)]


def stack(trees):
  """Stacks runs' pytrees on a new leading axis (the layout of a vmapped group)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, num: int):
  """The inverse of :func:`stack`: ``num`` pytrees."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num)]


def train(exp: config_lib.Experiment, workdir: str, *, mesh=None):
  """Trains (resuming from the latest checkpoint in ``workdir``); returns (params, metrics).

  The step's batch is split over ``mesh`` (default: every device; see :mod:`sharding`).
  Raises :class:`TrainingDiverged` (keeping the last good checkpoint) on a NaN/inf.
  """
  (run,) = train_runs([exp], [workdir], mesh=mesh)
  if run.diverged:
    raise TrainingDiverged(run.diverged)
  return run.params, run.history


@dataclasses.dataclass
class Run:
  """One run's outcome: final params, metrics rows, and the divergence message (or None)."""
  params: dict
  history: list[dict]
  diverged: str | None = None


def train_runs(exps: list[config_lib.Experiment], workdirs: list[str], *, mesh=None,
               vmap: bool | None = None) -> list[Run]:
  """Trains runs that share one compiled program (the same static config; see :class:`Hyper`),
  each in its own workdir with the usual contract, resuming each from its checkpoints.

  With ``vmap`` (default: more than one run) the runs are stacked and trained by one vmapped
  program, split over ``mesh``; otherwise there must be one run. A run that diverges stops
  (its last good checkpoint kept) while the others go on.
  """
  num = len(exps)
  vmap = num > 1 if vmap is None else vmap
  if not vmap and num != 1:
    raise ValueError(f"train_runs without vmap takes one run, got {num}")
  if len(workdirs) != num:
    raise ValueError(f"workdirs must have one entry per run ({num}), got {len(workdirs)}")
  for exp in exps[1:]:
    _check_same_program(exps[0], exp)
  tc = exps[0].train
  mngrs = [checkpointing.manager(w, tc.keep_checkpoints) for w in workdirs]
  start, states = _restore(exps, mngrs)
  if start:
    logging.info("Resuming %d run(s) from the checkpoint at step %d (%s)", num, start,
                 workdirs[0] if num == 1 else os.path.dirname(os.path.abspath(workdirs[0])))
  histories, metric_files = [], []
  for w in workdirs:
    path = os.path.join(w, "metrics.jsonl")
    histories.append(read_metrics(w, start))
    if sharding.is_primary():
      with open(path, "w") as f:  # drop rows logged after the checkpoint we resume from
        f.writelines(json.dumps(r) + "\n" for r in histories[-1])
      metric_files.append(open(path, "a"))

  layout = sharding.layout_for(num if vmap else None, mesh)
  chunk = make_train_chunk(exps[0], layout, num if vmap else None)
  hyper = sharding.put(stack([make_hyper(e) for e in exps]) if vmap else make_hyper(exps[0]),
                       layout.state())
  state = sharding.put(stack(states) if vmap else states[0], layout.state())
  schedules = [optim.make_schedule(e.train) for e in exps]
  alignments = [make_alignment_metrics(e) for e in exps]
  diverged: list[str | None] = [None] * num
  step, t_start = start, time.perf_counter()
  try:
    while step < tc.steps and not all(diverged):
      length = min(tc.log_every - step % tc.log_every, tc.steps - step)
      t0 = time.perf_counter()
      params, opt_state, losses_K, grad_norms_K, shares_K = chunk(
          state["params"], state["opt_state"], hyper, jnp.arange(step, step + length))
      losses_RxK = np.asarray(losses_K).reshape(num, length)
      shares_RxK = np.asarray(shares_K).reshape(num, length)
      # The largest single sample's share of the chunk's summed loss (what the logged mean rests
      # on), and the largest of one step's batch loss (the heavy tail of single gradients).
      # (Steps that reuse a sample, resample_every != 1, are not independent: the step's share.)
      chunk_shares_R = (np.max(shares_RxK * np.abs(losses_RxK), axis=1)
                        / np.maximum(np.sum(np.abs(losses_RxK), axis=1), 1e-300)
                        if tc.resample_every == 1 else np.max(shares_RxK, axis=1))
      grad_norms_R = np.asarray(grad_norms_K).reshape(num, length)[:, -1]
      state = {"params": params, "opt_state": opt_state}
      run_params = unstack(params, num) if vmap else [params]
      steps_per_s = length / max(time.perf_counter() - t0, 1e-9)
      for r in range(num):
        if diverged[r]:
          continue
        if not (np.all(np.isfinite(losses_RxK[r])) and _all_finite(run_params[r])):
          diverged[r] = _divergence_message(exps[r], workdirs[r], mngrs[r], step, losses_RxK[r])
          logging.error("%s", diverged[r])
          continue
        row = {"step": step + length, "loss": float(np.mean(losses_RxK[r])),
               "loss_stderr": (float(np.std(losses_RxK[r], ddof=1) / np.sqrt(length))
                               if length > 1 else float("nan")),
               "max_share": float(chunk_shares_R[r]),
               "max_step_share": float(np.max(shares_RxK[r])),
               "last_loss": float(losses_RxK[r, -1]), "grad_norm": float(grad_norms_R[r]),
               "learning_rate": float(schedules[r](step + length - 1)),
               "steps_per_s": steps_per_s, "wall_time_s": time.perf_counter() - t_start}
        row.update(alignments[r](run_params[r]))
        if tc.mode == "gradient_flow":
          row["flow_time"] = (step + length) * exps[r].train.learning_rate
        if metric_files:
          metric_files[r].write(json.dumps(row) + "\n")
          metric_files[r].flush()
        histories[r].append(row)
      step += length
      live = [r for r in range(num) if not diverged[r]]
      if live:
        logging.info("step %d/%d  loss %s  %.1f steps/s  ETA %s%s", step, tc.steps,
                     " ".join(_format_loss(histories[r][-1]) for r in live[:8])
                     + (" ..." if len(live) > 8 else ""),
                     steps_per_s, _format_eta((tc.steps - step) / max(steps_per_s, 1e-9)),
                     _tail_warning([histories[r][-1] for r in live]))
      if step % tc.checkpoint_every == 0 or step == tc.steps:
        run_states = unstack(state, num) if vmap else [state]
        for r in live:
          checkpointing.save(mngrs[r], step, run_states[r])
  finally:
    for f in metric_files:
      f.close()
    for m in mngrs:
      m.wait_until_finished()
      m.close()
  final = unstack(state["params"], num) if vmap else [state["params"]]
  return [Run(p, h, d) for p, h, d in zip(final, histories, diverged)]


def _check_same_program(a: config_lib.Experiment, b: config_lib.Experiment) -> None:
  """Runs of one vmapped group may differ only in the fields of :class:`Hyper`."""
  def static(exp):
    t = exp.task
    return {"model": dataclasses.replace(exp.model, eta=1.0),
            "train": dataclasses.replace(exp.train, learning_rate=1.0),
            "task.d": t.d, "task.n": t.n, "task.weight_prior": t.weight_prior,
            "task.design": t.design, "task.random_cov_kappa": t.random_cov_kappa}
  sa, sb = static(a), static(b)
  for key in sa:
    if sa[key] == sb[key]:
      continue
    name = key
    if key in ("model", "train"):
      name += "." + next(f.name for f in dataclasses.fields(sa[key])
                         if getattr(sa[key], f.name) != getattr(sb[key], f.name))
    raise ValueError(f"{name} differs between runs of one vmapped group; only seed, learning "
                     f"rate, eta, noise and covariance may (see train.Hyper)")


def _divergence_message(exp, workdir, mngr, step, losses_K) -> str:
  bad = int(np.argmax(~np.isfinite(losses_K))) if not np.all(np.isfinite(losses_K)) else (
      len(losses_K) - 1)
  mngr.wait_until_finished()
  last = mngr.latest_step()
  kept = (f"the last good checkpoint (step {last}) is kept in {workdir}/checkpoints"
          if last is not None else "no checkpoint had been written yet")
  tc = exp.train
  return (f"training diverged at step {step + bad} (loss {losses_K[bad]}); {kept}. "
          f"Remedies: lower train.learning_rate (now {tc.learning_rate}), set "
          f"train.clip_global_norm or train.clip_per_matrix, or lower model.init_scale/eta.")


def load_trained_params(exp: config_lib.Experiment, workdir: str):
  """The params of the latest checkpoint in ``workdir`` (None if there is none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  mngr = checkpointing.manager(workdir, exp.train.keep_checkpoints)
  step, state = checkpointing.restore_latest(mngr, initial_state(exp))
  mngr.close()
  return state["params"] if step else None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> config_lib.Experiment:
  """Validates ``config`` (a bad field raises ValueError) and writes workdir/config.json."""
  exp = config_lib.from_config(config)
  os.makedirs(workdir, exist_ok=True)
  if sharding.is_primary():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return exp


def finish(exp: config_lib.Experiment, workdir: str, params, history: list[dict],
           train_time: float) -> dict:
  """Evaluates trained ``params``; writes summary.json and the figures; returns the summary."""
  t0 = time.perf_counter()
  summary = evaluate.summarize(params, exp, root_keys(exp.seed)["eval"])
  summary.update(steps=exp.train.steps, train_wall_time_s=train_time,
                 wall_time_s=train_time + time.perf_counter() - t0)
  if sharding.is_primary():
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    evaluate.write_figures(workdir, exp, summary, history)
  logging.info("final_eval_loss %.5g (population %s) in %.1f s; summary in %s",
               summary["final_eval_loss"], summary.get("population_loss"),
               summary["wall_time_s"], workdir)
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Validates ``config``, trains into ``workdir`` and writes the summary and figures."""
  exp = write_config(config, workdir)
  t0 = time.perf_counter()
  params, history = train(exp, workdir)
  return finish(exp, workdir, params, history, time.perf_counter() - t0)
