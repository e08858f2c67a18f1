r"""``looped-icl train --config=NAME[:ARG] --workdir=DIR``: train one model into a workdir.

Overrides: ``--config.train.steps=500 --config.task.n=40``. Rerunning on the same workdir
resumes from the latest checkpoint. ``--multihost``: one process per host (BUILD_NOTES.md).
Exit codes: 0 ok, 2 invalid config, 3 diverged.
"""


from looped_icl import train
from looped_icl.cli import common as cli

_CONFIG, _WORKDIR = cli.define_config_and_workdir(config_file=True)
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  _INIT_MULTIHOST()
  cli.run_or_exit(lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__, config_file_flag=True)
