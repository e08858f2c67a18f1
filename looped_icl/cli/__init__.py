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

On Linux with glibc the command restarts itself once, before anything is imported, with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` added: malloc then asks for transparent huge pages for
its large blocks. XLA:CPU maps a fresh temporary buffer for every execution of a program, and with
4 KB pages a float64 evaluation over 20000 samples of S spends more time in page faults than in
arithmetic (the README solve: 48.5 -> 36.3 s, page faults 2.0M -> 0.11M on a short solve; the
same numbers, BUILD_NOTES.md). ``LOOPED_ICL_HUGE_PAGES=0``, or a ``glibc.malloc.hugetlb`` setting
of your own, leaves the environment as it is.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = ("train", "solve", "sweep", "reproduce", "benchmark")


_HUGE_PAGES = "glibc.malloc.hugetlb=1"


def huge_pages_environment(environ) -> dict | None:
  """``environ`` with :data:`_HUGE_PAGES` added to ``GLIBC_TUNABLES``, or None where it does not
  apply (not glibc, ``LOOPED_ICL_HUGE_PAGES=0``, or a hugetlb tunable already set)."""
  try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (AttributeError, ValueError, OSError):   # not a GNU system
    libc = ""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (not libc.startswith("glibc") or environ.get("LOOPED_ICL_HUGE_PAGES") == "0"
      or "glibc.malloc.hugetlb" in tunables):
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, _HUGE_PAGES])))


def _restart_with_huge_pages() -> None:
  """Runs this process's command line again (``sys.orig_argv``: the interpreter's options too)
  with huge pages for malloc, in place of this process (the loader reads GLIBC_TUNABLES only at
  start); returns if that does not apply or fails."""
  environ = huge_pages_environment(os.environ)
  if environ is None:
    return
  try:
    os.execve(sys.executable, sys.orig_argv, environ)
  except OSError:
    return


def main(argv: list[str] | None = None) -> None:
  """Runs ``argv[1]``'s launcher with the remaining flags (the console script's entry point)."""
  if argv is None:   # the process's own command line: the console script or python -m
    _restart_with_huge_pages()
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    sys.stdout.write(__doc__)
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] not in COMMANDS:
    sys.stderr.write(f"error: unknown subcommand {argv[1]!r}; one of {', '.join(COMMANDS)}\n")
    sys.exit(2)
  command = importlib.import_module(f"looped_icl.cli.{argv[1]}")
  command.run([f"looped-icl {argv[1]}", *argv[2:]])
