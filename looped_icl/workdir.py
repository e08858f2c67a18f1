"""The workdir contract: what a run's directory holds, and when a finished run is reused.

A training run's workdir:
  config.json      the config as given (validated first)
  metrics.jsonl    one JSON object per logged step (the canonical record; :func:`read_metrics`)
  tensorboard/     the same scalars as TensorBoard event files (:class:`MetricsWriter`)
  checkpoints/     orbax checkpoints of {params, opt_state} (:mod:`looped_icl.checkpointing`)
  summary.json     the final evaluation (:mod:`looped_icl.evaluate`)
  figures/*.png    loss curve, learned preconditioners, loss vs loops
A solve (:mod:`looped_icl.solver`) adds optimum.json and optimum_config.json.

:func:`finished` is the one definition of "this run is done for this config" that the trainer,
the solver, sweeps and reproductions use to reuse a run instead of redoing it. Only the primary
process of a multi-host run writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import socket
import struct
import time

import jax
import ml_collections
import tensorboardX
from absl import logging
from jax.experimental import multihost_utils
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import fields
from looped_icl import sharding
from looped_icl import train_step

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
OPTIMUM = "optimum.json"
OPTIMUM_CONFIG = "optimum_config.json"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
# What a finished run of each kind has: (the file holding its config, its result file).
KINDS = {"train": (CONFIG, SUMMARY), "solve": (OPTIMUM_CONFIG, OPTIMUM)}


def _config_json(config: ml_collections.ConfigDict, indent: int | None = None) -> str:
  return config.to_json_best_effort(indent=indent)


def write_config(config: ml_collections.ConfigDict, workdir: str,
                 filename: str = CONFIG) -> config_lib.Experiment:
  """Validates ``config`` (a bad field raises ValueError) and writes ``workdir/filename``."""
  exp = config_lib.from_config(config)
  if sharding.is_primary():
    write_text(workdir, filename, _config_json(config, indent=2))
  return exp


def record_changes(workdir: str, exp: config_lib.Experiment) -> dict[str, tuple] | None:
  """{dotted field: (recorded, requested)} of the config fields in which ``exp`` differs from the
  run recorded in ``workdir/config.json``; None if there is no record."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    recorded = config_lib.from_config(ml_collections.ConfigDict(json.load(f))).sections()
  changes = {}
  for name, section in exp.sections().items():
    for f in fields.config_fields(type(section)):
      old, new = getattr(recorded[name], f.name), getattr(section, f.name)
      if old != new:
        changes[f"{name}.{f.name}" if name else f.name] = (old, new)
  return changes


def _refuse(workdir: str, changes: dict[str, tuple]) -> None:
  """Raises unless ``changes`` is empty or only a longer ``train.steps`` (checked by the caller)."""
  others = {k: v for k, v in changes.items() if k != "train.steps"}
  if others:
    listed = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in others.items())
    raise ValueError(f"workdir {workdir} holds a run of another config ({listed}); use a new "
                     f"--workdir for the new config")


def matches_record(workdir: str, exp: config_lib.Experiment) -> bool:
  """Whether ``workdir/config.json`` records ``exp``'s run (equal in every field but a longer
  ``train.steps``): True; False if there is no record; ValueError naming every differing field
  if it records another run."""
  changes = record_changes(workdir, exp)
  if changes is None:
    return False
  _refuse(workdir, changes)
  return True


