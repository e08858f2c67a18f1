r"""``looped-icl sweep --config=NAME[:ARG] --workdir=DIR``: run a config's grid (``get_sweep``).

Every grid point trains in ``DIR/points/NAME`` (the train workdir contract); points that
share shapes are vmapped into one program; ``DIR/sweep.csv`` and ``DIR/sweep.png`` summarise.
Rerunning skips finished points and resumes interrupted ones. ``--novmap`` trains one point at a
time. Exit codes: 0 ok, 2 invalid config or grid.
"""

from absl import flags

from looped_icl import sweep
from looped_icl.cli import common as cli

_CONFIG, _WORKDIR = cli.define_config_and_workdir(config_file=False)
_VMAP = flags.DEFINE_bool("vmap", True, "Batch the points that share shapes with vmap.")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  _INIT_MULTIHOST()
  cli.run_or_exit(lambda: sweep.run(_CONFIG.value, _WORKDIR.value, vmap=_VMAP.value))


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__)
