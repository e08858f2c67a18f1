"""The workdir contract: the TensorBoard record equals metrics.jsonl (also after a resume), and
"finished" means the result file and exactly this config."""

import json
import os
import shutil

import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import train
from looped_icl import workdir


def _config(steps=20):
  config = config_lib.load("default:quick")
  config.train.steps = steps
  config.train.log_every = config.train.checkpoint_every = 10
  config.train.batch_size = 64
  return config


def _assert_board_equals_metrics(path):
  rows = workdir.read_metrics(path)
  board = workdir.read_tensorboard(path)
  assert [s for s, _ in board["loss"]] == [r["step"] for r in rows]
  for name in ("loss", "loss_stderr", "max_share", "grad_norm", "learning_rate"):
    np.testing.assert_allclose([v for _, v in board[name]], [r[name] for r in rows], rtol=1e-6)
  layers = len(rows[0]["dist_to_identity"])
  for layer in range(layers):
    np.testing.assert_allclose([v for _, v in board[f"dist_to_identity/{layer}"]],
                               [r["dist_to_identity"][layer] for r in rows], rtol=1e-6)
  return rows


def test_tensorboard_holds_the_logged_scalars_and_a_resume_purges(tmp_path):
  exp = config_lib.from_config(_config())
  train.train(exp, str(tmp_path))
  rows = _assert_board_equals_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [10, 20]
  # Lose the last checkpoint: the rerun resumes at step 10 and re-logs step 20. Both records
  # hold each step once (TensorBoard through purge_step), equal to an uninterrupted run's.
  shutil.rmtree(tmp_path / "checkpoints" / "20")
  train.train(exp, str(tmp_path))
  again = _assert_board_equals_metrics(str(tmp_path))
  assert [r["step"] for r in again] == [10, 20]
  assert again[-1]["loss"] == rows[-1]["loss"]
  assert len(os.listdir(tmp_path / "tensorboard")) == 2


def test_tensorboard_can_be_turned_off(tmp_path):
  config = _config(steps=10)
  config.train.tensorboard = False
  train.train(config_lib.from_config(config), str(tmp_path))
  assert workdir.read_metrics(str(tmp_path)) and not os.path.exists(tmp_path / "tensorboard")


@pytest.mark.parametrize("kind", ["train", "solve"])
def test_finished_needs_the_result_and_exactly_this_config(tmp_path, kind):
  config_file, result_file = workdir.KINDS[kind]
  config = _config()
  path = str(tmp_path)
  assert not workdir.finished(path, config, kind)
  workdir.write_config(config, path, config_file)
  assert not workdir.finished(path, config, kind)      # no result yet
  workdir.write_json(path, result_file, {"loss": 1.0})
  assert workdir.finished(path, config, kind)
  assert workdir.read_json(path, result_file) == {"loss": 1.0}
  changed = _config()
  changed.train.learning_rate = 0.5
  assert not workdir.finished(path, changed, kind)
  with open(tmp_path / config_file, "w") as f:
    f.write("{not json")
  assert not workdir.finished(path, config, kind)


def test_a_finished_run_is_reused_not_retrained(tmp_path):
  config = _config(steps=10)
  config.train.eval_tasks = config.train.eval_population_samples = 200
  summary = train.train_and_evaluate(config, str(tmp_path))
  mtime = os.path.getmtime(tmp_path / "metrics.jsonl")
  assert train.train_and_evaluate(config, str(tmp_path)) == json.loads(
      (tmp_path / "summary.json").read_text()) == summary
  assert os.path.getmtime(tmp_path / "metrics.jsonl") == mtime
