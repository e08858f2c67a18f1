"""Test-time loops against independent computations: NumPy eigenvalues, the population loss at a
fixed loop count, a hand-made table of per-prompt losses, and GD's exact line search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import baselines
from looped_icl import constructions
from looped_icl import covariance
from looped_icl import estimators
from looped_icl import extrapolation
from looped_icl import losses
from looped_icl import tasks


def _task(n, d=4):
  return tasks.make_task(covariance.make_covariance("identity", d), n)


def _samples(task, num=256, seed=0):
  return estimators.sample(jax.random.key(seed), task, num, estimators.default_proposal(task))


def test_spectral_radius_and_diverging_fraction_match_numpy():
  task = _task(8)
  samples = _samples(task)
  a = 0.9 * np.eye(4) + 0.05 * np.arange(16.0).reshape(4, 4) / 16
  radius = np.asarray(extrapolation.spectral_radius(jnp.asarray(a, jnp.float32), samples.s))
  s = np.asarray(samples.s, np.float64)
  expected = np.array([np.max(np.abs(np.linalg.eigvals(np.eye(4) - a.T @ si))) for si in s])
  np.testing.assert_allclose(radius, expected, rtol=1e-5)
  weight = np.asarray(samples.weight, np.float64)
  threshold = 1.0 + extrapolation.RADIUS_ATOL
  assert extrapolation.diverging_fraction({"a": a}, samples) == pytest.approx(
      np.mean(weight * (expected > threshold)))
  assert 0.0 < np.mean(expected > threshold) < 1.0   # the check is not vacuous


def test_below_d_the_null_space_is_not_divergence():
  # n = 2 < d = 4: S has two zero eigenvalues, so I - c S has eigenvalue 1 on every prompt; a
  # short step (c lambda_max(S) < 2 on every sample here) never expands.
  task = _task(2)
  samples = _samples(task)
  c = 1.0 / float(np.max(np.linalg.eigvalsh(np.asarray(samples.s, np.float64))))
  assert extrapolation.diverging_fraction({"a": c * np.eye(4)}, samples) == 0.0
  radius = np.asarray(extrapolation.spectral_radius(jnp.asarray(c * np.eye(4), jnp.float32),
                                                    samples.s))
  np.testing.assert_allclose(radius, 1.0, atol=1e-5)


def test_per_loop_losses_are_the_population_loss_at_each_loop_count():
  task = _task(8)
  samples = _samples(task)
  cfg, params = constructions.preconditioned_gd(0.3 * jnp.eye(4), 3, eta=1.0)
  per = extrapolation.per_loop_losses(params, cfg, task, samples, 6)
  assert per.shape == (256, 6) and per.dtype == np.float64
  for k in (1, 3, 6):
    reference = np.asarray(losses.population_loss_samples(params, cfg, task, samples,
                                                          num_loops=k))[:, -1]
    np.testing.assert_allclose(per[:, k - 1], reference, rtol=1e-5)
  layered, layered_params = constructions.gd(4, 2, eta=0.3, kind="layered")
  with pytest.raises(ValueError, match="looped model"):
    extrapolation.per_loop_losses(layered_params, layered, task, samples, 4)


def test_summary_of_a_hand_made_table():
  # Four prompts, each five times (the estimator's standard error uses 20 chunks).
  per = np.repeat(np.array([[4.0, 2.0, 1.0, 3.0], [4.0, 2.0, 1.0, 1.5], [4.0, 3.0, 2.0, 1.0],
                            [4.0, 3.0, 2.0, np.inf]]), 5, axis=0)
  weighted = estimators.WeightedS(s=jnp.zeros((20, 1, 1)), weight=jnp.ones(20),
                                  component=jnp.zeros(20, jnp.int32))
  out = extrapolation.summary(per[:, :3], 1, weighted)
  assert out["best_loops"] == 3 and out["best_loss"] == pytest.approx(1.5)
  assert out["loss_at_trained_loops"] == 4.0 and out["keeps_decreasing"]
  # The paired gain 4 - (1, 1, 2, 2), each five times: standard error std / sqrt(20).
  assert out["gain_stderr"] == pytest.approx(np.std(np.repeat([3.0, 3.0, 2.0, 2.0], 5), ddof=1)
                                             / np.sqrt(20))
  with_inf = extrapolation.summary(per, 2, weighted)
  assert not with_inf["keeps_decreasing"] and with_inf["loss_at_max_loops"] == np.inf
  rows = extrapolation.loop_rows("s", "m", per, weighted)
  assert [r["loops"] for r in rows] == [1, 2, 3, 4]
  assert rows[1]["mean"] == pytest.approx(2.5) and rows[3]["mean"] == np.inf


def test_gd_own_step_is_gd_at_its_exact_best_step():
  task = _task(8)
  samples = _samples(task)
  rows, out = extrapolation.gd_own_step("s", task, samples, (1, 3), 3)
  for row, k in zip(rows, (1, 3)):
    eta, loss = baselines.best_gd_eta(task, k, samples)
    assert row["eta"] == eta and out["eta"][(1, 3).index(k)] == eta
    assert row["mean"] == pytest.approx(loss, rel=1e-5)
  assert out["keeps_decreasing"] and out["loss"][1] < out["loss"][0]
