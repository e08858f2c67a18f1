"""Best-of-the-last-k checkpoint selection (Ahn et al.'s official notebooks)."""

import jax
import numpy as np
import pytest

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import models
from looped_icl import selection
from looped_icl import tasks
from looped_icl import train
from looped_icl import train_step
from looped_icl import workdir as workdir_lib


def _config():
  # The paper-model recipe, tiny: AdamW, per-matrix clip, step decay, data resampled every 10.
  config = config_lib.load("ahn_paper_model:quick")
  config.train.steps = 60
  config.train.batch_size = 256
  config.train.resample_every = 10
  config.train.log_every = config.train.checkpoint_every = 10
  config.train.keep_checkpoints = 4
  return config


def test_best_of_the_last_k_is_the_argmin_of_the_validation_loss(tmp_path):
  config = _config()
  exp = config_lib.from_config(config)
  final_params, _ = train.train(workdir_lib.write_config(config, str(tmp_path)), str(tmp_path))
  pick = selection.best_checkpoint(exp, str(tmp_path))
  # The candidates are the last keep_checkpoints saved steps.
  assert sorted(pick["validation_loss"]) == [30, 40, 50, 60] and pick["last_step"] == 60
  # Each candidate's loss, recomputed here in float64 NumPy from its restored checkpoint's
  # predictions on the validation tasks.
  batch = selection.validation_batch(exp)
  assert batch.y_query.shape == (exp.train.batch_size,)
  mngr = workdir_lib.checkpoint_manager(str(tmp_path), exp)
  predict = jax.jit(models.predict, static_argnames=("cfg", "forward"))  # one program, not per op
  try:
    for step, loss in pick["validation_loss"].items():
      params = checkpointing.restore(mngr, step, train_step.initial_state(exp))["params"]
      preds = np.asarray(predict(params, exp.model, batch, forward="gram"), np.float64)
      expected = np.mean((preds - np.asarray(batch.y_query, np.float64)) ** 2)
      np.testing.assert_allclose(loss, expected, rtol=1e-5)
      if step == 60:   # the latest candidate is the trainer's final state
        for name in final_params:
          np.testing.assert_array_equal(params[name], final_params[name])
  finally:
    mngr.close()
  best = min(pick["validation_loss"], key=pick["validation_loss"].get)
  assert pick["step"] == best
  assert pick["validation_loss"][best] <= min(pick["validation_loss"].values())
  for name in final_params:
    assert pick["params"][name].shape == final_params[name].shape


def test_validation_tasks_are_not_the_training_tasks():
  exp = config_lib.from_config(_config())
  val = np.asarray(selection.validation_batch(exp).y_query)
  key = train_step.step_data_key(train_step.root_keys(exp.seed)["data"], np.asarray(0),
                                 exp.train.resample_every)
  train_batch = tasks.sample_gram(key, exp.task, exp.train.batch_size)
  assert not np.allclose(val, np.asarray(train_batch.y_query))


def test_no_checkpoint_is_an_error(tmp_path):
  exp = config_lib.from_config(_config())
  with pytest.raises(ValueError, match="no checkpoint"):
    selection.best_checkpoint(exp, str(tmp_path))
