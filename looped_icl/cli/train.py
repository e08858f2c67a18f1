r"""``looped-icl train --config=NAME[:ARG] --workdir=DIR``: train one model into a workdir.

Overrides: ``--config.train.steps=500 --config.task.n=40``. Rerunning on the same workdir
resumes from the latest checkpoint. ``--multihost``: one process per host (BUILD_NOTES.md).
Exit codes: 0 ok, 2 invalid config, 3 diverged.
"""

from absl import flags
from ml_collections import config_flags

from looped_icl.cli import common as cli
from looped_icl import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  _INIT_MULTIHOST()
  cli.run_or_exit(lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__, config_file_flag=True)
