"""Optimizers from a :class:`~looped_icl.config_lib.TrainConfig`: optax chains with the clips
used in the papers' code and the learning-rate schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from looped_icl import config_lib


def clip_per_matrix(max_norm: float) -> optax.GradientTransformation:
  """Clips every weight matrix's gradient to Frobenius norm ``max_norm`` (Ahn et al.'s clip).

  A leaf of shape (..., m, k) holds one matrix per leading index (e.g. one per layer), and each is
  clipped on its own; scalars and vectors (eta) are clipped by their absolute value / norm.
  """

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      if g.ndim >= 2:
        norm = jnp.sqrt(jnp.sum(g * g, axis=(-2, -1), keepdims=True))
      else:
        norm = jnp.sqrt(jnp.sum(g * g, keepdims=True)) if g.ndim else jnp.abs(g)
      return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_schedule(tc: config_lib.TrainConfig) -> optax.Schedule:
  """The learning rate at each step: ``tc.learning_rate`` times :func:`make_unit_schedule`."""
  unit = make_unit_schedule(tc)
  return lambda step: tc.learning_rate * unit(step)


def make_unit_schedule(tc: config_lib.TrainConfig) -> optax.Schedule:
  """The schedule's shape, 1 at step 0: constant, step decay or cosine decay to 0."""
  if tc.schedule == "constant":
    return optax.constant_schedule(1.0)
  if tc.schedule == "step":
    return optax.exponential_decay(1.0, transition_steps=tc.decay_every,
                                   decay_rate=tc.decay_factor, staircase=True)
  return optax.cosine_decay_schedule(1.0, decay_steps=tc.steps)


def make_direction(tc: config_lib.TrainConfig) -> optax.GradientTransformation:
  """Everything but the peak learning rate: the update is ``-learning_rate * direction``.

  clip (per matrix, then global norm; each optional) -> adam | adamw | sgd moments -> the unit
  schedule. The trainer multiplies by the (traced) learning rate itself, so runs that differ only
  in learning rate share one compiled program and a vmapped sweep can batch them.
  """
  parts = []
  if tc.clip_per_matrix > 0:
    parts.append(clip_per_matrix(tc.clip_per_matrix))
  if tc.clip_global_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.clip_global_norm))
  if tc.optimizer in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=tc.b1, b2=tc.b2))
    if tc.optimizer == "adamw":
      parts.append(optax.add_decayed_weights(tc.weight_decay))
  elif tc.momentum:
    parts.append(optax.trace(decay=tc.momentum))
  if tc.schedule != "constant":
    parts.append(optax.scale_by_schedule(make_unit_schedule(tc)))
  return optax.chain(*parts) if parts else optax.identity()


def make_optimizer(tc: config_lib.TrainConfig) -> optax.GradientTransformation:
  """The whole optimizer as one optax transformation: the direction scaled by -learning_rate
  (what optax.adam/adamw/sgd with :func:`make_schedule` compute)."""
  return optax.chain(make_direction(tc), optax.scale(-tc.learning_rate))
