"""Checkpoint selection as Ahn et al.'s official notebooks do it: of the last k saved iterates,
the one with the lowest in-context loss on a validation batch of fresh tasks.

The notebooks ("given short(er) training steps, may have some unstable solutions") keep the best
of the last 20 (loss vs L) or 10 (loss vs N) iterates saved every 100 steps, on a batch drawn
with another seed. Here the validation tasks are ``train.batch_size`` fresh tasks from the run's
evaluation key folded with :data:`VALIDATION_STREAM`: independent of the training data and of
the final evaluation (``evaluate.summarize`` splits the evaluation key itself).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import models
from looped_icl import tasks as tasks_lib
from looped_icl import train_step
from looped_icl import workdir as workdir_lib

VALIDATION_STREAM = 999


def validation_batch(exp: config_lib.Experiment, num_tasks: int | None = None):
  """The run's validation tasks (``train.batch_size`` of them unless ``num_tasks``)."""
  key = jax.random.fold_in(train_step.root_keys(exp.seed)["eval"], VALIDATION_STREAM)
  num = exp.train.batch_size if num_tasks is None else num_tasks
  if exp.train.forward == "gram":
    return tasks_lib.sample_gram(key, exp.task, num)
  return tasks_lib.sample_tasks(key, exp.task, num)


@functools.partial(jax.jit, static_argnames=("cfg", "forward"))
def squared_errors(params, cfg: models.ModelConfig, batch, forward: str) -> jax.Array:
  """Each task's squared error (y_hat - y_q)^2 of ``params`` on ``batch``."""
  return (models.predict(params, cfg, batch, forward=forward) - batch.y_query) ** 2


@functools.partial(jax.jit, static_argnames=("cfg", "forward"))
def mean_squared_error(params, cfg: models.ModelConfig, batch, forward: str) -> jax.Array:
  """The in-context loss mean((y_hat - y_q)^2) of ``params`` on ``batch``."""
  return jnp.mean(squared_errors(params, cfg, batch, forward))


def best_checkpoint(exp: config_lib.Experiment, workdir: str, *, last: int | None = None,
                    num_tasks: int | None = None) -> dict:
  """The best of the last ``last`` (default ``train.keep_checkpoints``) checkpoints of
  ``workdir`` on :func:`validation_batch`.

  Returns:
    {"step": the chosen step, "params": its params, "validation_loss": {step: loss} for every
    candidate, "last_step": the latest step}.
  """
  last = exp.train.keep_checkpoints if last is None else last
  batch = validation_batch(exp, num_tasks)
  mngr = workdir_lib.checkpoint_manager(workdir, exp)
  try:
    steps = sorted(mngr.all_steps())[-last:]
    if not steps:
      raise ValueError(f"{workdir} has no checkpoint to select from")
    like = train_step.initial_state(exp)
    losses, params = {}, {}
    for step in steps:
      params[step] = checkpointing.restore(mngr, step, like)["params"]
      losses[step] = float(mean_squared_error(params[step], exp.model, batch, exp.train.forward))
  finally:
    mngr.close()
  best = min(steps, key=lambda s: (losses[s], -s))   # ties: the later iterate
  if not np.isfinite(losses[best]):
    raise ValueError(f"{workdir}: no finite validation loss among steps {steps}")
  return {"step": best, "params": params[best], "validation_loss": losses, "last_step": steps[-1]}
