"""Sweeps: the grid helpers, a tiny sweep (vmapped == one by one), rerun and resume."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import sweep
from looped_icl import train
from looped_icl import workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_helpers():
  grid = sweep.product(sweep.axis("a", [1, 2]), sweep.zipped(sweep.axis("b", "xy"),
                                                             sweep.axis("c", [3, 4])))
  assert grid == [{"a": 1, "b": "x", "c": 3}, {"a": 1, "b": "y", "c": 4},
                  {"a": 2, "b": "x", "c": 3}, {"a": 2, "b": "y", "c": 4}]
  assert sweep.chain(sweep.axis("a", [1]), sweep.axis("b", [2])) == [{"a": 1}, {"b": 2}]
  with pytest.raises(ValueError, match="equal length"):
    sweep.zipped(sweep.axis("a", [1, 2]), sweep.axis("b", [1]))
  with pytest.raises(ValueError, match="field a is set twice"):
    sweep.product(sweep.axis("a", [1]), sweep.axis("a", [2]))


def test_apply_and_names():
  base = config_lib.base_config()
  config = sweep.apply(base, {"model.num_layers": 3, "task.spectrum": [1.0, 2.0]})
  assert config.model.num_layers == 3 and config.task.spectrum == (1.0, 2.0)
  assert base.model.num_layers == 4                     # the base is not modified
  with pytest.raises(ValueError, match="^sweep field model.layers is not a config field"):
    sweep.apply(base, {"model.layers": 3})
  assert sweep.point_name({"seed": 1, "train.learning_rate": 0.05}) == (
      "seed=1,train.learning_rate=0.05")
  assert len(sweep.point_name({"task.spectrum": tuple(range(200))})) <= 120


def test_groups_share_shapes_only():
  base = config_lib.load("sweep_loops:quick")
  key = lambda config: sweep.group_key(config_lib.from_config(config))
  same = [{"seed": 3}, {"train.learning_rate": 0.3}, {"model.eta": 0.5}, {"task.noise_std": 0.1},
          {"task.covariance": "condition", "task.kappa": 10.0}]
  for overrides in same:
    assert key(sweep.apply(base, overrides)) == key(base), overrides
  for overrides in ({"task.n": 40}, {"model.num_layers": 3}, {"train.batch_size": 64}):
    assert key(sweep.apply(base, overrides)) != key(base), overrides


def test_invalid_point_fails_fast_naming_point_and_field(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text(textwrap.dedent("""
      from looped_icl import config_lib, sweep
      def get_config(arg=None):
        return config_lib.base_config()
      def get_sweep(arg=None):
        return sweep.axis("task.n", [10, 0])
  """))
  with pytest.raises(ValueError, match=r"^sweep point task.n=0: task.n must be"):
    sweep.run(str(path), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "points")   # nothing ran
  with pytest.raises(ValueError, match="has no get_sweep"):
    sweep.run("default", str(tmp_path / "out"))


TINY = textwrap.dedent("""
    from looped_icl import config_lib, sweep
    def get_config(arg=None):
      config = config_lib.load("sweep_loops:quick")
      config.train.steps = 40
      return config
    def get_sweep(arg=None):
      return sweep.product(sweep.axis("model.num_layers", [1, 2]),
                           sweep.zipped(sweep.axis("seed", [0, 1]),
                                        sweep.axis("train.learning_rate", [0.05, 0.1])))
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  spec = str(root / "tiny.py")
  with open(spec, "w") as f:
    f.write(TINY)
  return root, spec, sweep.run(spec, str(root / "vmap"))


def _exp(point_dir) -> config_lib.Experiment:
  with open(point_dir / "config.json") as f:
    return config_lib.from_config(ml_collections.ConfigDict(json.load(f)))


def test_every_point_has_its_workdir_and_a_row(tiny):
  root, _, rows = tiny
  assert len(rows) == 4
  for row in rows:
    point = root / "vmap" / "points" / row["point"]
    for name in ("config.json", "metrics.jsonl", "summary.json", "figures"):
      assert (point / name).exists(), (point, name)
    assert row["status"] == "done" and row["steps"] == 40
    assert np.isfinite(row["final_eval_loss"]) and np.isfinite(row["population_loss"])
  for name in ("sweep.csv", "sweep.png"):
    assert (root / "vmap" / name).exists()
  with open(root / "vmap" / "sweep.csv") as f:
    assert len(f.read().strip().splitlines()) == 1 + 4
  # The grid's points really differ (seeds and learning rates were applied).
  assert len({r["final_train_loss"] for r in rows}) == 4


