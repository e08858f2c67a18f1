"""Two processes x 2 CPU devices (JAX's distributed runtime on localhost, ``--multihost``) train
the same run as one process x 4 devices: the same parameters (to float32 rounding of the
cross-process reductions) and the same summary. Bounded in time; the port is chosen free."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from looped_icl import config_lib
from looped_icl import workdir

ARGS = ["--config=default:quick", "--config.train.steps=20", "--config.train.log_every=10",
        "--config.train.checkpoint_every=10", "--config.train.batch_size=64",
        "--config.train.eval_tasks=256", "--config.train.eval_population_samples=256"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train(path, devices, extra=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + f" --xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "looped_icl.cli", "train", *ARGS,
                           f"--workdir={path}", *extra], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def test_two_processes_equal_one_process(tmp_path):
  port = _free_port()
  procs = [_train(tmp_path / "multi", 2, ["--multihost", f"--coordinator_address=localhost:{port}",
                                          "--num_processes=2", f"--process_id={i}"])
           for i in range(2)]
  single = _train(tmp_path / "single", 4)
  for proc in procs + [single]:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
  config = config_lib.load("default:quick")
  config.train.steps, config.train.log_every, config.train.checkpoint_every = 20, 10, 10
  config.train.batch_size = 64
  exp = config_lib.from_config(config)
  a, b = (np.asarray(workdir.load_trained_params(exp, str(tmp_path / d))["a"])
          for d in ("multi", "single"))
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-6
  multi, one = (json.loads((tmp_path / d / "summary.json").read_text())
                for d in ("multi", "single"))
  np.testing.assert_allclose(multi["final_eval_loss"], one["final_eval_loss"], rtol=1e-5)
  rows = workdir.read_metrics(str(tmp_path / "multi"))
  assert [r["step"] for r in rows] == [10, 20]          # one writer: no row twice
  assert (tmp_path / "multi" / ".lock").read_text() == ""
