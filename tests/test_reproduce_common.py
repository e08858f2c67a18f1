"""The reproduction framework: registry, CLI errors, CSV round trip, reuse of finished sub-runs."""

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import reproduce
from looped_icl.reproduce import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(reproduce.EXPERIMENTS))
def test_every_experiment_has_a_documented_run(name):
  module = importlib.import_module(f"looped_icl.reproduce.{reproduce.EXPERIMENTS[name]}")
  assert callable(module.run)
  assert module.__doc__ and len(module.__doc__) > 200


def test_unknown_experiment_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="^experiment must be one of"):
    reproduce.run("ahn_fig3", str(tmp_path))
  proc = subprocess.run([sys.executable, "-m", "looped_icl.cli", "reproduce", "--experiment=nope",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error:") and "experiment" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_csv_round_trip(tmp_path):
  ctx = common.Context(str(tmp_path))
  rows = [{"L": 1, "loss": 0.1 + 1e-17, "name": "gd"}, {"L": 2, "loss": np.float32(0.25),
                                                          "extra": 3}]
  path = common.write_csv(ctx, "t.csv", rows)
  back = common.read_csv(path)
  assert back[0] == {"L": 1, "loss": 0.1 + 1e-17, "name": "gd", "extra": ""}
  assert back[1]["loss"] == 0.25 and back[1]["extra"] == 3


def test_finished_sub_runs_are_reused_and_changed_configs_are_not(tmp_path):
  ctx = common.Context(str(tmp_path), quick=True)
  config = config_lib.load("default:quick")
  config.train.steps = 20
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.train.eval_tasks = 500
  config.train.eval_population_samples = 200
  summary, history, params = common.train_run(ctx, "a", config)
  metrics = os.path.join(ctx.run_dir("a"), "metrics.jsonl")
  stamp = os.stat(metrics).st_mtime_ns
  again, history2, params2 = common.train_run(ctx, "a", config)
  assert os.stat(metrics).st_mtime_ns == stamp          # nothing retrained
  assert again == summary and history2 == history
  np.testing.assert_array_equal(params2["a"], params["a"])
  config.train.learning_rate = 0.05                      # another run: refused, not mixed
  with pytest.raises(ValueError, match=r"holds a run of another config \(train.learning_rate"):
    common.train_run(ctx, "a", config)
  config.train.learning_rate = 0.1
  config.train.schedule = "constant"                     # ... a longer constant-step run trains on
  common.train_run(ctx, "b", config)
  config.train.steps = 30
  third, history3, _ = common.train_run(ctx, "b", config)
  assert third["steps"] == 30 and history3[-1]["step"] == 30
