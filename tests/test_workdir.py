"""The workdir contract: the TensorBoard record equals metrics.jsonl (also after a resume), and
"finished" means the result file and exactly this config."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from looped_icl import checkpointing
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


def _params_after(config, path):
  params, history = train.train(workdir.start(config, str(path)), str(path))
  return params, history


def test_a_changed_config_is_refused_naming_the_field_and_the_record_kept(tmp_path):
  config = _config()
  workdir.start(config, str(tmp_path))
  record = (tmp_path / "config.json").read_text()
  changed = _config()
  changed.train.learning_rate = 0.5
  changed.task.n = 40
  with pytest.raises(ValueError, match=r"^workdir .* holds a run of another config "
                     r"\(task.n 20 -> 40; train.learning_rate 0.1 -> 0.5\); use a new"):
    workdir.start(changed, str(tmp_path))
  longer = _config(steps=40)   # default's cosine schedule depends on train.steps
  with pytest.raises(ValueError, match=r"would change its cosine schedule"):
    workdir.start(longer, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == record


def test_extending_a_constant_schedule_equals_the_longer_run(tmp_path):
  short, long_ = _config(steps=20), _config(steps=30)
  for c in (short, long_):
    c.train.schedule = "constant"
  _params_after(short, tmp_path / "a")
  params, history = _params_after(long_, tmp_path / "a")     # extended: 20 -> 30
  straight, straight_history = _params_after(long_, tmp_path / "b")
  np.testing.assert_array_equal(params["a"], straight["a"])
  assert [r["step"] for r in history] == [r["step"] for r in straight_history] == [10, 20, 30]
  with pytest.raises(ValueError, match="cannot be shortened"):
    workdir.start(short, str(tmp_path / "a"))


def test_one_writer_per_workdir(tmp_path):
  path = str(tmp_path)
  with workdir.lock(path):
    with workdir.lock(path):        # re-entrant within the process
      pass
    out = subprocess.run([sys.executable, "-m", "looped_icl.cli", "train",
                          "--config=default:quick", f"--workdir={path}"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 4, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: workdir {path} is in use by host ") and (
        f"pid {os.getpid()} since" in line), line
    assert "Traceback" not in out.stderr
  assert (tmp_path / ".lock").read_text() == ""         # released cleanly
  (tmp_path / ".lock").write_text("host gone pid 999999 since 2026-01-01 00:00:00")
  with workdir.lock(path):          # a dead holder's record is taken over
    assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


def _damage(step_dir):
  """Overwrites every data file of a checkpoint step with garbage (a disk fault)."""
  files = [f for f in step_dir.rglob("*") if f.is_file() and f.stat().st_size > 0]
  assert files
  for f in files:
    f.write_bytes(b"\x00garbage" * 8)


def test_a_damaged_checkpoint_falls_back_to_an_intact_one_and_ends_the_same(tmp_path):
  config = _config(steps=30)
  straight, _ = _params_after(config, tmp_path / "straight")
  interrupted = _config(steps=30)
  _params_after(interrupted, tmp_path / "run")
  _damage(tmp_path / "run" / "checkpoints" / "30")
  _damage(tmp_path / "run" / "checkpoints" / "20")
  # The metrics record was written past the intact step: rows 20 and 30 are dropped, re-logged.
  params, history = _params_after(interrupted, tmp_path / "run")
  np.testing.assert_array_equal(params["a"], straight["a"])
  assert [r["step"] for r in workdir.read_metrics(str(tmp_path / "run"))] == [10, 20, 30]
  assert [r["step"] for r in history] == [10, 20, 30]
  assert len(list((tmp_path / "run" / "damaged_checkpoints").iterdir())) == 2
  # None intact: a data error, exit 3 through the CLI's NoIntactCheckpoint, config not blamed.
  for step in (10, 20, 30):
    _damage(tmp_path / "run" / "checkpoints" / str(step))
  with pytest.raises(train.NoIntactCheckpoint, match=r"^no intact checkpoint in .*step 30: "):
    _params_after(interrupted, tmp_path / "run")


def _delete_one_array_file(step_dir):
  os.remove(sorted(p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p))[0])


def _empty(step_dir):
  for entry in list(step_dir.iterdir()):
    shutil.rmtree(entry) if entry.is_dir() else os.remove(entry)


# A failed restore leaves tensorstore reads in flight that complete onto orbax's closed asyncio
# loop ("Exception ignored ... Event loop is closed", in about half the runs before the fix):
# any such unraisable exception fails the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_delete_one_array_file, _empty])
def test_missing_checkpoint_files_fall_back_too(tmp_path, damage):
  config = _config(steps=20)
  straight, _ = _params_after(config, tmp_path / "straight")
  _params_after(config, tmp_path / "run")
  damage(tmp_path / "run" / "checkpoints" / "20")
  params, _ = _params_after(config, tmp_path / "run")
  np.testing.assert_array_equal(params["a"], straight["a"])


def test_only_late_reads_on_a_closed_loop_are_dropped(monkeypatch):
  """The hook a failed restore installs drops exactly a RuntimeError('Event loop is closed')
  raised in call_soon_threadsafe and passes everything else on."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpointing._drop_late_reads_of_failed_restores()
  checkpointing._drop_late_reads_of_failed_restores()   # installed once
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    late = e
  other = RuntimeError("Event loop is closed")        # same message, raised elsewhere
  for exc in (late, other, ValueError("x")):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=exc.__traceback__, err_msg=None,
                                             object=None))
  assert len(seen) == 2
  assert seen[0].exc_value is other and isinstance(seen[1].exc_value, ValueError)


