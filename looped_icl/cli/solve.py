r"""``looped-icl solve --config=NAME[:ARG] --workdir=DIR``: the population optimum of a config.

Writes DIR/optimum.json (loss, loss_stderr, preconditioners, eigenvalues, whitened Dist to I,
restarts' losses; B matrices for GD++). If DIR holds a model trained with the same config, it is
evaluated on the same sample of S (``trained_model``: loss, difference, ratio). Exit code 2 for an
invalid config.
"""

from absl import logging

from looped_icl import solver
from looped_icl.cli import common as cli

_CONFIG, _WORKDIR = cli.define_config_and_workdir(config_file=True,
                                                   workdir_help="Output directory.")


def solve(config, workdir: str) -> dict:
  result = solver.solve_into_workdir(config, workdir)
  logging.info("population optimum loss %.6g +- %.2g (restarts %s) -> %s/optimum.json",
               result["loss"], result["loss_stderr"], result["restart_losses"], workdir)
  if "trained_model" in result:
    logging.info("trained model in %s: loss %.6g, ratio to the optimum %.4f (paired)", workdir,
                 result["trained_model"]["loss"], result["trained_model"]["ratio"])
  return result


def main(argv):
  del argv
  cli.run_or_exit(lambda: solve(_CONFIG.value, _WORKDIR.value))


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__, config_file_flag=True)