def test_vmapped_equals_one_by_one(tiny):
  """Each point trained alone (the looped-icl train path) ends where the vmapped group left it."""
  root, _, rows = tiny
  for row in rows:
    point = root / "vmap" / "points" / row["point"]
    exp = _exp(point)
    params, history = train.train(exp, str(root / "alone" / row["point"]))
    # The same program up to vectorisation: float32 rounding only.
    np.testing.assert_allclose(history[-1]["loss"], row["final_train_loss"], rtol=1e-5)
    np.testing.assert_allclose(params["a"], workdir.load_trained_params(exp, str(point))["a"],
                               rtol=1e-5, atol=1e-7)


def test_rerun_is_a_no_op(tiny):
  root, spec, rows = tiny
  stamps = {p: os.path.getmtime(root / "vmap" / "points" / p / "metrics.jsonl")
            for p in (r["point"] for r in rows)}
  again = sweep.run(spec, str(root / "vmap"))
  assert again == rows
  assert stamps == {p: os.path.getmtime(root / "vmap" / "points" / p / "metrics.jsonl")
                    for p in stamps}


def test_interrupted_vmapped_group_resumes_bit_exact(tmp_path, monkeypatch):
  exps = []
  for seed in range(3):
    config = config_lib.load("sweep_loops:quick")
    config.seed = seed
    config.train.steps, config.train.log_every, config.train.checkpoint_every = 30, 10, 10
    exps.append(config_lib.from_config(config))
  straight = train.train_runs(exps, [str(tmp_path / f"s{i}") for i in range(3)])
  real_save = checkpointing.save
  saved = []

  def save_then_die(mngr, step, state):
    real_save(mngr, step, state)
    saved.append(step)
    if step == 20 and len(saved) == 5:   # the group dies between two runs' step-20 saves
      mngr.wait_until_finished()
      raise KeyboardInterrupt("simulated preemption")

  monkeypatch.setattr(checkpointing, "save", save_then_die)
  dirs = [str(tmp_path / f"r{i}") for i in range(3)]
  with pytest.raises(KeyboardInterrupt):
    train.train_runs(exps, dirs)
  monkeypatch.setattr(checkpointing, "save", real_save)
  resumed = train.train_runs(exps, dirs)                  # resumes all three from step 10
  for a, b in zip(straight, resumed):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 a.params, b.params)
    assert [r["step"] for r in b.history] == [10, 20, 30]
    assert a.history[-1]["loss"] == b.history[-1]["loss"]


def test_a_diverging_run_stops_alone(tmp_path):
  exps = []
  for learning_rate in (0.05, 1e30):
    config = config_lib.load("sweep_loops:quick")
    config.train.learning_rate = learning_rate
    config.train.steps, config.train.log_every, config.train.checkpoint_every = 30, 10, 10
    exps.append(config_lib.from_config(config))
  good, bad = train.train_runs(exps, [str(tmp_path / "good"), str(tmp_path / "bad")])
  assert good.diverged is None and [r["step"] for r in good.history] == [10, 20, 30]
  assert bad.diverged.startswith("training diverged at step ")
  assert "train.learning_rate (now 1e+30)" in bad.diverged
  mngr = checkpointing.manager(str(tmp_path / "bad"), 3)
  assert mngr.latest_step() == (bad.history[-1]["step"] if bad.history else None)
  mngr.close()


def test_a_group_must_share_its_program(tmp_path):
  exps = []
  for layers in (1, 2):
    config = config_lib.load("sweep_loops:quick")
    config.model.num_layers = layers
    exps.append(config_lib.from_config(config))
  with pytest.raises(ValueError, match="^model.num_layers differs between runs"):
    train.train_runs(exps, [str(tmp_path / "a"), str(tmp_path / "b")])


def test_cli_without_a_grid_is_one_line_exit_2(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "looped_icl.cli", "sweep", "--config=default:quick",
                        f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: config 'default:quick' "
                                                        "has no get_sweep(arg)")
  assert "Traceback" not in out.stderr
