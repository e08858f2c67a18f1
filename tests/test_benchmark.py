"""The step benchmark times real training chunks: it runs, counts XLA's FLOPs and advances."""

import pytest

from looped_icl import benchmark
from looped_icl import config_lib


def test_time_steps_times_a_training_chunk():
  config = config_lib.load("default:quick")
  config.train.batch_size = 64
  exp = config_lib.from_config(config)
  # One step per call: the timed program is the one whose cost XLA reports (one compile).
  seconds, gflop = benchmark.time_steps(exp, steps_per_call=1, repeats=2)
  assert 0 < seconds < 60
  assert gflop > 0     # XLA's cost analysis of one step: a Gram-space step of 64 tasks


def test_unknown_workload_is_one_clear_error():
  with pytest.raises(ValueError, match="^workload must be one of"):
    benchmark.run(["no_such_workload"])


def test_table_has_one_row_per_result():
  result = benchmark.Result("ahn_demo", "L3 d5 n20 B4000", "gram", 200.0, 8e5, 0.05, 10.0, 5.0)
  lines = benchmark.format_table(200.0, [result]).splitlines()
  assert len(lines) == 3 and lines[2].split()[:2] == ["ahn_demo", "L3"]
  assert lines[2].rstrip().endswith("5.0%")
