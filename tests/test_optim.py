"""Optimizer pieces: the per-matrix clip and the schedules."""

import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import optim


def test_clip_per_matrix_clips_each_layer_matrix_separately():
  grads = {"a": jnp.stack([3.0 * jnp.eye(2), 0.01 * jnp.ones((2, 2))]), "eta": jnp.asarray(-5.0)}
  clipped, _ = optim.clip_per_matrix(0.5).update(grads, optim.clip_per_matrix(0.5).init(grads))
  big, small = np.asarray(clipped["a"][0]), np.asarray(clipped["a"][1])
  np.testing.assert_allclose(np.linalg.norm(big), 0.5, rtol=1e-6)   # clipped to the norm
  np.testing.assert_allclose(big, 3.0 * np.eye(2) * 0.5 / np.linalg.norm(3.0 * np.eye(2)),
                             rtol=1e-6)                            # direction kept
  np.testing.assert_allclose(small, 0.01 * np.ones((2, 2)))        # below the bound: untouched
  np.testing.assert_allclose(clipped["eta"], -0.5, rtol=1e-6)


def _train_config(**overrides):
  return config_lib.TrainConfig(**overrides)


def test_step_schedule_multiplies_every_decay_every_steps():
  schedule = optim.make_schedule(_train_config(schedule="step", learning_rate=0.02,
                                               decay_every=2000, decay_factor=0.5))
  np.testing.assert_allclose([schedule(0), schedule(1999), schedule(2000), schedule(4000)],
                             [0.02, 0.02, 0.01, 0.005], rtol=1e-6)


def test_cosine_schedule_ends_at_zero():
  schedule = optim.make_schedule(_train_config(schedule="cosine", learning_rate=0.1, steps=100))
  np.testing.assert_allclose([schedule(0), schedule(50), schedule(100)], [0.1, 0.05, 0.0],
                             atol=1e-7)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_minimise_a_quadratic(name):
  opt = optim.make_optimizer(_train_config(optimizer=name, learning_rate=0.1, momentum=0.0,
                                           clip_global_norm=10.0, clip_per_matrix=10.0))
  params = {"a": jnp.ones((2, 2))}
  state = opt.init(params)
  for _ in range(300):
    grads = {"a": 2 * params["a"]}
    updates, state = opt.update(grads, state, params)
    params = {"a": params["a"] + updates["a"]}
  assert float(jnp.max(jnp.abs(params["a"]))) < 1e-2
