"""Sweeps declared in configs (big_vision style): a grid of overrides, run point by point or vmapped.

A config module exposes its grid next to ``get_config``::

  def get_sweep(arg):
    return sweep.product(sweep.axis("model.num_layers", [1, 2, 4]),
                         sweep.axis("seed", range(3)))

Each point is a dict of dotted config fields -> values (:func:`axis`, :func:`product`,
:func:`zipped`, :func:`chain` build them). :func:`run` trains every point of the grid in
``WORKDIR/points/NAME`` with the usual workdir contract (``looped-icl train``'s: config.json,
metrics.jsonl, checkpoints, summary.json, figures), then writes ``WORKDIR/sweep.csv`` (one row
per point: its fields and summary metrics) and ``WORKDIR/sweep.png``.

Points whose configs differ only in the schema's ``hyper`` fields (seed, learning rate, eta,
noise, covariance: :func:`looped_icl.config_lib.hyper_fields`) share one program: they form one
group, trained by one vmapped program (:func:`looped_icl.train.train_runs`); other groups run in
turn. A finished point (:func:`looped_icl.workdir.finished`) is skipped; an interrupted one
resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable

import ml_collections
import numpy as np
from absl import logging

from looped_icl import config_lib
from looped_icl import plotting
from looped_icl import sharding
from looped_icl import tables
from looped_icl import train
from looped_icl import workdir as workdir_lib

SUMMARY_METRICS = ("final_eval_loss", "final_eval_loss_stderr", "population_loss",
                   "population_loss_stderr", "train_wall_time_s")
# Tail diagnostics of the population loss (looped_icl/estimators.py), columns population_loss_*.
ESTIMATE_METRICS = ("ess", "max_share", "tail_index", "trusted")


def axis(field: str, values: Iterable) -> list[dict]:
  """One swept field: [{field: v} for v in values]."""
  return [{field: v} for v in values]


def product(*grids: list[dict]) -> list[dict]:
  """Every combination of the grids' points (the last grid varies fastest)."""
  return [_merge(combo) for combo in itertools.product(*grids)]


def zipped(*grids: list[dict]) -> list[dict]:
  """Points taken together, position by position (the grids must have equal lengths)."""
  lengths = {len(g) for g in grids}
  if len(lengths) > 1:
    raise ValueError(f"sweep.zipped needs grids of equal length, got {sorted(lengths)}")
  return [_merge(combo) for combo in zip(*grids)]


def chain(*grids: list[dict]) -> list[dict]:
  """The grids' points one after the other."""
  return [dict(p) for g in grids for p in g]


def _merge(points) -> dict:
  out = {}
  for p in points:
    for field in p:
      if field in out:
        raise ValueError(f"sweep field {field} is set twice in one point")
    out.update(p)
  return out


def apply(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted fields set; an unknown field raises naming it."""
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    *path, last = field.split(".")
    node = config
    for part in path:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ValueError(f"sweep field {field} is not a config field")
      node = node[part]
    if last not in node:
      raise ValueError(f"sweep field {field} is not a config field")
    node[last] = tuple(value) if isinstance(value, list) else value
  return config


def point_name(overrides: dict) -> str:
  """A directory name from the point's fields (hashed when long), e.g. ``seed=1,task.n=20``."""
  text = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(overrides.items())) or "base"
  text = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
  if len(text) > 120:
    text = f"{text[:100]}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
  return text


def _fmt(value) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + "_".join(_fmt(v) for v in value) + ")"
  return f"{value:g}" if isinstance(value, float) else str(value)


def load(spec: str) -> tuple[ml_collections.ConfigDict, list[dict]]:
  """(base config, grid points) of ``"NAME[:ARG]"`` or a path; the module needs get_sweep."""
  module, arg = config_lib.load_module(spec)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"config {spec!r} has no get_sweep(arg): it declares no sweep")
  grid = list(module.get_sweep(arg))
  if not grid:
    raise ValueError(f"config {spec!r}: get_sweep returned no points")
  return module.get_config(arg), grid


def group_key(exp: config_lib.Experiment) -> str:
  """Equal for experiments that share one compiled program (all but the ``hyper`` fields)."""
  return json.dumps(config_lib.program_fields(exp), sort_keys=True, default=str)


