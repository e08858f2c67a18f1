"""The anchor-style PyTorch step (runs only where the optional torch is installed)."""

import pytest

from looped_icl import torch_anchor


def test_anchor_step_runs_and_is_timed():
  pytest.importorskip("torch")
  rate = torch_anchor.steps_per_s(num_layers=2, d=3, n=6, batch=64, steps_per_repeat=2, repeats=1)
  assert 0 < rate < 1e6