def start(config: ml_collections.ConfigDict, workdir: str) -> config_lib.Experiment:
  """Validates ``config`` for a training run in ``workdir`` and records it in config.json.

  A workdir that holds another config's run is refused (ValueError, one line naming each changed
  field, old -> new, and the way out): resuming it would mix two runs in one record. The one
  change allowed is a longer ``train.steps`` under a schedule that does not depend on it
  (constant or step); the record is then updated. A refused run leaves config.json as it was.
  In a multi-host run process 0 writes the record and every other process checks, after a
  barrier, that it joins that same run.
  """
  exp = config_lib.from_config(config)
  changes = record_changes(workdir, exp) or {}
  _refuse(workdir, changes)
  if "train.steps" in changes:
    old, new = changes["train.steps"]
    if new < old:
      raise ValueError(f"workdir {workdir} holds a run of train.steps={old}; it cannot be "
                       f"shortened to {new} (use a new --workdir)")
    if exp.train.schedule == "cosine":
      raise ValueError(f"workdir {workdir} holds a run of train.steps={old}; extending it to {new} "
                       f"would change its cosine schedule (which depends on train.steps) mid-run; "
                       f"use a new --workdir")
    logging.info("extending the run in %s from train.steps=%d to %d", workdir, old, new)
  write_config(config, workdir)
  if jax.process_count() > 1:   # process 0 wrote the record; the others join that run only
    multihost_utils.sync_global_devices(f"looped_icl.workdir.start:{os.path.abspath(workdir)}")
    if not same_config(workdir, config):
      raise ValueError(f"process {jax.process_index()}: workdir {workdir} records another config "
                       f"than this process's; every process must run the same command")
  return exp


def same_config(workdir: str, config: ml_collections.ConfigDict, filename: str = CONFIG) -> bool:
  """Whether ``workdir/filename`` holds exactly ``config`` (False if missing or unreadable)."""
  try:
    with open(os.path.join(workdir, filename)) as f:
      return json.load(f) == json.loads(_config_json(config))
  except (OSError, ValueError):
    return False


def finished(workdir: str, config: ml_collections.ConfigDict, kind: str = "train") -> bool:
  """Whether ``workdir`` holds a finished ``kind`` ("train" or "solve") run of ``config``: its
  result file exists and its recorded config is exactly ``config``."""
  config_file, result_file = KINDS[kind]
  return (os.path.exists(os.path.join(workdir, result_file))
          and same_config(workdir, config, config_file))


def write_text(workdir: str, filename: str, text: str) -> str:
  """Writes ``workdir/filename`` atomically (a temporary file renamed over it): a reader, or a
  crash, sees the old file or the new one, never half of one. Returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, filename)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def write_json(workdir: str, filename: str, obj) -> None:
  """``workdir/filename`` as indented JSON, atomically (primary process only)."""
  if sharding.is_primary():
    write_text(workdir, filename, json.dumps(obj, indent=2))


def read_json(workdir: str, filename: str):
  with open(os.path.join(workdir, filename)) as f:
    return json.load(f)


def read_metrics(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` (those logged up to ``up_to_step``); [] if none.

  A torn last line (a crash in the middle of a write: no newline, not JSON) is dropped with a
  warning; the next :class:`MetricsWriter` rewrites the file without it.
  """
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i != len(lines) - 1:   # not the unterminated last line: the file is damaged
        raise ValueError(f"{path} line {i + 1} is not JSON: {line[:60]!r}") from None
      logging.warning("%s: dropping a torn last line (%d bytes)", path, len(line))
  return rows if up_to_step is None else [r for r in rows if r["step"] <= up_to_step]


