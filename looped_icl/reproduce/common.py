"""What every reproduction shares: sub-runs through the library, CSV/JSON tables, line figures.

A reproduction is a function ``run(ctx) -> dict`` (see :mod:`looped_icl.reproduce`). It trains and
solves through the same library functions as ``looped-icl train`` / ``looped-icl solve``
(:func:`train_run`, :func:`solve_run`), each sub-run in ``ctx.workdir/runs/NAME`` with the usual
workdir contract (so an interrupted reproduction resumes, and a finished sub-run is reused), and
writes its tables (``*.csv``), figures (``*.png``) and headline numbers (``results.json``) to
``ctx.workdir``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from looped_icl import config_lib
from looped_icl import plotting
from looped_icl import solver
from looped_icl import tables
from looped_icl import train
from looped_icl import workdir


@dataclasses.dataclass(frozen=True)
class Context:
  """Where a reproduction writes, and whether it is the ``--quick`` (<= 2 min, 2 cores) version."""
  workdir: str
  quick: bool = False

  def run_dir(self, name: str) -> str:
    return os.path.join(self.workdir, "runs", name)

  def path(self, filename: str) -> str:
    os.makedirs(self.workdir, exist_ok=True)
    return os.path.join(self.workdir, filename)


def load_config(name: str, ctx: Context, arg: str = "") -> ml_collections.ConfigDict:
  """The config NAME with ``arg`` (and ``quick`` added for a quick reproduction)."""
  args = [a for a in (arg, "quick" if ctx.quick else "") if a]
  return config_lib.load(f"{name}:{','.join(args)}" if args else name)


def train_run(ctx: Context, name: str, config: ml_collections.ConfigDict, *,
              evaluate: bool = True):
  """Trains ``config`` in ``runs/NAME`` (reused if finished); returns (summary, history, params).

  ``evaluate=False``: no final evaluation (summary None, no summary.json or figures), for
  reproductions that only use the trained params and the training record.
  """
  run_dir = ctx.run_dir(name)
  summary = train.train_and_evaluate(config, run_dir, evaluate=evaluate)
  exp = config_lib.from_config(config)
  return summary, workdir.read_metrics(run_dir), workdir.load_trained_params(exp, run_dir)


def solve_run(ctx: Context, name: str, config: ml_collections.ConfigDict) -> dict:
  """The population optimum of ``config`` in ``runs/NAME/optimum.json`` (reused if finished).

  A model trained in the same run directory is compared on the same samples (``trained_model``).
  """
  return solver.solve_into_workdir(config, ctx.run_dir(name))


def write_csv(ctx: Context, filename: str, rows: Sequence[Mapping]) -> str:
  """``ctx.workdir/filename`` from rows (see :func:`looped_icl.tables.write_csv`)."""
  return tables.write_csv(ctx.path(filename), rows)


read_csv = tables.read_csv


def write_results(ctx: Context, results: dict) -> dict:
  """Writes ``results.json`` (headline numbers, JSON-ready) and returns it."""
  workdir.write_json(ctx.workdir, "results.json", _jsonable(results))
  return results


def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, np.generic)):
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


@dataclasses.dataclass(frozen=True)
class Series:
  """One line of a :func:`line_figure` panel."""
  label: str
  x: Sequence[float]
  y: Sequence[float]
  style: str = "o-"
  yerr: Sequence[float] | None = None   # standard errors, drawn as error bars


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axes of a :func:`line_figure`: lines, axis labels and scales, optional reference lines."""
  series: Sequence[Series]
  xlabel: str
  ylabel: str
  title: str = ""
  logx: bool = False
  logy: bool = False
  hlines: Mapping[str, float] = dataclasses.field(default_factory=dict)


def line_figure(ctx: Context, filename: str, panels: Sequence[Panel], suptitle: str = "") -> str:
  """A row of line-plot panels saved as PNG in ``ctx.workdir``; returns the path."""
  fig, axes = plotting.new_figure(1, len(panels), figsize=(5.2 * len(panels), 4))
  for ax, panel in zip(axes[0], panels):
    for s in panel.series:
      line, = ax.plot(np.asarray(s.x, float), np.asarray(s.y, float), s.style, label=s.label,
                      ms=4)
      if s.yerr is not None:
        ax.errorbar(np.asarray(s.x, float), np.asarray(s.y, float),
                    yerr=np.asarray(s.yerr, float), fmt="none", ecolor=line.get_color(),
                    capsize=3)
    for i, (label, value) in enumerate(panel.hlines.items()):
      ax.axhline(value, ls="--", lw=1, color=f"C{(i + len(panel.series)) % 10}", label=label)
    ax.set_xscale("log" if panel.logx else "linear")
    ax.set_yscale("log" if panel.logy else "linear")
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.title:
      ax.set_title(panel.title, fontsize=10)
    ax.legend(fontsize=7)
  if suptitle:
    fig.suptitle(suptitle, fontsize=11)
  return plotting.save(fig, ctx.path(filename))


def loop_panels(loop_rows: Sequence[Mapping], column: str) -> list[Panel]:
  """One panel per evaluation setting of test-time loop rows (:mod:`looped_icl.extrapolation`):
  ``column`` ('mean' or 'median') of every model against loops, finite values only."""
  panels = []
  for setting in dict.fromkeys(r["setting"] for r in loop_rows):
    rows = [r for r in loop_rows if r["setting"] == setting and np.isfinite(r[column])]
    series = [Series(name, [r["loops"] for r in rows if r["model"] == name],
                     [r[column] for r in rows if r["model"] == name],
                     style="o-" if name == "gd_own_step" else ".-")
              for name in dict.fromkeys(r["model"] for r in rows)]
    panels.append(Panel(series=series, xlabel="loops at test time",
                        ylabel=f"{column} population loss", logy=True, title=setting))
  return panels
