r"""Gatmiry et al. 2024: a looped layer trained by gradient flow learns L steps of preconditioned GD
with a preconditioner near Sigma^{-1}.

Looped preconditioner model, L = 4 (``:L=K`` picks another), d = 5, n = 20 (``:n=K``), rotated
Sigma with spectrum (1, 1, 1/4, 1/16, 1), w* ~ N(0, I). Gradient-flow mode: plain GD on the
exact population objective over one fixed sample of 1024 S (metrics.jsonl logs flow_time). The
step is min(0.1, 0.4 / L) (from A = 0 the first step moves A by about 2 L lr, so a larger step
overshoots for L >= 8) and the run lasts flow time 200 (quick: 60), so runs with different L are
compared at equal flow time; ``train.steps`` follows an overridden learning rate.

Run:
  looped-icl train --config=gatmiry_looped --workdir=/tmp/looped_icl/gat4
  looped-icl train --config=gatmiry_looped:L=8 --workdir=/tmp/looped_icl/gat8
  looped-icl solve --config=gatmiry_looped --workdir=/tmp/looped_icl/gat4
Expected: the loss decreases monotonically towards optimum.json's loss. The directions of large
eigenvalue of Sigma converge quickly; the lambda = 1/16 direction moves at a rate ~ lambda^3 and is
far from converged at flow time 200, so the final loss is 1.014x (L = 1), 1.028x (L = 2), 1.061x
(L = 3) and 1.148 +- 0.004x (L = 4) the optimum (paired, 100k importance-sampled held-out S,
2026-12-01); see ``looped-icl reproduce --experiment=gatmiry_loops``.
"""

from looped_icl import config_lib

FLOW_TIME = 200.0
QUICK_FLOW_TIME = 60.0


def flow_steps(config, flow_time: float):
  """round(flow_time / train.learning_rate), as a reference that follows the learning rate."""
  return (flow_time / config.train.get_ref("learning_rate") + 0.5).to_int()


def get_config(arg: str | None = None):
  """``arg``: comma-separated 'quick', 'L=K' (loops), 'n=K' (examples), e.g. 'quick,L=2'."""
  parts = dict(p.split("=", 1) if "=" in p else (p, "1") for p in (arg or "").split(",") if p)
  unknown = set(parts) - {"quick", "L", "n"}
  if unknown:
    raise ValueError(f"config arg must combine 'quick', 'L=K' and 'n=K', got {arg!r}")
  num_loops = int(parts.get("L", 4))
  learning_rate = min(0.1, 0.4 / num_loops)
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 1.0, 0.25, 0.0625, 1.0)
  config.task.n = int(parts.get("n", 20))
  config.model.kind = "looped"
  config.model.num_layers = num_loops
  config.model.parametrization = "preconditioner"
  config.model.init_scale = 1e-3
  config.train.mode = "gradient_flow"
  config.train.optimizer = "sgd"
  config.train.objective = "population"
  config.train.resample_every = 0
  config.train.schedule = "constant"
  config.train.learning_rate = learning_rate
  # Steps follow the learning rate (a FieldReference): --config.train.learning_rate=X keeps the
  # flow time steps x lr at FLOW_TIME.
  config.train.steps = flow_steps(config, FLOW_TIME)
  config.train.batch_size = 1024
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  # The L-BFGS solver's cost grows with samples x L. Both restarts converge; they agree to
  # 0.1% for L <= 3 and within 3% up to L = 8 (distinct local minima).
  config.solver.samples = 4000
  config.solver.restarts = 2
  config.solver.max_iters = 300
  if "quick" in parts:
    config_lib.make_quick(config, steps=flow_steps(config, QUICK_FLOW_TIME), batch_size=512)
    config.solver.samples = 2000
    config.solver.max_iters = 150
  return config
