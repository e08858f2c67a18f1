"""What every ``looped-icl`` subcommand shares: config specs by name, one-line errors, exit codes."""

import signal
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from looped_icl import compile_cache
from looped_icl import config_lib
from looped_icl import sharding
from looped_icl import train
from looped_icl import workdir

EXIT_INVALID = 2
EXIT_DIVERGED = 3
EXIT_BUSY = 4

_COMPILE_CACHE_DIR = flags.DEFINE_string(
    "compile_cache_dir", compile_cache.AUTO,
    f"JAX's persistent compilation cache: '{compile_cache.AUTO}' (JAX's own setting if made, "
    "else $XDG_CACHE_HOME/looped_icl/jax, ~/.cache/looped_icl/jax without it), "
    f"'{compile_cache.NONE}' (off) or a directory.")


def _flags_parser(argv):
  """Parses flags; a bad flag or config override prints one line and exits 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as e:
    cause = e if isinstance(e, KeyError) else (e.__cause__ or e.__context__)
    if isinstance(cause, KeyError):  # config_flags: an override of a field the config lacks
      message = f"--config override names an unknown config field {cause.args[0]}"
    else:
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.exit(EXIT_INVALID)


class _QuietLibraries:
  """Drops INFO records of orbax (chatty per checkpoint) and JAX's backend probing."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/" in record.pathname or "xla_bridge" in record.pathname)
    return record.levelno >= 30 or not noisy


def _resolve_config_flag(arg: str) -> str:
  """``--config=NAME[:ARG]`` -> ``--config=/path/of/NAME.py[:ARG]`` (config_flags takes paths)."""
  if not arg.startswith("--config="):
    return arg
  try:
    return "--config=" + config_lib.resolve(arg[len("--config="):])
  except ValueError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_INVALID)


def run(main, argv: list[str], doc: str, *, config_file_flag: bool = False) -> None:
  """Parses ``argv`` (program name first) and runs ``main`` under absl, quietly; ``doc`` is
  what ``--help`` prints above the flags (absl reads it from ``__main__``).

  ``config_file_flag``: ``--config`` is a ml_collections config-file flag (it takes a path, so a
  config name is resolved to its file first).
  """
  if config_file_flag:
    argv = [_resolve_config_flag(a) for a in argv]
  sys.argv[:] = argv
  sys.modules["__main__"].__doc__ = doc
  def quiet_main(args):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    cache = compile_cache.configure(_COMPILE_CACHE_DIR.value)
    logging.info("compilation cache: %s", cache or "off")
    return main(args)

  app.run(quiet_main, argv=argv, flags_parser=_flags_parser)


def _exit_on_sigterm(signum, frame):
  del frame
  raise SystemExit(128 + signum)   # unwinds: locks released, files closed, orbax finished


def run_or_exit(fn) -> None:
  """Runs ``fn``: a ValueError (invalid config) exits 2, divergence exits 3, a workdir held by
  another process exits 4, one line each. SIGTERM exits through the same clean-up as an error."""
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  try:
    fn()
  except workdir.WorkdirBusy as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_BUSY)
  except (train.TrainingDiverged, train.NoIntactCheckpoint) as e:
    logging.error("%s", e)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_DIVERGED)
  except (ValueError, OSError) as e:  # invalid config, or a config file that failed to load
    sys.stderr.write(f"error: {str(e).splitlines()[0]}\n")
    sys.exit(EXIT_INVALID)


def define_config_and_workdir(*, config_file: bool,
                              workdir_help: str = "Output directory (resumed if it exists)."):
  """The required ``--config`` and ``--workdir`` flags; returns their holders.

  ``config_file``: ``--config`` is a config-file flag (``--config.FIELD=VALUE`` overrides);
  otherwise a plain spec string (a sweep's config, read with its grid).
  """
  spec = "NAME[:ARG] (looped_icl/configs) or path/to/config.py[:ARG]"
  config = (config_flags.DEFINE_config_file("config", None, f"Experiment config: {spec}.",
                                            lock_config=True) if config_file
            else flags.DEFINE_string("config", None, f"Config with get_sweep: {spec}."))
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def define_multihost_flags():
  """``--multihost`` and the coordinator flags; returns a function that initialises JAX's
  distributed runtime when ``--multihost`` is set (call it first thing in main)."""
  multihost = flags.DEFINE_bool(
      "multihost", False, "Call jax.distributed.initialize (one process per host; the mesh spans "
      "all hosts). Without the flags below, JAX auto-detects Cloud TPU / SLURM.")
  coordinator = flags.DEFINE_string("coordinator_address", None,
                                    "host:port of process 0 (multihost, not auto-detected).")
  num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes (multihost).")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index (multihost).")

  def initialize() -> None:
    if multihost.value:
      sharding.initialize_multihost(coordinator.value, num_processes.value, process_id.value)
      logging.info("process %d of %d; %d local of %d global devices", jax.process_index(),
                   jax.process_count(), jax.local_device_count(), jax.device_count())

  return initialize
