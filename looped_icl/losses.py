"""In-context losses (SPEC section 4): Monte Carlo and exact Rao-Blackwellised population loss.

The in-context loss is f = E[(y_hat - y_q)^2] (no 1/2).

For the preconditioner family the prediction after L steps is <w_L, x_q> with
e_l = w_l - w* = M_l w* + N_l xi, xi = X^T eps / n, S = X^T X / n:
  M_0 = -I, N_0 = 0, M_{l+1} = (I - eta_l A_l^T S) M_l,
  N_{l+1} = (I - eta_l A_l^T S) N_l + eta_l A_l^T.
The expectation over w* ~ N(0, Sigma_w), x_q ~ (0, Sigma), eps ~ N(0, sigma^2) is exact:
  f = E_S[ tr(Sigma M_L Sigma_w M_L^T) + sigma^2 / n tr(Sigma N_L S N_L^T) ] + sigma^2,
and only S is sampled (plainly, or with importance weights: :mod:`looped_icl.estimators`). GD++
is preconditioned GD with the S-dependent preconditioner A~_l = C_l^T A_l C_l, C_0 = I,
C_{l+1} = (I - eta_l B_l C_l S C_l^T A_l) C_l (the running covariate transform), so the same
formula applies.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import estimators
from looped_icl import linalg
from looped_icl import models
from looped_icl import population_forward
from looped_icl import tasks as tasks_lib

POPULATION_FAMILIES = ("preconditioner", "gdpp", "fixed")
# Samples of S per block of the population loss (:func:`population_loss_samples`): the fastest
# of 512-4096 for value and gradient at 20k samples in float64 (BUILD_NOTES.md, Suite time).
BLOCK = 4096


def mc_loss(params, cfg: models.ModelConfig, batch, *, forward: str = "gram",
            num_loops: int | None = None, all_layers: bool = False) -> jax.Array:
  """Monte Carlo in-context loss mean((y_hat - y_q)^2) over a batch; (L,) with all_layers."""
  preds = models.predict(params, cfg, batch, forward=forward, num_loops=num_loops,
                         all_layers=all_layers)
  y_q = batch.y_query[:, None] if all_layers else batch.y_query
  return jnp.mean((preds - y_q) ** 2, axis=0)


def _family_weights(params, cfg: models.ModelConfig, num_loops: int | None, eta=None):
  """Stacked (A_L, B_L or None, eta_L) of a preconditioner/gdpp/fixed model (``eta``: the looped
  step if not ``cfg.eta``; see :func:`looped_icl.models.attention_weights`)."""
  if cfg.parametrization not in POPULATION_FAMILIES:
    raise ValueError(f"parametrization must be one of {list(POPULATION_FAMILIES)} for the "
                     f"population loss, got {cfg.parametrization!r}")
  p, q, eta = models.layer_weights(params, cfg, num_loops, eta=eta)
  d = cfg.d
  a = q[:, :d, :d]
  b = p[:, :d, :d] if cfg.parametrization == "gdpp" else None
  return a, b, eta


def _gdpp_preconditioners_bl(a_LxDxD, b_LxDxD, eta_L, s_DxDxS) -> jax.Array:
  """GD++'s per-sample preconditioners C_l^T A_l C_l, batch-last (L, d, d, S)."""
  eye_DxDx1 = linalg.eye_bl(s_DxDxS.shape[0], s_DxDxS.dtype)

  def layer(c_DxDxS, weights):
    a, b, eta = weights
    a_eff = linalg.mm_bl(linalg.mm_bl(linalg.t_bl(c_DxDxS), a[:, :, None]), c_DxDxS)
    s_cur = linalg.mm_bl(linalg.mm_bl(c_DxDxS, s_DxDxS), linalg.t_bl(c_DxDxS))
    t = eye_DxDx1 - eta * linalg.mm_bl(linalg.mm_bl(b[:, :, None], s_cur), a[:, :, None])
    return linalg.mm_bl(t, c_DxDxS), a_eff

  c0 = jnp.broadcast_to(eye_DxDx1, s_DxDxS.shape)
  return jax.lax.scan(layer, c0, (a_LxDxD, b_LxDxD, eta_L))[1]


def effective_preconditioners(params, cfg: models.ModelConfig, s_SxDxD: jax.Array,
                              num_loops: int | None = None) -> jax.Array:
  """Per-sample, per-layer preconditioners A~ (S, L, d, d): A_l, or C_l^T A_l C_l for GD++."""
  a_LxDxD, b_LxDxD, eta_L = _family_weights(params, cfg, num_loops)
  num_samples, d = s_SxDxD.shape[0], cfg.d
  num_layers = a_LxDxD.shape[0]
  if b_LxDxD is None:
    return jnp.broadcast_to(a_LxDxD, (num_samples, num_layers, d, d))
  a_LxDxDxS = _gdpp_preconditioners_bl(a_LxDxD, b_LxDxD, eta_L, linalg.to_bl(s_SxDxD))
  return jnp.moveaxis(a_LxDxDxS, -1, 0)


