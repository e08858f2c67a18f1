r"""Ahn et al. 2023 Figs 6-7: the setting of the loss-vs-N and loss-vs-L curves.

Layered preconditioner model (general A_l), d = 5, rotated Sigma with spectrum
(1, 1, 1/4, 1/16, 1), w* ~ N(0, Sigma^{-1}), no noise: the official notebooks
(variable_N_exp / variable_L_exp) draw w = U D^{-1} g, i.e. w* ~ N(0, Sigma^{-1}). Adam on the
exact Rao-Blackwellised population objective with fresh S every step. The reproductions
(looped_icl/reproduce/ahn_loss_vs_n.py, ahn_loss_vs_depth.py) override task.n and
model.num_layers per point of the sweep and train every point of a sweep at once; this file is
also a plain training config (n = 20, L = 3).

Why many steps: the loss is a polynomial in A_l whose curvature along Sigma^{-1}'s top direction
is ~kappa^2 = 256 times flatter than along the others (see configs/ahn_single_layer.py), so Adam
needs thousands of steps to pin it; 8000 steps of 500 samples land within ~1% of the solver's
optimum (measured at n = 2 and n = 20).

Run:
  python -m launch.train --config=configs/ahn_loss_curves.py --workdir=/tmp/looped_icl/ahn_curves
  python -m launch.solve --config=configs/ahn_loss_curves.py --workdir=/tmp/looped_icl/ahn_curves
  python -m launch.reproduce --experiment=ahn_loss_vs_n --workdir=/tmp/looped_icl/ahn_vs_n
  python -m launch.reproduce --experiment=ahn_loss_vs_L --workdir=/tmp/looped_icl/ahn_vs_L
Expected: population loss ~0.136 at n = 20, L = 3 (optimum.json's trained_model.ratio near 1;
3-step GD ~1.38 and 3-step PGD with A = Sigma^{-1} ~0.26 at their best steps).
"""

from looped_icl import config_lib


def get_config(arg: str | None = None):
  """``arg``: '' or 'quick'."""
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 1.0, 0.25, 0.0625, 1.0)
  config.task.weight_prior = "inverse_covariance"
  config.task.n = 20
  config.model.kind = "layered"
  config.model.num_layers = 3
  config.model.parametrization = "preconditioner"
  config.model.init_scale = 1e-4
  config.train.objective = "population"
  config.train.optimizer = "adam"
  config.train.learning_rate = 0.1
  config.train.schedule = "cosine"
  # Clipping each A_l's gradient to norm 1 before Adam tames the heavy-tailed gradients of small
  # N (S nearly singular or with a large eigenvalue); without it lr 0.1 stalls 5-10% above the
  # optimum at N <= 4.
  config.train.clip_per_matrix = 1.0
  config.train.steps = 20000
  config.train.batch_size = 256
  config.train.resample_every = 1
  config.train.log_every = 200
  config.train.checkpoint_every = 2000
  config.train.eval_population_samples = 20000
  config.train.eval_tasks = 100000
  config.solver.samples = 8000
  config.solver.restarts = 2
  config.solver.max_iters = 150
  if arg == "quick":
    # Many small steps: the flat direction needs steps more than samples.
    config_lib.make_quick(config, steps=10000, batch_size=32)
    config.solver.samples = 2000
    config.solver.restarts = 1
    config.solver.max_iters = 150
  elif arg:
    raise ValueError(f"config arg must be '' or 'quick', got {arg!r}")
  return config