class MetricsWriter:
  """Appends logged rows to ``metrics.jsonl`` and their scalars to ``tensorboard/``.

  Opening at ``start`` (the step a run resumes from) drops the rows logged after it, in both
  records (TensorBoard's ``purge_step``), so a resumed run's record is the uninterrupted one's.
  A row's list values (per-layer metrics) become scalars ``name/0``, ``name/1``, ...
  """

  def __init__(self, workdir: str, start: int, *, tensorboard: bool = True):
    self._rows = read_metrics(workdir, start)
    self._file = self._board = None
    if not sharding.is_primary():
      return
    path = write_text(workdir, METRICS, "".join(json.dumps(r) + "\n" for r in self._rows))
    self._file = open(path, "a")
    if tensorboard:
      self._board = tensorboardX.FileWriter(os.path.join(workdir, TENSORBOARD), flush_secs=30)
      if start:  # TensorBoard hides the earlier files' events at steps >= start + 1
        self._board.add_event(event_pb2.Event(step=start + 1, file_version="brain.Event:2"))
        self._board.add_event(event_pb2.Event(
            step=start + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  @property
  def rows(self) -> list[dict]:
    """Every row of the run so far (those kept from before a resume, then the new ones)."""
    return self._rows

  def write(self, row: dict) -> None:
    self._rows.append(row)
    if self._file is None:
      return
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._board is not None:   # one event per row, holding all its scalars
      values = []
      for name, value in row.items():
        for i, v in enumerate(value if isinstance(value, list) else [value]):
          if name != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
            tag = f"{name}/{i}" if isinstance(value, list) else name
            values.append(summary_pb2.Summary.Value(tag=tag, simple_value=float(v)))
      self._board.add_summary(summary_pb2.Summary(value=values), row["step"])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._board is not None:
      self._board.close()


def read_tensorboard(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalars in ``workdir/tensorboard``, as TensorBoard shows
  them: event files in order, a resumed run's purge (a SessionLog START at step t) dropping the
  earlier files' values at steps >= t. Reads the TFRecord framing directly (no TensorFlow)."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, TENSORBOARD, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4   # length, its CRC, the record, its CRC
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        scalars = {tag: [(s, v) for s, v in values if s < event.step]
                   for tag, values in scalars.items()}
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock."""


# Locks this process holds: workdir path -> [open lock file, depth] (re-entrant, so the trainer
# can lock what its caller already locked).
_HELD: dict[str, list] = {}


@contextlib.contextmanager
def lock(workdir: str):
  """One writer per workdir: an exclusive ``flock`` on ``workdir/.lock`` for the ``with`` block.

  The kernel drops the lock when its process ends, however it ends (kill -9 included), so a
  dead holder never blocks a rerun; its record (host, pid, since) is then taken over with a
  warning. A live holder makes this raise :class:`WorkdirBusy` naming it. Re-entrant within a
  process; only the primary process of a multi-host run locks (the others do not write).
  """
  path = os.path.abspath(workdir)
  if not sharding.is_primary() or path in _HELD:
    if path in _HELD:
      _HELD[path][1] += 1
    try:
      yield
    finally:
      if path in _HELD:
        _HELD[path][1] -= 1
    return
  os.makedirs(path, exist_ok=True)
  f = open(os.path.join(path, LOCK), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "an unknown process"
    f.close()
    raise WorkdirBusy(f"workdir {workdir} is in use by {holder}; wait for it to finish or use "
                      f"another --workdir") from None
  f.seek(0)
  stale = f.read().strip()
  if stale:
    logging.warning("workdir %s: taking over the lock of %s (that process is gone)", workdir,
                    stale)
  f.seek(0)
  f.truncate()
  f.write(f"host {socket.gethostname()} pid {os.getpid()} since "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
  f.flush()
  _HELD[path] = [f, 1]
  try:
    yield
  finally:
    _HELD.pop(path)
    f.seek(0)
    f.truncate()   # released cleanly: no record for the next holder to warn about
    f.close()


def checkpoint_manager(workdir: str, exp: config_lib.Experiment):
  """The orbax manager of ``workdir/checkpoints`` (keeps ``train.keep_checkpoints``)."""
  return checkpointing.manager(workdir, exp.train.keep_checkpoints)


def load_trained_params(exp: config_lib.Experiment, workdir: str):
  """The params of the latest checkpoint in ``workdir`` (None if there is none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  mngr = checkpoint_manager(workdir, exp)
  try:
    step, state = checkpointing.restore_latest(mngr, train_step.initial_state(exp))
  except checkpointing.CheckpointError as e:
    raise ValueError(f"{workdir}: the latest checkpoint cannot be restored ({e}); rerun the "
                     f"training there to fall back to an intact one") from None
  finally:
    mngr.close()
  return state["params"] if step else None
