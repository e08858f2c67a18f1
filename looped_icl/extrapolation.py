"""Test-time loops: a looped model (or k-step GD) run for 1..K loops on weighted samples of S.

Per prompt (one sample of S): the exact population loss after each loop count, and whether the
loop diverges there (spectral radius of I - A^T S above 1, so the error grows geometrically).
Over prompts: per-loop rows with the estimator's value, standard error, tail index and median;
a summary of where the mean stops decreasing, with the standard error of the paired gain; and
k-step GD with its own exact best step per k, the baseline that does not extrapolate.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import baselines
from looped_icl import constructions
from looped_icl import estimators
from looped_icl import losses


# The loop diverges on a prompt when the spectral radius of I - A^T S exceeds 1 + RADIUS_ATOL. At
# n < d, S has d - n zero eigenvalues, so the radius is at least 1 exactly (the loop leaves the
# error in S's null space as it is); float32 eigenvalues put that at 1 +- 1e-6, well below 1e-4.
RADIUS_ATOL = 1e-4


@jax.jit
def spectral_radius(a_DxD, s_SxDxD):
  """max |eig(I - A^T S)| per sample, (S,)."""
  eye_1xDxD = jnp.eye(a_DxD.shape[0], dtype=s_SxDxD.dtype)[None]
  iteration_SxDxD = eye_1xDxD - jnp.einsum("ji,sjk->sik", a_DxD, s_SxDxD)
  return jnp.max(jnp.abs(jnp.linalg.eigvals(iteration_SxDxD)), axis=-1)


def diverging_fraction(params, samples: estimators.WeightedS) -> float:
  """The weighted fraction of prompts on which the looped preconditioner ``params['a']`` diverges:
  spectral radius of I - A^T S above 1 + :data:`RADIUS_ATOL`."""
  radius_S = np.asarray(spectral_radius(jnp.asarray(params["a"], samples.s.dtype), samples.s))
  return float(np.mean(np.asarray(samples.weight, np.float64) * (radius_S > 1.0 + RADIUS_ATOL)))


@functools.partial(jax.jit, static_argnames=("model", "max_loops"))
def _loss_samples(params, model, task, s_SxDxD, max_loops: int):
  return losses.population_loss_samples(params, model, task, s_SxDxD, num_loops=max_loops)


def per_loop_losses(params, model, task, samples, max_loops: int) -> np.ndarray:
  """Per-prompt population loss of a looped model after 1..max_loops loops, (S, K), float64.

  The trained loop count of a looped model is irrelevant once the number of loops is given, so
  it is normalised to 1: one compilation serves every looped model (and the GD baseline). A
  float32 overflow (a diverged prompt) reads +inf.
  """
  if model.kind != "looped":
    raise ValueError(f"test-time loops need a looped model, got kind={model.kind!r}")
  model = dataclasses.replace(model, num_layers=1)
  per_SxK = np.asarray(_loss_samples(params, model, task, samples, max_loops), np.float64)
  return np.where(np.isfinite(per_SxK), per_SxK, np.inf)


def loop_rows(setting: str, model_name: str, per_SxK: np.ndarray, samples) -> list[dict]:
  """One row per loop count: mean (inf once a prompt overflowed), stderr, tail index, median."""
  rows = []
  for k in range(per_SxK.shape[1]):
    finite = bool(np.all(np.isfinite(per_SxK[:, k])))
    est = estimators.estimate(per_SxK[:, k], samples) if finite else None
    rows.append({"setting": setting, "model": model_name, "loops": k + 1,
                 "mean": est["value"] if finite else np.inf,
                 "stderr": est["stderr"] if finite else np.nan,
                 "tail_index": est["tail_index"] if finite else np.nan,
                 "median": estimators.weighted_quantile(per_SxK[:, k], 0.5, samples)})
  return rows


def summary(per_SxK: np.ndarray, trained_loops: int, samples) -> dict:
  """Where the mean loss over loops stops decreasing, the loss there and at the last loop, and
  the standard error of the paired gain (loss at the trained loops minus loss at the best)."""
  weight_S = np.asarray(samples.weight, np.float64)
  with np.errstate(invalid="ignore"):  # inf (overflowed) prompts: mean inf
    mean_K = np.mean(weight_S[:, None] * per_SxK, axis=0)
  median_K = np.array([estimators.weighted_quantile(v, 0.5, samples) for v in per_SxK.T])
  best = int(np.argmin(mean_K))
  with np.errstate(invalid="ignore"):  # inf - inf after overflow: not decreasing
    decreasing, median_decreasing = np.all(np.diff(mean_K) < 0), np.all(np.diff(median_K) < 0)
    gain_S = per_SxK[:, trained_loops - 1] - per_SxK[:, best]   # paired: same prompts
  gain_stderr = (estimators.estimate(gain_S, samples)["stderr"] if np.all(np.isfinite(gain_S))
                 else np.nan)
  return {"best_loops": best + 1, "best_loss": mean_K[best],
          "loss_at_trained_loops": mean_K[trained_loops - 1], "loss_at_max_loops": mean_K[-1],
          "gain_stderr": gain_stderr,
          "median_at_trained_loops": median_K[trained_loops - 1],
          "median_at_max_loops": median_K[-1],
          "keeps_decreasing": bool(decreasing), "median_keeps_decreasing": bool(median_decreasing)}


def gd_best_step(task, samples, steps: int, max_loops: int) -> tuple[float, np.ndarray]:
  """(eta, per-prompt loss (S,)) of ``steps``-step GD with the step minimising its loss on
  ``samples`` (exact line search). Evaluated through the ``max_loops`` program of
  :func:`per_loop_losses`, the one the looped models it is compared with compile."""
  gd_cfg, gd_params = constructions.gd(task.d, 1, eta=1.0)
  eta, _ = baselines.best_gd_eta(task, steps, samples)
  per_SxK = per_loop_losses({"a": eta * gd_params["a"]}, gd_cfg, task, samples, max_loops)
  return eta, per_SxK[:, steps - 1]


def gd_own_step(setting: str, task, samples, steps, max_loops: int) -> tuple[list[dict], dict]:
  """k-step GD with its own best step (:func:`gd_best_step`), each k in ``steps``.

  Returns (rows like :func:`loop_rows`' with the step ``eta``, a summary: steps, loss, eta,
  keeps_decreasing).
  """
  rows = []
  for k in steps:
    eta, per_S = gd_best_step(task, samples, k, max_loops)
    est = estimators.estimate(per_S, samples)
    rows.append({"setting": setting, "model": "gd_own_step", "loops": k, "mean": est["value"],
                 "stderr": est["stderr"], "tail_index": est["tail_index"],
                 "median": estimators.weighted_quantile(per_S, 0.5, samples), "eta": eta})
  means = np.asarray([r["mean"] for r in rows])
  return rows, {"steps": list(steps), "loss": means.tolist(), "eta": [r["eta"] for r in rows],
                "keeps_decreasing": bool(np.all(np.diff(means) < 0))}
