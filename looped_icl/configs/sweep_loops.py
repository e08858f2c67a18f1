r"""Sweep: a looped preconditioner model over loops L x examples n x seeds (Gatmiry et al.).

Base: looped preconditioner model, d = 5, rotated Sigma with spectrum (1, 1, 1/4, 1/16, 1),
w* ~ N(0, I), no noise; Adam (lr 0.05, cosine) on the exact population objective, 2000 steps.
Grid: L in {1, 2, 4, 8} x n in {10, 20, 40, 80} x seed in {0, 1, 2, 3} (64 points; the 4 seeds
of each (L, n) are one vmapped program). Quick: L in {1, 2} x seed in {0, 1} x lr in
{0.05, 0.1} at n = 20 (8 points, 2 vmapped groups of 4), 60 steps.

Run:
  looped-icl sweep --config=sweep_loops --workdir=/tmp/looped_icl/sweep_loops
  looped-icl sweep --config=sweep_loops:quick --workdir=/tmp/looped_icl/sweep_q
Expected (measured, 27 min on 2 CPU cores; table in BUILD_NOTES.md, "Sweeps"): 64 rows in
sweep.csv. Mean population loss over seeds falls with n at every L and with L for L <= 4 at
every n (L = 4: 0.39 / 0.091 / 0.021 / 0.010 at n = 10 / 20 / 40 / 80), the seeds agreeing to
< 1%; at L = 8 and n/d <= 4 the seeds disagree (n = 10: three at 0.22-0.36, one at 19; n = 20:
0.024-0.080): eight loops at small n reach different minima, some heavy-tailed in S.
"""

from looped_icl import config_lib
from looped_icl import sweep


def get_config(arg: str | None = None):
  """``arg``: '' or 'quick'."""
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 1.0, 0.25, 0.0625, 1.0)
  config.model.kind = "looped"
  config.model.num_layers = 2
  config.model.parametrization = "preconditioner"
  config.train.steps = 2000
  config.train.batch_size = 1024
  config.train.learning_rate = 0.05
  config.train.schedule = "cosine"
  config.train.objective = "population"
  config.train.log_every = 200
  config.train.eval_population_samples = 20000
  if arg == "quick":
    config_lib.make_quick(config, steps=60, batch_size=256)
    config.train.log_every = 20
    config.train.checkpoint_every = 20
    config.train.eval_tasks = 2000
    config.train.eval_population_samples = 2000
  elif arg:
    raise ValueError(f"config arg must be '' or 'quick', got {arg!r}")
  return config


def get_sweep(arg: str | None = None):
  """The grid (see the module docstring)."""
  if arg == "quick":
    return sweep.product(sweep.axis("model.num_layers", [1, 2]), sweep.axis("seed", [0, 1]),
                         sweep.axis("train.learning_rate", [0.05, 0.1]))
  return sweep.product(sweep.axis("model.num_layers", [1, 2, 4, 8]),
                       sweep.axis("task.n", [10, 20, 40, 80]), sweep.axis("seed", range(4)))
