"""The pure training step: keys, the traced per-run numbers (:class:`Hyper`), the objective, and
the chunk of steps one jitted lax.scan runs.

:mod:`looped_icl.train` runs these chunks (one run, or a vmapped group of runs that share one
program) and keeps the workdir; :mod:`looped_icl.benchmark` times them.

Reproducibility: the step-t data key is fold_in(fold_in(key(seed), 1), t // resample_every), so a
chunk of steps [t0, t1) draws the same data wherever it runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import losses
from looped_icl import models
from looped_icl import optim
from looped_icl import sharding
from looped_icl import tasks as tasks_lib


def root_keys(seed: int) -> dict[str, jax.Array]:
  root = jax.random.key(seed)
  return {"init": jax.random.fold_in(root, 0), "data": jax.random.fold_in(root, 1),
          "eval": jax.random.fold_in(root, 2)}


def step_data_key(data_key: jax.Array, step: jax.Array, resample_every: int) -> jax.Array:
  """The key of step ``step``'s data: new every ``resample_every`` steps (0: never)."""
  index = step // resample_every if resample_every > 0 else jnp.zeros_like(step)
  return jax.random.fold_in(data_key, index)


@struct.dataclass
class Hyper:
  """The numbers that runs of one compiled training program may differ in (traced leaves).

  A vmapped sweep stacks one Hyper per run. Which config fields travel here is the schema's
  ``hyper`` metadata (:func:`looped_icl.config_lib.hyper_fields`): ``seed`` -> ``data_key`` (the
  raw key data of root_keys(seed)["data"]), ``train.learning_rate``, ``model.eta``, and Sigma and
  the label noise through ``task``; every other field is part of the program
  (:func:`check_same_program`).
  """
  data_key: jax.Array
  learning_rate: jax.Array
  eta: jax.Array
  task: tasks_lib.TaskDistribution


def make_hyper(exp: config_lib.Experiment) -> Hyper:
  dtype = exp.task.cov.dtype
  return Hyper(data_key=jax.random.key_data(root_keys(exp.seed)["data"]),
               learning_rate=jnp.asarray(exp.train.learning_rate, dtype),
               eta=jnp.asarray(exp.model.eta, dtype), task=exp.task)


def population_proposal(exp: config_lib.Experiment) -> estimators.Proposal:
  """The law of the population objective's samples of S (``train.population_proposal``)."""
  if exp.train.population_proposal == "defensive":
    return estimators.default_proposal(exp.task)
  return estimators.PLAIN


def population_samples(exp: config_lib.Experiment, key: jax.Array,
                       task: tasks_lib.TaskDistribution | None = None) -> estimators.WeightedS:
  """The population objective's ``train.batch_size`` weighted samples of S at ``key``."""
  return estimators.sample(key, exp.task if task is None else task, exp.train.batch_size,
                           population_proposal(exp))


def _max_share(values_B: jax.Array) -> jax.Array:
  """The largest single sample's share of a batch's summed loss (a tail diagnostic)."""
  values_B = jnp.abs(values_B)
  return jnp.max(values_B) / jnp.maximum(jnp.sum(values_B), jnp.finfo(values_B.dtype).tiny)


def make_data(exp: config_lib.Experiment, layout: sharding.Layout | None = None):
  """draw(key, hyper) -> one step's batch: weighted samples of S (population objective) or
  tasks (mc). With a ``layout``, the batch is split over its mesh."""
  tc = exp.train

  def constrain(batch):
    return batch if layout is None else layout.constrain_batch(batch, tc.batch_size)

  def draw(key, hyper):
    if tc.objective == "population":
      return constrain(population_samples(exp, key, hyper.task))
    if tc.forward == "gram":
      return constrain(tasks_lib.sample_gram(key, hyper.task, tc.batch_size))
    return constrain(tasks_lib.sample_tasks(key, hyper.task, tc.batch_size))

  return draw


def make_loss(exp: config_lib.Experiment):
  """loss(params, batch, hyper) -> (loss, max_share) of the configured objective on a batch of
  :func:`make_data`; max_share is the largest sample's share of the batch's loss."""
  model, tc = exp.model, exp.train

  def loss(params, batch, hyper):
    if tc.objective == "population":
      values_S = losses.population_loss_samples(params, model, hyper.task, batch,
                                                eta=hyper.eta)[:, -1]
      weighted_S = batch.weight * values_S
      return jnp.mean(weighted_S), _max_share(weighted_S)
    preds = models.predict(params, model, batch, forward=tc.forward, eta=hyper.eta)
    sq_err_B = (preds - batch.y_query) ** 2
    return jnp.mean(sq_err_B), _max_share(sq_err_B)

  return loss


def make_objective(exp: config_lib.Experiment, layout: sharding.Layout | None = None):
  """loss(params, key, hyper) -> (loss, max_share) for the configured objective, drawing its own
  data from ``key`` (:func:`make_data`, then :func:`make_loss`).

  The task law and eta come from ``hyper`` (traced); the rest of ``exp`` is static.
  """
  draw, loss = make_data(exp, layout), make_loss(exp)
  return lambda params, key, hyper: loss(params, draw(key, hyper), hyper)


