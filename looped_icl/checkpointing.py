"""Orbax checkpoints of the training state {params, opt_state} in ``workdir/checkpoints``.

Saves are atomic (orbax writes to a temporary directory and renames); the last ``keep`` are kept.
Nothing random is checkpointed: step keys are fold_in(key, step), so the state and the step
number determine the rest of the run.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore_latest(mngr: ocp.CheckpointManager, like):
  """(step, state) from the latest checkpoint, shaped like ``like``; (0, like) if there is none."""
  step = mngr.latest_step()
  if step is None:
    return 0, like
  return step, restore(mngr, step, like)


def restore(mngr: ocp.CheckpointManager, step: int, like):
  """The state saved at ``step``, shaped like ``like`` (a clear error if it does not fit)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except ValueError as e:
    raise ValueError(
        f"workdir checkpoint (step {step}) does not match this config's model/optimizer state "
        f"({str(e).strip().splitlines()[0]}); resume with the config that wrote it or use a "
        f"new --workdir") from None
  # Orbax returns leafless nodes (optax's EmptyState) as {}; the leaves are in order, so rebuild
  # the exact structure of ``like``.
  return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored))