def run(spec: str, workdir: str, *, vmap: bool = True, mesh=None) -> list[dict]:
  """Runs the sweep of config ``spec`` into ``workdir``; returns the sweep.csv rows.

  Every point is validated before anything runs (a bad one raises naming the point and field).
  """
  base, grid = load(spec)
  points = []
  for overrides in grid:
    config = apply(base, overrides)
    try:
      exp = config_lib.from_config(config)
    except ValueError as e:
      raise ValueError(f"sweep point {point_name(overrides)}: {e}") from None
    points.append({"overrides": overrides, "config": config, "exp": exp,
                   "workdir": os.path.join(workdir, "points", point_name(overrides))})
  names = [p["workdir"] for p in points]
  if len(set(names)) != len(names):
    raise ValueError("sweep points must be distinct; two points have the same fields")
  todo = [p for p in points if not workdir_lib.finished(p["workdir"], p["config"])]
  logging.info("sweep %s: %d points, %d finished, %d to run", spec, len(points),
               len(points) - len(todo), len(todo))
  groups: dict[str, list[dict]] = {}
  for p in todo:
    groups.setdefault(group_key(p["exp"]), []).append(p)
  for index, group in enumerate(groups.values()):
    logging.info("group %d/%d: %d point(s)%s", index + 1, len(groups), len(group),
                 " vmapped" if vmap and len(group) > 1 else "")
    batches = [group] if vmap else [[p] for p in group]
    for batch in batches:
      _train_batch(batch, mesh)
  rows = [_row(p) for p in points]
  if sharding.is_primary():
    tables.write_csv(os.path.join(workdir, "sweep.csv"), rows)
    figure(os.path.join(workdir, "sweep.png"), rows, [p["overrides"] for p in points])
  return rows


def _train_batch(batch: list[dict], mesh) -> None:
  with contextlib.ExitStack() as stack:
    for p in batch:
      stack.enter_context(workdir_lib.lock(p["workdir"]))
    _train_locked_batch(batch, mesh)


def _train_locked_batch(batch: list[dict], mesh) -> None:
  for p in batch:
    workdir_lib.start(p["config"], p["workdir"])
  t0 = time.perf_counter()
  runs = train.train_runs([p["exp"] for p in batch], [p["workdir"] for p in batch], mesh=mesh)
  train_time = (time.perf_counter() - t0) / len(batch)
  for p, r in zip(batch, runs):
    if r.diverged:
      workdir_lib.write_json(p["workdir"], workdir_lib.SUMMARY,
                         {"status": "diverged", "message": r.diverged})
    else:
      train.finish(p["exp"], p["workdir"], r.params, r.history, train_time)


def _row(point: dict) -> dict:
  summary = workdir_lib.read_json(point["workdir"], workdir_lib.SUMMARY)
  row = {"point": os.path.basename(point["workdir"])}
  row.update({k: _fmt(v) if isinstance(v, (list, tuple)) else v
              for k, v in point["overrides"].items()})
  row["status"] = summary.get("status", "done")
  row.update({k: summary.get(k, float("nan")) for k in SUMMARY_METRICS})
  estimate = summary.get("population_loss_estimate", {})
  row.update({f"population_loss_{k}": estimate.get(k, float("nan")) for k in ESTIMATE_METRICS})
  history = workdir_lib.read_metrics(point["workdir"])
  row["final_train_loss"] = history[-1]["loss"] if history else float("nan")
  row["steps"] = history[-1]["step"] if history else 0
  return row


def figure(path: str, rows: list[dict], grid: list[dict]) -> str:
  """Final eval loss against each numeric swept field (one panel each; seeds are points, their
  mean a line, one line per combination of the other swept fields)."""
  fields = [f for f in dict.fromkeys(k for g in grid for k in g) if f != "seed"
            and all(isinstance(g.get(f), (int, float)) for g in grid)
            and len({g.get(f) for g in grid}) > 1]
  fields = fields or ["seed"]
  fig, axes = plotting.new_figure(1, len(fields), figsize=(5 * len(fields), 4))
  for ax, field in zip(axes[0], fields):
    others = [f for f in dict.fromkeys(k for g in grid for k in g) if f not in (field, "seed")]
    lines: dict[tuple, dict] = {}
    for g, r in zip(grid, rows):
      loss = r["final_eval_loss"]
      if r["status"] != "done" or not math.isfinite(loss):
        continue
      label = tuple((f, _fmt(g.get(f))) for f in others)
      lines.setdefault(label, {}).setdefault(g.get(field), []).append(loss)
    for label, by_x in lines.items():
      xs = sorted(by_x)
      name = ", ".join(f"{f.split('.')[-1]}={v}" for f, v in label) or "mean over seeds"
      (line,) = ax.plot(xs, [np.mean(by_x[x]) for x in xs], "o-", label=name)
      for x in xs:
        ax.plot([x] * len(by_x[x]), by_x[x], ".", color=line.get_color(), alpha=0.5)
    ax.set_yscale("log")
    ax.set_xlabel(field)
    ax.set_ylabel("final eval loss")
    if len(lines) <= 10:
      ax.legend(fontsize=7)
  return plotting.save(fig, path)
