"""The trainer: runs training chunks over a workdir, logs progress, stops on divergence.

``train_and_evaluate(config, workdir)`` validates the config, trains (resuming from the latest
checkpoint), evaluates, and writes the workdir contract (:mod:`looped_icl.workdir`: config.json,
metrics.jsonl (per logged step: mean (+- its standard error over the chunk's steps) and last
loss, the largest single sample's share of the chunk's loss (max_share) and of one step's
(max_step_share), the last step's gradient norm, learning rate, steps/s, wall time, and for
linear models per-layer Dist(A_l, I) and whitened Dist), tensorboard/, checkpoints/,
summary.json, figures/). A workdir that already holds the finished run of the same config is
reused, not retrained.

One run (:func:`train`) and a vmapped group of runs that share one program (:func:`train_runs`,
used by sweeps) execute the same pure chunk (:func:`looped_icl.train_step.make_chunk_fn`); what
runs may differ in is the traced :class:`~looped_icl.train_step.Hyper`. Every chunk is data
parallel over the devices (:mod:`sharding`).

Reproducibility: chunks always end on multiples of ``log_every`` and step keys are
fold_in(data_key, step), so a run resumed from a checkpoint executes the same compiled chunks on
the same data and ends with bit-identical parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import covariance
from looped_icl import estimators
from looped_icl import evaluate
from looped_icl import linalg
from looped_icl import optim
from looped_icl import sharding
from looped_icl import theory
from looped_icl import train_step
from looped_icl import workdir as workdir_lib


class TrainingDiverged(FloatingPointError):
  """The loss or the parameters became NaN/inf; the last good checkpoint is kept."""


def make_alignment_metrics(exp: config_lib.Experiment):
  """params -> {dist_to_identity, dist_to_identity_whitened}: per-layer lists, logged each row.

  Dist(A_l, I) and Dist(Sigma^1/2 A_l Sigma^1/2, I) of the effective preconditioners (Ahn et
  al.'s Fig. 1-2 metric), for linear models; an empty dict otherwise.
  """
  model = exp.model
  if model.activation != "linear":
    return lambda params: {}

  # Sigma^1/2 once per run (an eigh), one program per model shape for every logged row.
  root_DxD = covariance.sqrtm_psd(jnp.asarray(exp.task.cov, linalg.float_dtype()))

  def alignment(params):
    dist, dist_white = theory.alignment_distances(params, model, root_DxD)
    return {"dist_to_identity": np.asarray(dist, np.float64).tolist(),
            "dist_to_identity_whitened": np.asarray(dist_white, np.float64).tolist()}

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


class NoIntactCheckpoint(RuntimeError):
  """Checkpoints exist but none can be restored (a data error; the run cannot resume)."""


def _restore(exps, workdirs, recorded: bool):
  """(managers, step, states): the runs' open checkpoint managers, the step they resume from and
  their states there (0 and fresh states if there is no checkpoint).

  The newest checkpoint step that every run of the group has and that restores is used: a step
  that cannot be restored (missing or damaged files, bad metadata) is reported in one warning
  line and set aside (``workdir/damaged_checkpoints``), and the next older one is tried (with
  freshly opened managers: a failed restore can leave orbax's state inconsistent). If a
  preemption hit between a group's saves, the latest step they all have is used.
  Raises :class:`NoIntactCheckpoint` if there are checkpoints but none restores. Without a
  config.json that records these runs (``recorded`` False) a failed restore may be another
  config's state, not damage: nothing is set aside and it raises ValueError.
  """
  fresh = [train_step.initial_state(exp) for exp in exps]
  damaged = []
  while True:
    mngrs = [workdir_lib.checkpoint_manager(w, exps[0]) for w in workdirs]
    common = set.intersection(*(set(m.all_steps()) for m in mngrs))
    if not common:
      break
    step = max(common)
    try:
      return mngrs, step, [checkpointing.restore(m, step, like) for m, like in zip(mngrs, fresh)]
    except checkpointing.CheckpointError as e:
      for m in mngrs:
        m.close()
      run = next(w for w, m in zip(workdirs, mngrs) if step in m.all_steps())
      if not recorded:
        raise ValueError(f"checkpoint step {e.step} of {run} cannot be restored ({e.reason}); "
                         f"with no config.json recorded it may be another config's run: use a "
                         f"new --workdir") from None
      logging.warning("checkpoint step %d of %s cannot be restored (%s); falling back to an "
                      "older one", e.step, run, e.reason)
      damaged.append(str(e))
      for w in workdirs:
        checkpointing.set_aside(w, step)
  if damaged:
    for m in mngrs:
      m.close()
    raise NoIntactCheckpoint(
        f"no intact checkpoint in {workdirs[0] if len(workdirs) == 1 else 'the group'} "
        f"({'; '.join(damaged)}); the damaged ones are in damaged_checkpoints/. Use a new "
        f"--workdir (or move checkpoints/ away to start this one again)")
  if any(m.latest_step() is not None for m in mngrs):
    logging.warning("the runs of this group have no checkpoint step in common; starting again")
  return mngrs, 0, fresh


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
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      stack.enter_context(workdir_lib.lock(w))
    return _train_runs(exps, workdirs, mesh=mesh, vmap=vmap)


def _train_runs(exps: list[config_lib.Experiment], workdirs: list[str], *, mesh,
                vmap: bool | None) -> list[Run]:
  num = len(exps)
  vmap = num > 1 if vmap is None else vmap
  if not vmap and num != 1:
    raise ValueError(f"train_runs without vmap takes one run, got {num}")
  if len(workdirs) != num:
    raise ValueError(f"workdirs must have one entry per run ({num}), got {len(workdirs)}")
  train_step.check_same_program(exps)
  tc = exps[0].train
  recorded = all([workdir_lib.matches_record(w, e) for w, e in zip(workdirs, exps)])
  mngrs, start, states = _restore(exps, workdirs, recorded)
  if start:
    logging.info("Resuming %d run(s) from the checkpoint at step %d (%s)", num, start,
                 workdirs[0] if num == 1 else os.path.dirname(os.path.abspath(workdirs[0])))
  writers = [workdir_lib.MetricsWriter(w, start, tensorboard=tc.tensorboard) for w in workdirs]

  layout = sharding.layout_for(num if vmap else None, mesh)
  chunk = train_step.make_train_chunk(exps[0], layout, num if vmap else None)
  hypers = [train_step.make_hyper(e) for e in exps]
  hyper = sharding.put(train_step.stack(hypers) if vmap else hypers[0], layout.state())
  state = sharding.put(train_step.stack(states) if vmap else states[0], layout.state())
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
      run_params = train_step.unstack(params, num) if vmap else [params]
      steps_per_s = length / max(time.perf_counter() - t0, 1e-9)
      for r in range(num):
        if diverged[r]:
          continue
        if not (np.all(np.isfinite(losses_RxK[r])) and _all_finite(run_params[r])):
          diverged[r] = _divergence_message(exps[r], workdirs[r], mngrs[r], step, losses_RxK[r])
          logging.error("%s", diverged[r])
          continue
        row = {"step": step + length, "loss": float(np.mean(losses_RxK[r])),
               "loss_stderr": (estimators.mean_and_stderr(losses_RxK[r])[1]
                               if length > 1 else float("nan")),
               "max_share": float(chunk_shares_R[r]),
               "max_step_share": float(np.max(shares_RxK[r])),
               "last_loss": float(losses_RxK[r, -1]), "grad_norm": float(grad_norms_R[r]),
               "learning_rate": float(schedules[r](step + length - 1)),
               "steps_per_s": steps_per_s, "wall_time_s": time.perf_counter() - t_start}
        row.update(alignments[r](run_params[r]))
        if tc.mode == "gradient_flow":
          row["flow_time"] = (step + length) * exps[r].train.learning_rate
        writers[r].write(row)
      step += length
      live = [r for r in range(num) if not diverged[r]]
      if live:
        logging.info("step %d/%d  loss %s  %.1f steps/s  ETA %s%s", step, tc.steps,
                     " ".join(_format_loss(writers[r].rows[-1]) for r in live[:8])
                     + (" ..." if len(live) > 8 else ""),
                     steps_per_s, _format_eta((tc.steps - step) / max(steps_per_s, 1e-9)),
                     _tail_warning([writers[r].rows[-1] for r in live]))
      if step % tc.checkpoint_every == 0 or step == tc.steps:
        run_states = train_step.unstack(state, num) if vmap else [state]
        for r in live:
          checkpointing.save(mngrs[r], step, run_states[r])
  finally:
    for w in writers:
      w.close()
    for m in mngrs:
      m.wait_until_finished()
      m.close()
  final = train_step.unstack(state["params"], num) if vmap else [state["params"]]
  return [Run(p, w.rows, d) for p, w, d in zip(final, writers, diverged)]


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


def finish(exp: config_lib.Experiment, workdir: str, params, history: list[dict],
           train_time: float) -> dict:
  """Evaluates trained ``params``; writes summary.json and the figures; returns the summary."""
  t0 = time.perf_counter()
  summary = evaluate.summarize(params, exp, train_step.root_keys(exp.seed)["eval"])
  summary.update(steps=exp.train.steps, train_wall_time_s=train_time,
                 wall_time_s=train_time + time.perf_counter() - t0)
  workdir_lib.write_json(workdir, workdir_lib.SUMMARY, summary)
  if sharding.is_primary():
    evaluate.write_figures(workdir, exp, summary, history)
  logging.info("final_eval_loss %.5g (population %s) in %.1f s; summary in %s",
               summary["final_eval_loss"], summary.get("population_loss"),
               summary["wall_time_s"], workdir)
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       evaluate: bool = True,
                       on_phase: Callable[[str], None] | None = None) -> dict | None:
  """Validates ``config``, trains into ``workdir`` and writes the summary and figures; returns
  the summary (that of the finished run, unchanged, if ``workdir`` already holds one of
  ``config``: :func:`looped_icl.workdir.finished`).

  ``evaluate=False`` trains only (the workdir contract, metrics and checkpoints, but no
  summary.json or figures; returns None): for callers that evaluate the trained params their own
  way. A rerun resumes from the last checkpoint, so a finished run does no work.

  ``on_phase(name)``, if given, is called as each phase ends ("train", then "evaluate"), inside
  the workdir lock: how the main-job benchmark times the phases of this very sequence.
  """
  on_phase = on_phase or (lambda name: None)
  exp = config_lib.from_config(config)
  with workdir_lib.lock(workdir):
    if evaluate and workdir_lib.finished(workdir, config):
      logging.info("%s holds the finished run of this config; its summary is reused", workdir)
      return workdir_lib.read_json(workdir, workdir_lib.SUMMARY)
    workdir_lib.start(config, workdir)
    t0 = time.perf_counter()
    params, history = train(exp, workdir)
    on_phase("train")
    if not evaluate:
      return None
    summary = finish(exp, workdir, params, history, time.perf_counter() - t0)
    on_phase("evaluate")
    return summary
