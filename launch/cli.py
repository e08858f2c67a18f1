"""Shared CLI plumbing: one-line errors and exit codes instead of tracebacks."""

import sys

import jax
from absl import app
from absl import flags
from absl import logging

from looped_icl import sharding
from looped_icl import train

EXIT_INVALID = 2
EXIT_DIVERGED = 3


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


def run(main) -> None:
  def quiet_main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    return main(argv)

  app.run(quiet_main, flags_parser=_flags_parser)


def run_or_exit(fn) -> None:
  """Runs ``fn``: a ValueError (invalid config) exits 2, divergence exits 3, one line each."""
  try:
    fn()
  except train.TrainingDiverged as e:
    logging.error("%s", e)
    sys.stderr.write(f"error: {e}\n")
    sys.exit(EXIT_DIVERGED)
  except (ValueError, OSError) as e:  # invalid config, or a config file that failed to load
    sys.stderr.write(f"error: {str(e).splitlines()[0]}\n")
    sys.exit(EXIT_INVALID)


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
