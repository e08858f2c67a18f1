r"""Ahn et al. 2023, Thm 1: one linear-attention layer learns one step of preconditioned GD with
A* = ((n+1)/n Sigma + (tr Sigma + sigma^2)/n I)^{-1}.

Full version: a layered, L = 1, *full* (P, Q) model trained with Adam on Monte Carlo tasks
(d = 5, n = 20, rotated Sigma with spectrum (1, 1, 1/2, 1/4, 1), noise sigma = 0.5,
w* ~ N(0, I)); its effective preconditioner eta P[d,d] Q[:d,:d] should approach A*, and the
off-sparse blocks of P and Q should shrink. Quick version: the preconditioner parametrization on
the exact population objective (seconds; the tests assert it lands within 5% of A*).

Why condition number 4 and not Ahn's spectrum (1, 1, 1/4, 1/16, 1): the loss is quadratic in A
with Hessian Sigma (x) (E[S^2] + sigma^2/n Sigma), whose condition number grows like kappa^2
(~1200 for Ahn's spectrum), so Adam needs >10^4 steps to pin the flat direction; that spectrum is
exercised by the ahn_multilayer config and by the solver (tests/test_solver.py).

Run:
  looped-icl train --config=ahn_single_layer --workdir=/tmp/looped_icl/ahn1
  looped-icl train --config=ahn_single_layer:quick --workdir=/tmp/looped_icl/ahn1q
Expected: relative Frobenius error of the effective preconditioner vs theory.ahn_theorem1 below
5% (quick) and a few % (full); final loss equal to the closed-form optimum's population loss.
"""

from looped_icl import config_lib


def get_config(arg: str | None = None):
  """``arg``: '' (full (P, Q) model, MC objective) or 'quick' (preconditioner, population)."""
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 1.0, 0.5, 0.25, 1.0)
  config.task.noise_std = 0.5
  config.model.kind = "layered"
  config.model.num_layers = 1
  config.model.parametrization = "full"
  config.model.init_scale = 0.1
  config.train.steps = 4000
  config.train.batch_size = 4096
  config.train.learning_rate = 0.01
  config.train.schedule = "cosine"
  config.train.objective = "mc"
  config.train.log_every = 200
  config.train.checkpoint_every = 1000
  if arg == "quick":
    config_lib.make_quick(config, steps=300, batch_size=1024, learning_rate=0.1)
    config.model.parametrization = "preconditioner"
    config.model.init_scale = 1e-3
    config.train.objective = "population"
  elif arg:
    raise ValueError(f"config arg must be '' or 'quick', got {arg!r}")
  return config
