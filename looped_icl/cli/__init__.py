r"""The ``looped-icl`` console command: ``looped-icl SUBCOMMAND --flag=value ...``.

Subcommands (each a thin absl launcher around one library function; ``--help`` lists its flags):

  train      train one model into a workdir           (train.train_and_evaluate)
  solve      the population optimum of a config       (solver.solve_into_workdir)
  sweep      a config's grid, vmapped where it can    (sweep.run)
  reproduce  one paper experiment                     (reproduce.run)
  benchmark  training-step speed, estimator variance  (benchmark.run, variance_benchmark.run)

``--config`` takes a config name (``default``, ``default:quick``; see :mod:`looped_icl.configs`)
or a path (``my_config.py:ARG``). Exit codes: 0 ok, 2 invalid input, 3 training diverged (or no
intact checkpoint), 4 the workdir is in use by another process.
``python -m looped_icl.cli SUBCOMMAND`` is the same command.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("train", "solve", "sweep", "reproduce", "benchmark")


def main(argv: list[str] | None = None) -> None:
  """Runs ``argv[1]``'s launcher with the remaining flags (the console script's entry point)."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    sys.stdout.write(__doc__)
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] not in COMMANDS:
    sys.stderr.write(f"error: unknown subcommand {argv[1]!r}; one of {', '.join(COMMANDS)}\n")
    sys.exit(2)
  command = importlib.import_module(f"looped_icl.cli.{argv[1]}")
  command.run([f"looped-icl {argv[1]}", *argv[2:]])
