"""Paper reproductions: ``run(name, workdir, quick=False)`` regenerates one experiment.

Each experiment module has ``run(ctx: common.Context) -> dict``: it runs its training / solver
sub-runs through the library (``ctx.workdir/runs/*``), writes CSV tables, PNG figures and
``results.json`` (headline numbers, paper vs toolkit) to ``ctx.workdir`` and returns the results.
``looped-icl reproduce``, the notebook and the tests call :func:`run`.
"""

from __future__ import annotations

import importlib
import time

from looped_icl.reproduce import common

# experiment name -> module in this package (imported only when run).
EXPERIMENTS = {
    "ahn_fig1_2": "ahn_fig1_2",
    "ahn_gdpp": "ahn_gdpp",
    "ahn_gdpp_rotation": "ahn_gdpp_rotation",
    "ahn_loss_vs_n": "ahn_loss_vs_n",
    "ahn_loss_vs_L": "ahn_loss_vs_depth",
    "gatmiry_loops": "gatmiry_loops",
    "gatmiry_gradient_dominance": "gatmiry_gradient_dominance",
    "gatmiry_ood": "gatmiry_ood",
    "gatmiry_minimizer": "gatmiry_minimizer",
    "gatmiry_section5": "gatmiry_section5",
    "chen_bound": "chen_bound",
    "symmetry": "symmetry",
}


def run(name: str, workdir: str, *, quick: bool = False) -> dict:
  """Runs experiment ``name`` into ``workdir``; returns its results (also in results.json)."""
  if name not in EXPERIMENTS:
    raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
  module = importlib.import_module(f"looped_icl.reproduce.{EXPERIMENTS[name]}")
  t0 = time.perf_counter()
  results = module.run(common.Context(workdir=workdir, quick=quick))
  results = dict(results, experiment=name, quick=quick, wall_time_s=time.perf_counter() - t0)
  return common.write_results(common.Context(workdir=workdir, quick=quick), results)
