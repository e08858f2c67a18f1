"""Property tests over config overrides (hypothesis): any value of any field either validates or
fails with one line that starts with a config field's dotted name; the CLI turns that into exit 2
with no traceback; and valid small configs train a step to a finite loss. Derandomized (the same
examples every run), so a failure reproduces.
"""

import math
import os
import subprocess
import sys

import hypothesis
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from looped_icl import config_lib
from looped_icl import train_step

FIELDS = sorted(config_lib.field_docs())
WILD = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.booleans(), st.none(),
                 st.lists(st.floats(-10, 10), max_size=6))


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = tuple(value) if isinstance(value, list) else value


def _check(config):
  """None if valid, else the one-line message (asserting its form)."""
  try:
    config_lib.from_config(config)
  except ValueError as e:
    message = str(e)
    assert "\n" not in message, message
    assert any(message.startswith(f) for f in FIELDS), message
    return message
  return None


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
@hypothesis.given(path=st.sampled_from(FIELDS), value=WILD)
def test_any_value_validates_or_fails_in_one_line_naming_a_field(path, value):
  config = config_lib.base_config()
  _set(config, path, value)
  message = _check(config)
  bad_number = isinstance(value, float) and not (math.isfinite(value) and abs(value) < 3e38)
  if bad_number and not path.endswith(("spectrum",)):
    assert message is not None, (path, value)       # nan/inf/beyond float32 is never valid
  if message is None:
    exp = config_lib.from_config(config)             # what validated is finite in float32
    assert np.all(np.isfinite(np.asarray(exp.task.cov))) and np.isfinite(exp.task.noise_std)


def test_cli_invalid_overrides_exit_2_in_one_line_without_traceback(tmp_path):
  cases = ["--config.train.learning_rate=nan", "--config.task.n=-3", "--config.model.kind=banana",
           "--config.train.steps=1.5"]
  for case in cases:
    out = subprocess.run([sys.executable, "-m", "looped_icl.cli", "train", "--config=default:quick",
                          f"--workdir={tmp_path}", case], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2, (case, out.stderr[-1000:])
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in out.stderr, (case, lines)
  assert not os.path.exists(tmp_path / "config.json")


SMALL = {
    "task.d": st.integers(1, 6), "task.n": st.integers(1, 40),
    "task.covariance": st.sampled_from(["identity", "condition", "ar1", "power_law"]),
    "task.kappa": st.floats(1.0, 50.0), "task.rho": st.floats(-0.9, 0.9),
    "task.noise_std": st.floats(0.0, 1.0),
    "task.weight_prior": st.sampled_from(["identity", "inverse_covariance"]),
    "model.kind": st.sampled_from(["looped", "layered"]), "model.num_layers": st.integers(1, 4),
    "model.parametrization": st.sampled_from(["preconditioner", "gdpp", "fixed"]),
    "model.eta": st.floats(0.05, 1.0), "train.optimizer": st.sampled_from(["adam", "adamw", "sgd"]),
    "train.objective": st.sampled_from(["mc", "population"]),
    "train.learning_rate": st.floats(1e-4, 0.1), "train.clip_per_matrix": st.floats(0.0, 1.0),
}


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(overrides=st.fixed_dictionaries({}, optional=SMALL))
def test_valid_small_configs_train_a_step(overrides):
  config = config_lib.base_config()
  config.train.batch_size = 8
  for path, value in overrides.items():
    _set(config, path, value)
  hypothesis.assume(_check(config) is None)
  exp = config_lib.from_config(config)
  state = train_step.initial_state(exp)
  _, _, losses_K, _, _ = train_step.make_train_chunk(exp)(
      state["params"], state["opt_state"], train_step.make_hyper(exp), jnp.arange(1))
  assert np.all(np.isfinite(np.asarray(losses_K))), (overrides, losses_K)


@pytest.mark.parametrize("n", [10**8])
def test_a_huge_n_simply_runs(n):
  """The Bartlett sampler's cost does not depend on n: n = 10^8 trains a step."""
  config = config_lib.base_config()
  config.task.n, config.train.batch_size, config.train.objective = n, 8, "population"
  exp = config_lib.from_config(config)
  state = train_step.initial_state(exp)
  _, _, losses_K, _, _ = train_step.make_train_chunk(exp)(
      state["params"], state["opt_state"], train_step.make_hyper(exp), jnp.arange(1))
  assert np.isfinite(float(losses_K[0]))
