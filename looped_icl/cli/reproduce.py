r"""``looped-icl reproduce --experiment=NAME --workdir=DIR [--quick]``: one paper experiment.

``--quick`` runs the <= 2 minute version (same qualitative outcome). Writes DIR/*.csv (the
numbers), DIR/*.png (the figures), DIR/results.json (paper vs toolkit) and DIR/runs/* (the
training and solver sub-runs, each with the usual workdir contract; rerunning reuses them).
Experiments: see ``looped_icl.reproduce.EXPERIMENTS``. Exit codes: 0 ok, 2 invalid, 3 diverged.
"""

import json

from absl import flags
from absl import logging

from looped_icl import reproduce
from looped_icl.cli import common as cli

_EXPERIMENT = flags.DEFINE_enum("experiment", None, sorted(reproduce.EXPERIMENTS),
                                "Which experiment to reproduce.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (reused if it exists).")
_QUICK = flags.DEFINE_bool("quick", False, "The <= 2 minute version.")
flags.mark_flags_as_required(["experiment", "workdir"])


def main(argv):
  del argv

  def go():
    results = reproduce.run(_EXPERIMENT.value, _WORKDIR.value, quick=_QUICK.value)
    logging.info("%s results (also in %s/results.json):\n%s", _EXPERIMENT.value, _WORKDIR.value,
                 json.dumps(results, indent=1, default=str))

  cli.run_or_exit(go)


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__)
