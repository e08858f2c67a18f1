r"""Chen et al. 2024: the fixed looped construction runs GD; only the step(s) are learned.

This is the toolkit's regression-side reading of Chen et al. (tokens as columns, GD on w in the
label row, SPEC §3), not the paper's own construction (tokens as rows, the query vector q is
generated; :mod:`looped_icl.chen_construction`, docs/chen_2024_statements.md), which has no
trainable part here.

Looped ``fixed`` model (P = e_D e_D^T, Q = [[I, 0], [0, 0]]), T = 10 loops with one trainable
step per loop (starting near a conservative eta = 0.1), d = 5, n = 20 (n/d = 4), Sigma = I,
w* ~ N(0, I), exact population objective. At n/d = 2 the 10-step loss is dominated by rare S with
a large lambda_max (one sample in 4096 carried 40x the mean), so n/d = 4 is the default here.

Run:
  looped-icl train --config=chen_fixed --workdir=/tmp/looped_icl/chen
Expected: the learned steps eta_t are positive and spread out (a varying schedule); the loss falls
with every loop (summary's loss_vs_loops) and is at most that of 10-step GD with the best constant
step (baselines.gd) on the same tasks. Measured 2026-12-01: eta_t in [0.21, 1.28], loss 0.0082 vs
GD's 0.0223; looped-icl solve's optimal schedule (steps up to 4.1) reaches 0.00106 +- 0.00002 (held
out, trusted), so 2000 Adam steps are far from the optimum.
"""

from looped_icl import config_lib


def get_config(arg: str | None = None):
  """``arg``: '' or 'quick'."""
  config = config_lib.base_config()
  config.task.d = 5
  config.task.n = 20
  config.model.kind = "looped"
  config.model.num_layers = 10
  config.model.parametrization = "fixed"
  config.model.per_loop_eta = True
  config.model.eta = 0.1
  # Spread of the initial steps, eta_t = 0.1 exp(0.5 g_t): breaks the permutation symmetry of the
  # loss in (eta_1, ..., eta_T) (see models.init_params).
  config.model.init_scale = 0.5
  config.train.steps = 2000
  config.train.batch_size = 4096
  config.train.learning_rate = 0.01
  config.train.schedule = "cosine"
  config.train.objective = "population"
  config.train.log_every = 200
  config.train.checkpoint_every = 1000
  if arg == "quick":
    config_lib.make_quick(config, steps=200, batch_size=1024)
  elif arg:
    raise ValueError(f"config arg must be '' or 'quick', got {arg!r}")
  return config