def test_cli_without_an_intact_checkpoint_exits_3_in_one_line(tmp_path):
  args = [sys.executable, "-m", "looped_icl.cli", "train", "--config=default:quick",
          f"--workdir={tmp_path}", "--config.train.steps=10", "--config.train.log_every=10",
          "--config.train.checkpoint_every=10", "--config.train.batch_size=64",
          "--config.train.eval_tasks=200", "--config.train.eval_population_samples=200"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  config = config_lib.load("default:quick")      # the same run, trained here (no evaluation)
  config.train.steps = config.train.log_every = config.train.checkpoint_every = 10
  config.train.batch_size, config.train.eval_tasks = 64, 200
  config.train.eval_population_samples = 200
  _params_after(config, tmp_path)
  _damage(tmp_path / "checkpoints" / "10")
  out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 3, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: no intact checkpoint in ")
  assert "Traceback" not in out.stderr and "config" not in out.stderr.splitlines()[-1].split(
      "(")[0]


def test_a_torn_metrics_line_is_dropped_and_repaired(tmp_path):
  config = _config(steps=20)
  _params_after(config, tmp_path)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 30, "loss": 0.')             # a crash in the middle of a write
  assert [r["step"] for r in workdir.read_metrics(str(tmp_path))] == [10, 20]
  workdir.MetricsWriter(str(tmp_path), 20, tensorboard=False).close()
  assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write("not json\n{}\n")
  with pytest.raises(ValueError, match=r"line 3 is not JSON"):
    workdir.read_metrics(str(tmp_path))


def test_kill_9_mid_training_then_resume_is_bit_exact(tmp_path):
  """A training process killed with SIGKILL after its first checkpoint; the rerun ends with the
  parameters of an uninterrupted run and one metrics row per logged step."""
  args = ["--config=default:quick", "--config.train.steps=400", "--config.train.log_every=50",
          "--config.train.checkpoint_every=100", "--config.train.batch_size=64",
          "--config.train.eval_tasks=200", "--config.train.eval_population_samples=200"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run_dir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "looped_icl.cli", "train", *args,
                           f"--workdir={run_dir}"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and not (run_dir / "checkpoints" / "100").exists():
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
  rerun = subprocess.run([sys.executable, "-m", "looped_icl.cli", "train", *args,
                          f"--workdir={run_dir}"], env=env, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  config = config_lib.load("default:quick")
  config.train.steps, config.train.log_every, config.train.checkpoint_every = 400, 50, 100
  config.train.batch_size = 64
  straight, _ = train.train(config_lib.from_config(config), str(tmp_path / "straight"))
  exp = config_lib.from_config(config)
  np.testing.assert_array_equal(workdir.load_trained_params(exp, str(run_dir))["a"],
                                straight["a"])
  steps = [r["step"] for r in workdir.read_metrics(str(run_dir))]
  assert steps == list(range(50, 401, 50))
