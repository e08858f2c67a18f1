"""Every experiment config's quick variant trains in seconds and learns."""


import jax
import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import models
from looped_icl import tasks
from looped_icl import train
from looped_icl import train_step

CONFIGS = config_lib.config_names()


def _median_task_loss(params, exp: config_lib.Experiment, batch) -> float:
  """Median over held-out tasks of the squared query error of the trained depth."""
  forward = exp.train.forward if exp.model.activation == "linear" else "tokens"
  if forward == "gram":
    batch = tasks.to_gram(batch)
  # Compiled: op by op, the predict of a 3-layer GD++ model took 3 s here, mostly tiny compiles.
  preds = jax.jit(models.predict, static_argnames=("cfg", "forward"))(params, exp.model, batch,
                                                                     forward=forward)
  return float(np.median(np.asarray((preds - batch.y_query) ** 2)))


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_variant_trains_and_learns(name, tmp_path):
  exp = config_lib.from_config(config_lib.load(f"{name}:quick"))
  params, history = train.train(exp, str(tmp_path))
  losses = np.asarray([r["loss"] for r in history])
  assert len(history) == -(-exp.train.steps // exp.train.log_every)
  assert np.all(np.isfinite(losses))
  # Learning = the typical held-out task's error falls by 10% from the initial model's. The
  # median, not the mean: some families (GD++) are heavy-tailed in S, so batch means of the same
  # model jump by orders of magnitude between batches (see the ahn_gdpp config).
  held_out = tasks.sample_tasks(jax.random.key(2024), exp.task, 4096)
  init = models.init_params(train_step.root_keys(exp.seed)["init"], exp.model)
  before, after = (_median_task_loss(p, exp, held_out) for p in (init, params))
  assert after < 0.9 * before, (before, after, losses)
  if exp.train.mode == "gradient_flow":
    # Plain GD with a small step on one fixed objective never goes up.
    last_losses = np.asarray([r["last_loss"] for r in history])
    assert np.all(np.diff(last_losses) <= 1e-6 * last_losses[:-1]), last_losses
