"""The u block of Gatmiry et al.'s looped model (looped_icl.u_block): P = [[0, 0], [u^T, 1]].

Each piece of the u_opt = 0 argument is checked on its own, in float64: the block's weights against
the token path (an independent forward), f affine in u, g blind to the labels, the antithetic
identity b = 0, and, on plain Monte Carlo, b within 4 standard errors of 0 with H positive
definite by many standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import attention
from looped_icl import covariance
from looped_icl import models
from looped_icl import tasks
from looped_icl import u_block

D, N = 3, 8
BATCH = 4000


@pytest.fixture(scope="module")
def setting():
  with jax.enable_x64(True):
    cov = np.asarray(covariance.make_covariance("rotated", D, spectrum=(1.0, 0.4, 0.1),
                                                cov_seed=2), np.float64)
    task = tasks.as_float64(tasks.make_task(cov, N, weight_prior="inverse_covariance"))
    token_batch = tasks.sample_tasks(jax.random.key(3), task, BATCH)
    a = 0.5 * np.linalg.inv(cov) + 0.05 * np.random.default_rng(0).standard_normal((D, D))
    yield token_batch, tasks.to_gram(token_batch), a


def test_weights_are_the_block_form_and_u0_is_the_preconditioner_family(setting):
  _, gram, a = setting
  u = np.array([0.3, -0.2, 0.1])
  with jax.enable_x64(True):
    w = u_block.weights(jnp.asarray(a), jnp.asarray(u))
    expected_p = np.zeros((D + 1, D + 1))
    expected_p[D, :D], expected_p[D, D] = u, 1.0
    expected_q = np.zeros((D + 1, D + 1))
    expected_q[:D, :D] = a
    np.testing.assert_array_equal(np.asarray(w["p"]), expected_p)
    np.testing.assert_array_equal(np.asarray(w["q"]), expected_q)
    for loops in (1, 3):
      cfg = models.ModelConfig(d=D, num_layers=loops, kind="looped",
                               parametrization="preconditioner")
      np.testing.assert_array_equal(
          np.asarray(u_block.predictions(a, np.zeros(D), gram, loops)),
          np.asarray(models.predict({"a": jnp.asarray(a)}, cfg, gram)))


def test_gram_predictions_match_the_token_path(setting):
  """The Gram forward of the u block against Z <- Z - P Z M Z^T Q Z / n on the prompt tokens."""
  tokens, gram, a = setting
  u = np.array([0.3, -0.2, 0.1])
  with jax.enable_x64(True):
    w = u_block.weights(jnp.asarray(a), jnp.asarray(u))
    for loops in (1, 2, 3):
      p, q = (jnp.broadcast_to(w[k], (loops, D + 1, D + 1)) for k in ("p", "q"))
      reference = attention.forward_tokens(p, q, jnp.ones(loops), tasks.to_prompt(tokens))[:, -1]
      np.testing.assert_allclose(np.asarray(u_block.predictions(a, u, gram, loops)),
                                 np.asarray(reference), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_prediction_is_affine_in_u_and_g_ignores_the_labels(setting, loops):
  _, gram, a = setting
  with jax.enable_x64(True):
    f0, g = (np.asarray(x) for x in u_block.affine_parts(a, gram, loops))
    for seed in range(3):
      u = np.random.default_rng(seed).standard_normal(D) * 2.0
      shift = np.asarray(u_block.predictions(a, u, gram, loops)) - f0
      np.testing.assert_allclose(shift, g @ u, rtol=1e-9, atol=1e-9 * np.max(np.abs(shift)))
    # w* -> -w*: f_0 flips sign exactly, g does not change.
    f0_flip, g_flip = (np.asarray(x) for x in u_block.affine_parts(
        a, u_block.flip_labels(gram), loops))
    np.testing.assert_allclose(f0_flip, -f0, rtol=1e-12, atol=1e-12 * np.max(np.abs(f0)))
    np.testing.assert_allclose(g_flip, g, rtol=1e-12, atol=1e-12 * np.max(np.abs(g)))


def test_flip_labels_negates_exactly_the_label_statistics(setting):
  _, gram, _ = setting
  with jax.enable_x64(True):
    flipped = u_block.flip_labels(gram)
  before, after = np.asarray(gram.gram), np.asarray(flipped.gram)
  np.testing.assert_array_equal(after[:, :D, :D], before[:, :D, :D])     # X^T X
  np.testing.assert_array_equal(after[:, :D, D], -before[:, :D, D])      # X^T y
  np.testing.assert_array_equal(after[:, D, :D], -before[:, D, :D])      # y^T X
  np.testing.assert_array_equal(after[:, D, D], before[:, D, D])         # y^T y
  np.testing.assert_array_equal(np.asarray(flipped.y_query), -np.asarray(gram.y_query))
  np.testing.assert_array_equal(np.asarray(flipped.w), -np.asarray(gram.w))


def _concat(a, b):
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


@pytest.mark.parametrize("loops", [2, 3])
def test_u_opt_is_zero(setting, loops):
  _, gram, a = setting
  with jax.enable_x64(True):
    # Antithetic pairs (each task with its w* -> -w* twin): b = 0 exactly, so u_opt = 0 and
    # nothing is gained by u != 0, to rounding.
    paired = u_block.u_optimum(a, _concat(gram, u_block.flip_labels(gram)), loops)
    assert max(abs(v) for v in paired["b"]) < 1e-12 * paired["b_scale"]
    assert paired["u_opt_norm"] < 1e-10
    # Plain Monte Carlo: b within 4 standard errors of 0 in every entry (3 entries; the terms'
    # tail index below 0.5, so the standard errors hold), H positive
    # definite (its smallest eigenvalue > 10 standard errors), and the fitted u_opt's gain a
    # sampling effect (below 1% of the loss).
    plain = u_block.u_optimum(a, gram, loops)
    assert plain["affine_residual"] < 1e-10
    assert plain["b_max_abs_z"] < 4.0, plain
    assert plain["b_tail_index"] < 0.5, plain     # the standard errors are reliable
    assert plain["h_eigenvalues"][0] > 10 * plain["h_min_eig_stderr"], plain
    assert plain["h_min_eig_tail_index"] < 0.5
    assert plain["u_opt_max_abs_z"] < 4.0, plain
    assert 0 <= plain["loss_gain_at_u_opt"] < 0.01 * plain["loss_at_zero"]
