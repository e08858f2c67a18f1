"""Orbax checkpoints of the training state {params, opt_state} in ``workdir/checkpoints``.

Saves are atomic (orbax writes to a temporary directory and renames); the last ``keep`` are kept.
Nothing random is checkpointed: step keys are fold_in(key, step), so the state and the step
number determine the rest of the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback

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


class CheckpointError(Exception):
  """A checkpoint that cannot be restored into the requested state: ``step`` and ``reason``."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"step {step}: {reason}")
    self.step, self.reason = step, reason


def restore(mngr: ocp.CheckpointManager, step: int, like):
  """The state saved at ``step``, shaped like ``like``; raises :class:`CheckpointError` (one line:
  missing or damaged files, bad metadata, or a state of another structure) if it cannot."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    leaves = jax.tree.leaves(restored)
    if len(leaves) != len(jax.tree.leaves(like)):
      raise ValueError(f"{len(leaves)} arrays, expected {len(jax.tree.leaves(like))}")
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
    _drop_late_reads_of_failed_restores()
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CheckpointError(step, f"{type(e).__name__}: {reason[:200]}") from None
  # Orbax returns leafless nodes (optax's EmptyState) as {}; the leaves are in order, so rebuild
  # the exact structure of ``like``.
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _is_late_read(args) -> bool:
  """Whether an unraisable exception is a tensorstore read completing on a closed asyncio loop."""
  if not (isinstance(args.exc_value, RuntimeError)
          and str(args.exc_value) == "Event loop is closed"):
    return False
  return any(frame.name == "call_soon_threadsafe"
             for frame in traceback.extract_tb(args.exc_traceback))


def _drop_late_reads_of_failed_restores() -> None:
  """Silences exactly the noise a failed restore leaves behind, once per process.

  When one array of a checkpoint cannot be read, orbax's restore fails at the first error and
  closes its asyncio loop while tensorstore still reads the other arrays; each of those reads then
  completes onto the closed loop and prints "Exception ignored ... RuntimeError: Event loop is
  closed" from a tensorstore thread, seconds later. Nobody waits for those results (the restore
  has already raised :class:`CheckpointError`), so this wraps ``sys.unraisablehook`` to drop
  exactly that exception (a RuntimeError with that message raised in ``call_soon_threadsafe``)
  and passes every other one to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_reads", False):
    return

  def hook(args):
    if not _is_late_read(args):
      previous(args)

  hook.drops_late_reads = True
  sys.unraisablehook = hook


def set_aside(workdir: str, step: int) -> str:
  """Moves checkpoint step ``step`` of ``workdir`` to ``workdir/damaged_checkpoints/STEP-TIME``
  (kept for inspection, never read again). Managers opened before must be re-opened."""
  target = os.path.join(os.path.abspath(workdir), "damaged_checkpoints",
                        f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(os.path.join(os.path.abspath(workdir), "checkpoints", str(step)), target)
  return target