def _samples_of_s(samples) -> jax.Array:
  return samples.s if isinstance(samples, estimators.WeightedS) else samples


def population_loss_samples(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                            samples, *, num_loops: int | None = None, eta=None) -> jax.Array:
  """The Rao-Blackwellised loss of every layer for each sample of S: (S, L), unweighted.

  ``eta``: the looped step if not ``cfg.eta`` (a traced value in a sweep over it).

  ``samples``: S, (S, d, d), or :class:`~looped_icl.estimators.WeightedS` (its ``s``). The
  population loss is the mean of weight * value (:func:`looped_icl.estimators.estimate` gives it
  with its standard error and tail diagnostics). Computed batch-last ((d, d, S); see
  :mod:`linalg`) with a hand-written reverse mode (:mod:`looped_icl.population_forward`), in
  blocks of :data:`BLOCK` samples above that size.
  """
  tasks_lib.require_one_covariance(task, "the population loss")
  s_SxDxD = _samples_of_s(samples)
  chex.assert_shape(s_SxDxD, (None, cfg.d, cfg.d))
  a_LxDxD, b_LxDxD, eta_L = _family_weights(params, cfg, num_loops, eta)
  noise_var = jnp.asarray(task.noise_std, s_SxDxD.dtype)**2
  weight_cov = task.weight_cov

  def losses_of(s_DxDxS):
    if b_LxDxD is None:   # one A per layer, shared by every sample: (L, d, d, 1)
      a_layers = a_LxDxD[..., None]
    else:                 # GD++: per-sample preconditioners, (L, d, d, S)
      a_layers = _gdpp_preconditioners_bl(a_LxDxD, b_LxDxD, eta_L, s_DxDxS)
    k_LxDxDxB = eta_L[:, None, None, None] * jnp.swapaxes(a_layers, 1, 2)  # K_l = eta_l A_l^T
    return population_forward.population_losses(k_LxDxDxB, s_DxDxS, task.cov, weight_cov,
                                                noise_var, task.n)

  num = s_SxDxD.shape[0]
  if num <= BLOCK:
    return losses_of(linalg.to_bl(s_SxDxD)).T
  # Blocks of BLOCK samples, one after another: the recursion's (d, d, S) intermediates stay in
  # cache (20k samples at once were 2.5x slower per sample). Each sample's value is the same
  # arithmetic either way; only sums over samples (gradients of shared weights) regroup.
  blocks = -(-num // BLOCK)
  s_KxSxDxD = jnp.pad(s_SxDxD, ((0, blocks * BLOCK - num), (0, 0), (0, 0))).reshape(
      blocks, BLOCK, cfg.d, cfg.d)
  losses_KxLxS = jax.lax.map(lambda s: losses_of(linalg.to_bl(s)), s_KxSxDxD)
  return jnp.moveaxis(losses_KxLxS, 1, 0).reshape(-1, blocks * BLOCK)[:, :num].T


def population_loss(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                    samples, *, num_loops: int | None = None,
                    all_layers: bool = False) -> jax.Array:
  """Unbiased estimate of the population loss of the last layer, or (L,): the mean over the
  samples of S (an array: plain Monte Carlo) or the weighted mean (``WeightedS``)."""
  values_SxL = population_loss_samples(params, cfg, task, samples, num_loops=num_loops)
  if isinstance(samples, estimators.WeightedS):
    losses = estimators.weighted_mean(values_SxL, samples)
  else:
    losses = jnp.mean(values_SxL, axis=0)
  return losses if all_layers else losses[-1]


# population_loss_samples compiled once per model config and shape (eager, its custom VJP runs
# op by op: every small op a compile of its own).
jit_population_loss_samples = jax.jit(population_loss_samples,
                                      static_argnames=("cfg", "num_loops"))


def last_layer_loss_samples(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                            samples, *, num_loops: int | None = None) -> jax.Array:
  """The Rao-Blackwellised loss of the last layer (or loop) for each sample of S, (S,).

  The last column of :func:`population_loss_samples`, through its compiled form
  (``jit_population_loss_samples``: one compilation per model config and shape, shared with the
  other estimators here).
  """
  return jit_population_loss_samples(params, cfg, task, samples, num_loops=num_loops)[:, -1]


def choose_proposal(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                    key: jax.Array, pilot_samples: int, *, num_loops: int | None = None,
                    layer: int = -1):
  """(proposal, info) of least measured variance for this model's per-S loss at ``layer``
  (:func:`estimators.choose_proposal`)."""
  return estimators.choose_proposal(
      lambda s: jit_population_loss_samples(params, cfg, task, s, num_loops=num_loops)[:, layer],
      key, task, pilot_samples=pilot_samples)


def estimate_population_loss(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                             key: jax.Array, num_samples: int, *, num_loops: int | None = None,
                             layer: int | None = None, pilot_samples: int | None = None,
                             proposal: estimators.Proposal | None = None):
  """The population loss of one model with its standard error and tail diagnostics.

  The proposal is chosen for this model's per-S loss at ``layer`` (default: the last of
  ``num_loops``) on a pilot sample (``fold_in(key, 0)``, default min(N, max(10^4, N / 5)) draws;
  :func:`estimators.choose_proposal`) unless given, then ``num_samples`` fresh weighted samples
  are drawn (``fold_in(key, 1)``).

  Returns:
    (report, samples, values_SxL): report = the :func:`estimators.estimate` dict of ``layer``
    plus the proposal, its measured variance reduction, and per-layer ``values`` / ``stderrs``;
    the WeightedS and the unweighted per-sample losses (S, L), for paired comparisons.
  """
  per_sample = lambda s: jit_population_loss_samples(params, cfg, task, s, num_loops=num_loops)
  num_layers = cfg.num_layers if num_loops is None else num_loops
  layer = num_layers - 1 if layer is None else layer
  if proposal is None:
    proposal, info = choose_proposal(params, cfg, task, jax.random.fold_in(key, 0),
                                     pilot_samples or min(num_samples,
                                                          max(10000, num_samples // 5)),
                                     num_loops=num_loops, layer=layer)
  else:
    info = {"proposal": proposal.describe(), "proposal_scales": list(proposal.scales),
            "proposal_weights": list(proposal.weights)}
  samples = estimators.sample(jax.random.fold_in(key, 1), task, num_samples, proposal)
  values_SxL = np.asarray(per_sample(samples.s), np.float64)
  per_layer = [estimators.estimate(values_SxL[:, l], samples) for l in range(num_layers)]
  report = dict(per_layer[layer], **info)
  report["values"] = [e["value"] for e in per_layer]
  report["stderrs"] = [e["stderr"] for e in per_layer]
  return report, samples, values_SxL


@functools.partial(jax.jit, static_argnames=("cfg",))
def per_sample_gradients(params, cfg: models.ModelConfig, task: tasks_lib.TaskDistribution,
                         s_SxDxD: jax.Array):
  """The gradient of the Rao-Blackwellised loss of each sample of S at ``params``: a pytree like
  ``params`` with a leading sample axis (the input of :func:`gradient_estimate`)."""
  return jax.vmap(lambda s: jax.grad(
      lambda p: population_loss_samples(p, cfg, task, s[None])[0, -1])(params))(s_SxDxD)


def gradient_estimate(grads_S, samples: estimators.WeightedS) -> dict:
  """The gradient of the population loss with a standard error per entry, from per-sample
  gradients ``grads_S`` (:func:`per_sample_gradients` on ``samples``, or any linear map of them,
  e.g. a projection onto the directions a theorem speaks of): their weighted mean (an unbiased
  estimate, as the loss itself; :func:`estimators.mean_and_stderrs`).

  Returns:
    {"mean", "stderr": pytrees like one sample of ``grads_S``; "max_abs_z": the largest
    |mean / stderr| over the entries (a stationarity test: ~N(0, 1) entries at a critical
    point), "norm"}.
  """
  leaves, treedef = jax.tree.flatten(grads_S)
  num = samples.s.shape[0]
  means, stderrs = [], []
  for leaf in leaves:
    mean_K, se_K = estimators.mean_and_stderrs(np.asarray(leaf).reshape(num, -1), samples)
    means.append(mean_K.reshape(leaf.shape[1:]))
    stderrs.append(se_K.reshape(leaf.shape[1:]))
  flat_mean = np.concatenate([m.ravel() for m in means])
  flat_se = np.concatenate([e.ravel() for e in stderrs])
  return {"mean": jax.tree.unflatten(treedef, means),
          "stderr": jax.tree.unflatten(treedef, stderrs),
          "max_abs_z": float(np.max(np.abs(flat_mean) / np.maximum(flat_se, 1e-300))),
          "norm": float(np.linalg.norm(flat_mean))}