def make_chunk_fn(exp: config_lib.Experiment, layout: sharding.Layout | None = None):
  """The pure (un-jitted) ``chunk(params, opt_state, hyper, steps_K) -> (params, opt_state,
  losses_K, grad_norms_K, shares_K)``: ``len(steps_K)`` training steps in one lax.scan.

  ``grad_norms_K`` are the global norms of the raw (unclipped) gradients of each step,
  ``shares_K`` the largest sample's share of each step's batch loss. The
  update is -hyper.learning_rate * direction (see :func:`optim.make_direction`).

  Data reused across steps (``train.resample_every`` 0 or > 1) is drawn once per key, not once
  per step: the batch rides in the scan's carry and is redrawn (lax.cond) only at the steps
  where the step's data key changes. The batch is the same either way, so is every step.
  """
  draw, loss = make_data(exp, layout), make_loss(exp)
  direction = optim.make_direction(exp.train)
  resample_every = exp.train.resample_every

  def update(params, opt_state, hyper, batch):
    (value, share), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, hyper)
    updates, opt_state = direction.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - hyper.learning_rate * u, params, updates)
    return params, opt_state, (value, optax.tree.norm(grads), share)

  def chunk(params, opt_state, hyper, steps_K):
    data_key = jax.random.wrap_key_data(hyper.data_key)

    if resample_every == 1:   # fresh data every step
      def train_step(carry, step):
        params, opt_state = carry
        batch = draw(step_data_key(data_key, step, resample_every), hyper)
        params, opt_state, out = update(params, opt_state, hyper, batch)
        return (params, opt_state), out

      (params, opt_state), outs = jax.lax.scan(train_step, (params, opt_state), steps_K)
    else:
      def reused_step(carry, step):
        params, opt_state, batch = carry
        if resample_every > 0:   # a new key every resample_every steps (0: one for the run)
          batch = jax.lax.cond(
              (step % resample_every == 0) & (step != steps_K[0]),
              lambda: draw(step_data_key(data_key, step, resample_every), hyper), lambda: batch)
        params, opt_state, out = update(params, opt_state, hyper, batch)
        return (params, opt_state, batch), out

      first = draw(step_data_key(data_key, steps_K[0], resample_every), hyper)
      (params, opt_state, _), outs = jax.lax.scan(reused_step, (params, opt_state, first),
                                                  steps_K)
    losses_K, grad_norms_K, shares_K = outs
    return params, opt_state, losses_K, grad_norms_K, shares_K

  return chunk


class _Program:
  """An experiment compared by its program fields only: the key of :func:`make_train_chunk`'s
  cache (runs equal in them share one compiled program, :func:`check_same_program`)."""

  def __init__(self, exp: config_lib.Experiment):
    self.exp = exp
    self.key = tuple(sorted(config_lib.program_fields(exp).items()))

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _Program) and self.key == other.key


def make_train_chunk(exp: config_lib.Experiment, layout: sharding.Layout | None = None,
                     num_runs: int | None = None):
  """The jitted chunk of one run (``num_runs`` None) or of a vmapped group of ``num_runs`` runs
  (params, opt_state and hyper stacked on a leading axis; losses (num_runs, K)).

  Inputs and outputs are placed by ``layout`` (jit in/out shardings); params and optimizer state
  are donated. One jitted function per (program fields, layout, num_runs) in a process: a second
  run of the same program (a resume, another seed or learning rate, a sweep point) reuses it
  without tracing, lowering or a compilation-cache lookup again.
  """
  layout = sharding.layout_for(num_runs) if layout is None else layout
  return _train_chunk(_Program(exp), layout, num_runs)


@functools.lru_cache(maxsize=64)
def _train_chunk(program: _Program, layout: sharding.Layout, num_runs: int | None):
  chunk = make_chunk_fn(program.exp, layout)
  if num_runs is not None:
    chunk = jax.vmap(chunk, in_axes=(0, 0, 0, None))
  state, rep = layout.state(), layout.replicated()
  return jax.jit(chunk, donate_argnums=(0, 1), in_shardings=(state, state, state, rep),
                 out_shardings=(state, state, state, state, state))


def initial_state(exp: config_lib.Experiment) -> dict:
  """{params, opt_state} at step 0 (params from root_keys(seed)["init"])."""
  params = models.init_params(root_keys(exp.seed)["init"], exp.model)
  return {"params": params, "opt_state": optim.make_direction(exp.train).init(params)}


def stack(trees):
  """Stacks runs' pytrees on a new leading axis (the layout of a vmapped group)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, num: int):
  """The inverse of :func:`stack`: ``num`` pytrees."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num)]


def check_same_program(exps: list[config_lib.Experiment]) -> None:
  """Raises unless the runs share one program: equal in every field but the ``hyper`` ones."""
  first = config_lib.program_fields(exps[0])
  for exp in exps[1:]:
    other = config_lib.program_fields(exp)
    for name, value in first.items():
      if other[name] != value:
        raise ValueError(f"{name} differs between runs of one vmapped group; only "
                         f"{', '.join(config_lib.hyper_fields())} may (see train_step.Hyper)")
