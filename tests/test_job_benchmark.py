"""The main-job benchmark: the README job's phases, each split into compiling and the rest."""

import json
import os

import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import job_benchmark
from looped_icl import train_step
from looped_icl import workdir as workdir_lib


def _small_job():
  config = config_lib.load("default:quick")   # test_workdir's CLI run: the same programs
  config.train.steps = config.train.log_every = config.train.checkpoint_every = 10
  config.train.batch_size, config.train.eval_tasks = 64, 200
  config.train.eval_population_samples = 200
  config.solver.samples, config.solver.test_samples = 500, 1000
  config.solver.restarts, config.solver.max_iters = 1, 20
  return config


def test_main_job_phases_add_up_and_leave_the_job_outputs(tmp_path):
  # A chunk this worker built for an earlier test of the same program would be reused without
  # tracing (train_step.make_train_chunk's cache); time the job as a fresh process runs it.
  train_step._train_chunk.cache_clear()
  result = job_benchmark.main_job(_small_job(), str(tmp_path))
  walls = [result[p]["wall_s"] for p in job_benchmark.PHASES]
  compiles = [result[p]["compile_s"] for p in job_benchmark.PHASES]
  # The phases tile the job (consecutive clock readings) and compiling is part of each phase.
  # Training compiles (its chunk cache was cleared above); evaluation may compile nothing when
  # this worker already holds every program of its shapes (its jitted functions are module-level:
  # seen in a clean-clone run, 0.0 s of 1.3 s).
  np.testing.assert_allclose(sum(walls), result["total"]["wall_s"], rtol=1e-9)
  np.testing.assert_allclose(sum(compiles), result["total"]["compile_s"], rtol=1e-9)
  assert all(0 <= c < w for c, w in zip(compiles, walls)), result
  assert compiles[0] > 0, result
  assert result["job_over_training"] == pytest.approx(result["total"]["wall_s"] / walls[0])
  # What the two README commands leave behind: the summary and the optimum.
  for name in (workdir_lib.SUMMARY, workdir_lib.OPTIMUM):
    with open(os.path.join(tmp_path, name)) as f:
      assert json.load(f)
  table = job_benchmark.format_table(result)
  assert table.splitlines()[-1] == f"job / training wall time: {result['job_over_training']:.2f}x"


def test_main_job_refuses_a_used_workdir(tmp_path):
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  with pytest.raises(ValueError, match="^workdir must be new or empty"):
    job_benchmark.main_job(_small_job(), str(tmp_path))
