"""The main job end to end: what a researcher waits for, split into compiling and the rest.

The README's main job is two commands, ``looped-icl train`` (training, then evaluation and
figures) and ``looped-icl solve`` (the population optimum). :func:`main_job` runs the same library
calls in one process into a fresh workdir and times each phase: wall time, and the part of it
JAX spent compiling (tracing, lowering to MLIR and XLA's backend compile, from
``jax.monitoring``'s duration events). Two CLI processes pay the interpreter and JAX imports on
top (a few seconds each), which this does not count.
"""

from __future__ import annotations

import os
import time

import ml_collections
from jax import monitoring

from looped_icl import solver
from looped_icl import train

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
PHASES = ("train", "evaluate", "solve")


class _CompileClock:
  """Sums the durations of JAX's compile events while registered."""

  def __init__(self):
    self.seconds = 0.0

  def __call__(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def __enter__(self):
    monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    monitoring.unregister_event_duration_listener(self)


def main_job(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and solves ``config`` into ``workdir`` (new or empty) as the README's
  main job does; returns {phase: {wall_s, compile_s}} for train, evaluate and solve, the
  ``total``, and ``job_over_training`` (total wall / training wall)."""
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise ValueError(f"workdir must be new or empty to time a whole job, got {workdir}")
  marks = []
  with _CompileClock() as clock:
    def mark(*_):
      marks.append((time.perf_counter(), clock.seconds))

    mark()
    train.train_and_evaluate(config, workdir, on_phase=mark)
    solver.solve_into_workdir(config, workdir)
    mark()
  out = {phase: {"wall_s": t1 - t0, "compile_s": c1 - c0}
         for phase, (t0, c0), (t1, c1) in zip(PHASES, marks, marks[1:])}
  out["total"] = {"wall_s": marks[-1][0] - marks[0][0], "compile_s": marks[-1][1] - marks[0][1]}
  out["job_over_training"] = out["total"]["wall_s"] / out["train"]["wall_s"]
  return out


def format_table(result: dict) -> str:
  lines = [f"{'phase':<10}{'wall s':>9}{'compile s':>11}{'rest s':>9}"]
  for phase in PHASES + ("total",):
    row = result[phase]
    lines.append(f"{phase:<10}{row['wall_s']:>9.1f}{row['compile_s']:>11.1f}"
                 f"{row['wall_s'] - row['compile_s']:>9.1f}")
  lines.append(f"job / training wall time: {result['job_over_training']:.2f}x")
  return "\n".join(lines)
