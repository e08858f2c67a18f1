r"""Ahn et al. 2023 Figs 6-7: the setting of the loss-vs-N and loss-vs-L curves.

Layered preconditioner model (general A_l), d = 5, rotated Sigma with spectrum
(1, 1, 1/4, 1/16, 1), w* ~ N(0, Sigma^{-1}), no noise: the official notebooks
(variable_N_exp / variable_L_exp) draw w = U D^{-1} g, i.e. w* ~ N(0, Sigma^{-1}). Adam on the
exact Rao-Blackwellised population objective, fresh S every step, each A_l's gradient clipped to
norm 1. The reproductions (looped_icl/reproduce/ahn_loss_vs_n.py, ahn_loss_vs_depth.py) override
task.n and model.num_layers per point of a sweep and train all its points at once; this file is
also a plain training config (n = 20, L = 3).

Why many small steps: the loss is a polynomial in A_l whose curvature along Sigma^{-1}'s top
direction is ~kappa^2 = 256 times flatter than along the others (see
the ahn_single_layer config), so Adam needs 10^4 steps to pin it; the per-sample loss is
heavy-tailed (S nearly singular, or with a large eigenvalue, at small n), which the per-matrix
clip tames. Quick (10k steps of 32 samples): within 2% of the optimum for L <= 3, 3.6% at L = 4.

Run:
  looped-icl train --config=ahn_loss_curves --workdir=/tmp/looped_icl/ahn_curves
  looped-icl reproduce --experiment=ahn_loss_vs_n --workdir=/tmp/looped_icl/ahn_vs_n
  looped-icl reproduce --experiment=ahn_loss_vs_L --workdir=/tmp/looped_icl/ahn_vs_L
Expected (n = 20, L = 3): population loss ~0.137, the optimum of the family (A_l = c_l Sigma^-1,
c ~ (0.43, 0.70, 1.73) sorted; Ahn et al. report (0.42, 0.69, 1.71)); 3-step PGD with
A = Sigma^{-1} ~0.28 and 3-step GD ~1.40 at their best steps.
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
  config.train.batch_size = 64
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
    # Evaluation is cheap, and at L = 4 the per-sample loss is heavy-tailed (4000 draws of S
    # leave ~15% standard errors).
    config.train.eval_population_samples = 20000
    config.solver.samples = 2000
    config.solver.restarts = 1
    config.solver.max_iters = 150
  elif arg:
    raise ValueError(f"config arg must be '' or 'quick', got {arg!r}")
  return config
