"""Training end to end: theory match, the workdir contract, bit-exact resume, the NaN guard."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from looped_icl import checkpointing
from looped_icl import config_lib
from looped_icl import losses
from looped_icl import models
from looped_icl import theory
from looped_icl import train
from looped_icl import train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_single_layer_learns_ahn_theorem1(tmp_path):
  """The quick Ahn single-layer config (rotated Sigma, noise 0.5) lands within 5% of Thm 1."""
  exp = config_lib.from_config(config_lib.load("ahn_single_layer:quick"))
  params, history = train.train(exp, str(tmp_path))
  a = np.asarray(theory.effective_preconditioners(params, exp.model)[0], np.float64)
  a_star = np.asarray(theory.ahn_theorem1(np.asarray(exp.task.cov, np.float64), exp.task.n,
                                          noise_std=0.5))
  assert np.linalg.norm(a - a_star) / np.linalg.norm(a_star) < 0.05
  assert history[-1]["loss"] < history[0]["loss"]


def _tiny_config():
  config = config_lib.load("default:quick")
  config.train.steps = 40
  config.train.batch_size = 64
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.train.keep_checkpoints = 10
  config.train.eval_tasks = 2000
  config.train.eval_population_samples = 500
  return config


def test_workdir_contract(tmp_path):
  config = _tiny_config()
  summary = train.train_and_evaluate(config, str(tmp_path))
  files = set(os.listdir(tmp_path))
  assert {"config.json", "metrics.jsonl", "checkpoints", "summary.json", "figures"} <= files
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert all({"loss", "steps_per_s", "learning_rate", "grad_norm"} <= set(r) for r in rows)
  # The last row's Dist of the effective preconditioner is the final model's (as in the summary).
  np.testing.assert_allclose(rows[-1]["dist_to_identity_whitened"],
                             summary["dist_to_identity_whitened"], rtol=1e-5)
  with open(tmp_path / "summary.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(summary))
  d, loops = config.task.d, config.model.num_layers
  assert saved["steps"] == 40 and saved["wall_time_s"] > 0
  assert np.asarray(saved["covariance"]).shape == (d, d)
  assert np.asarray(saved["effective_preconditioners"]).shape == (1, d, d)
  assert np.asarray(saved["effective_preconditioner_eigenvalues"]).shape == (1, d, 2)
  assert len(saved["dist_to_identity_whitened"]) == 1
  assert len(saved["loss_vs_loops"]) == 2 * loops
  assert {"gd", "pgd_inv_cov", "ols", "ridge", "newton"} <= set(saved["baselines"])
  # The reported loss is the loss at the trained depth on the same tasks.
  assert saved["final_eval_loss"] == saved["loss_vs_loops"][loops - 1]
  # Ridge is the Bayes predictor: nothing beats it on the same tasks beyond MC error.
  assert saved["baselines"]["ridge"] <= saved["final_eval_loss"] + 4 * saved[
      "final_eval_loss_stderr"]
  for name in ("loss_curve", "preconditioners", "loss_vs_loops"):
    path = tmp_path / "figures" / f"{name}.png"
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_logged_grad_norm_is_the_raw_gradient_norm_of_the_step(tmp_path):
  """Gradient-flow mode has a fixed objective: the first logged grad_norm (log_every=1) must be
  ||grad f(params_0)|| on the training sample of S (importance-weighted), recomputed here from
  the documented keys."""
  config = config_lib.load("gatmiry_looped:quick")
  config.train.steps = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.train.batch_size = 256
  exp = config_lib.from_config(config)
  _, history = train.train(exp, str(tmp_path))
  keys = train_step.root_keys(exp.seed)
  s = train_step.population_samples(exp, train_step.step_data_key(keys["data"], jax.numpy.asarray(0), 0))
  params0 = models.init_params(keys["init"], exp.model)
  # Jitted: one program instead of an XLA compile per op of the custom reverse mode.
  grad_fn = jax.jit(jax.grad(losses.population_loss), static_argnums=1)
  grads = grad_fn(params0, exp.model, exp.task, s)
  expected = np.sqrt(sum(float(np.sum(np.asarray(g, np.float64)**2))
                         for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(history[0]["grad_norm"], expected, rtol=1e-4)
  assert history[1]["grad_norm"] != history[0]["grad_norm"]


def test_resume_is_bit_exact(tmp_path, monkeypatch):
  config = _tiny_config()
  exp = config_lib.from_config(config)
  straight, _ = train.train(exp, str(tmp_path / "straight"))

  real_save = checkpointing.save

  def save_then_die(mngr, step, state):
    real_save(mngr, step, state)
    if step == 20:
      mngr.wait_until_finished()
      raise KeyboardInterrupt("simulated preemption")

  monkeypatch.setattr(checkpointing, "save", save_then_die)
  with pytest.raises(KeyboardInterrupt):
    train.train(exp, str(tmp_path / "resumed"))
  monkeypatch.setattr(checkpointing, "save", real_save)
  resumed, history = train.train(exp, str(tmp_path / "resumed"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               straight, resumed)
  assert [r["step"] for r in history] == [10, 20, 30, 40]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = _tiny_config()
  config.train.steps = 20
  train.train(config_lib.from_config(config), str(tmp_path))     # good run: checkpoint at 20
  config.train.steps = 40
  config.train.learning_rate = 1e6     # same optimizer state layout, so the run resumes
  with pytest.raises(train.TrainingDiverged, match=r"step 2\d.*checkpoint \(step 20\)"):
    train.train(config_lib.from_config(config), str(tmp_path))
  mngr = checkpointing.manager(str(tmp_path), 3)
  assert mngr.latest_step() == 20
  mngr.close()


def test_resuming_with_another_optimizer_is_a_clear_error(tmp_path):
  config = _tiny_config()
  config.train.steps = 10
  train.train(config_lib.from_config(config), str(tmp_path))
  config.train.steps = 20
  config.train.optimizer = "sgd"
  with pytest.raises(ValueError, match=r"^checkpoint step 10 of .* cannot be restored .*"
                     r"another config's run"):
    train.train(config_lib.from_config(config), str(tmp_path))


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "looped_icl.cli", "train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_invalid_override_is_one_line_exit_2(tmp_path):
  out = _cli("--config=default:quick", f"--workdir={tmp_path}",
             "--config.task.n=0")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == "error: task.n must be an integer >= 1, got 0"
  assert "Traceback" not in out.stderr
  out = _cli("--config=default:quick", f"--workdir={tmp_path}", "--config.task.m=1")
  assert out.returncode == 2 and "unknown config field 'm'" in out.stderr
  assert "Traceback" not in out.stderr


def test_cli_divergence_exits_3_with_the_step(tmp_path):
  out = _cli("--config=default:quick", f"--workdir={tmp_path}",
             "--config.train.learning_rate=1e8", "--config.train.steps=50",
             "--config.train.schedule=constant")
  assert out.returncode == 3
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged at step ") and "learning_rate" in last
  assert "Traceback" not in out.stderr
