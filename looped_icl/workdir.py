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

import glob
import json
import os
import struct

import ml_collections
import tensorboardX
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import sharding
from looped_icl import train_step

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
OPTIMUM = "optimum.json"
OPTIMUM_CONFIG = "optimum_config.json"
TENSORBOARD = "tensorboard"
# What a finished run of each kind has: (the file holding its config, its result file).
KINDS = {"train": (CONFIG, SUMMARY), "solve": (OPTIMUM_CONFIG, OPTIMUM)}


def _config_json(config: ml_collections.ConfigDict, indent: int | None = None) -> str:
  return config.to_json_best_effort(indent=indent)


def write_config(config: ml_collections.ConfigDict, workdir: str,
                 filename: str = CONFIG) -> config_lib.Experiment:
  """Validates ``config`` (a bad field raises ValueError) and writes ``workdir/filename``."""
  exp = config_lib.from_config(config)
  os.makedirs(workdir, exist_ok=True)
  if sharding.is_primary():
    with open(os.path.join(workdir, filename), "w") as f:
      f.write(_config_json(config, indent=2))
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


def write_json(workdir: str, filename: str, obj) -> None:
  """``workdir/filename`` as indented JSON (primary process only)."""
  if sharding.is_primary():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, filename), "w") as f:
      json.dump(obj, f, indent=2)


def read_json(workdir: str, filename: str):
  with open(os.path.join(workdir, filename)) as f:
    return json.load(f)


def read_metrics(workdir: str, up_to_step: int | None = None) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` (those logged up to ``up_to_step``); [] if none."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
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
    path = os.path.join(workdir, METRICS)
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in self._rows)
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


def checkpoint_manager(workdir: str, exp: config_lib.Experiment):
  """The orbax manager of ``workdir/checkpoints`` (keeps ``train.keep_checkpoints``)."""
  return checkpointing.manager(workdir, exp.train.keep_checkpoints)


def load_trained_params(exp: config_lib.Experiment, workdir: str):
  """The params of the latest checkpoint in ``workdir`` (None if there is none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  mngr = checkpoint_manager(workdir, exp)
  step, state = checkpointing.restore_latest(mngr, train_step.initial_state(exp))
  mngr.close()
  return state["params"] if step else None
