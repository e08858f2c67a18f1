"""Chen et al. 2024's fixed looped GD in closed form, in the eigenbasis of S (NumPy float64),
and its bound |alpha| exp(-T / (2 kappa)) checked per task and loop count (SPEC §5).

Closed form: w_T - w_hat = -(I - eta S)^T w_hat, eta = 1 / lambda_max(S): with S = U diag(lam) U^T
the coordinates of U^T (w_T - w_hat) are -(1 - lam_i / lam_max)^T c_i, c = U^T w_hat (relative
accuracy ~1e-14 at every T: products of powers, no cancellation). The transformer's Gram forward
costs O(T d^4) per prompt (d query read-outs, each carrying its own copy of the Gram matrix), so
the closed form serves many tasks and the transformer a subset it must agree with.

Round-off floors: a violation is err > bound (1 + BOUND_REL_TOL) + floor; floor = 0 for the closed
form's distances to w_hat (exact), and floor = ROUNDOFF_FLOOR_FACTOR kappa ||w_hat|| (Euclidean;
times sqrt(lambda_max) in the S-norm) wherever a float64 round-off floor exists: the transformer's
iterate vs a separately solved w_hat, or the distance to w* (w_hat - w* is a linear solve's
round-off, ~d eps kappa ||w||, even without noise).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from looped_icl import tasks as tasks_lib
from looped_icl.theory import chen

DISTANCE_NORMS = ("s", "euclidean")    # the closed form's names of the same two norms
BOUND_REL_TOL = 1e-9                   # relative slack of a violation (float64 evaluation)
# Absolute round-off floor, in units of kappa ||w_hat||: a float64 solve, or a GD fixed point
# reached in float64, is accurate to ~D eps kappa ||w|| (D = d + 1 = 11, eps = 2.2e-16, so
# ~2.4e-15 kappa ||w||); 1e-13 leaves a margin of 40 over that estimate.
ROUNDOFF_FLOOR_FACTOR = 1e-13
CHUNK = 1000                           # tasks per closed-form chunk (bounds the memory)


@dataclasses.dataclass(frozen=True)
class ChenSpectral:
  """Per task: S = U diag(lam) U^T and vectors in its eigenbasis (NumPy float64, B tasks).

  lam_BxD: eigenvalues of S (ascending); u_BxDxD: eigenvectors (columns); c_BxD: U^T w_hat;
  delta_BxD: U^T (w_hat - w*); probe_BxD: U^T x_q.
  """
  lam_BxD: np.ndarray
  u_BxDxD: np.ndarray
  c_BxD: np.ndarray
  delta_BxD: np.ndarray
  probe_BxD: np.ndarray

  @property
  def kappa_B(self) -> np.ndarray:
    return self.lam_BxD[:, -1] / self.lam_BxD[:, 0]

  def alpha(self, norm: str) -> np.ndarray:
    """||w_hat|| in ``norm`` (s or euclidean), (B,)."""
    weight = self.lam_BxD if norm == "s" else 1.0
    return np.sqrt(np.sum(weight * self.c_BxD**2, axis=1))

  def floor(self, norm: str) -> np.ndarray:
    """The absolute float64 round-off floor of a distance in ``norm``, (B,)."""
    floor_B = ROUNDOFF_FLOOR_FACTOR * self.kappa_B * self.alpha("euclidean")
    return floor_B * (np.sqrt(self.lam_BxD[:, -1]) if norm == "s" else 1.0)

  @property
  def probe_norm_B(self) -> np.ndarray:
    """||x_q||_2 per task."""
    return np.sqrt(np.sum(self.probe_BxD**2, axis=1))

  @property
  def ols_error_B(self) -> np.ndarray:
    """||w_hat - w*||_2 per task: the least-squares (noise) floor of the error to w*."""
    return np.sqrt(np.sum(self.delta_BxD**2, axis=1))

  def take(self, idx) -> ChenSpectral:
    return ChenSpectral(*(a[idx] for a in dataclasses.astuple(self)))


def chen_spectral(batch: tasks_lib.Tasks) -> ChenSpectral:
  """Eigen-decomposition of every task's S = X^T X / n and w_hat, w*, x_q in that basis."""
  x_BxNxD = np.asarray(batch.x, np.float64)
  n = x_BxNxD.shape[1]
  lam_BxD, u_BxDxD = np.linalg.eigh(np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD) / n)
  ut_BxDxD = np.swapaxes(u_BxDxD, 1, 2)
  xty_BxD = np.einsum("bni,bn->bi", x_BxNxD, np.asarray(batch.y, np.float64)) / n
  c_BxD = np.einsum("bij,bj->bi", ut_BxDxD, xty_BxD) / lam_BxD
  w_star_BxD = np.asarray(batch.w, np.float64)
  query_BxD = np.asarray(batch.x_query, np.float64)
  return ChenSpectral(lam_BxD=lam_BxD, u_BxDxD=u_BxDxD, c_BxD=c_BxD,
                      delta_BxD=c_BxD - np.einsum("bij,bj->bi", ut_BxDxD, w_star_BxD),
                      probe_BxD=np.einsum("bij,bj->bi", ut_BxDxD, query_BxD))


def _distances(spec: ChenSpectral, e_BxKxD: np.ndarray) -> dict[str, np.ndarray]:
  """Distances of iterates with U^T (w_T - w_hat) = e, (B, K) each.

  s / euclidean: ||w_T - w_hat|| in the S-norm / Euclidean norm; to_w_star: ||w_T - w*||_2;
  probe: |<w_T - w*, x_q>| (the transformer's prediction error at the query, noiseless labels).
  """
  to_star_BxKxD = e_BxKxD + spec.delta_BxD[:, None, :]
  return {
      "s": np.sqrt(np.sum(spec.lam_BxD[:, None, :] * e_BxKxD**2, axis=2)),
      "euclidean": np.sqrt(np.sum(e_BxKxD**2, axis=2)),
      "to_w_star": np.sqrt(np.sum(to_star_BxKxD**2, axis=2)),
      "probe": np.abs(np.sum(to_star_BxKxD * spec.probe_BxD[:, None, :], axis=2)),
  }


def chen_closed_form_distances(spec: ChenSpectral, loops) -> dict[str, np.ndarray]:
  """Exact GD distances after ``loops`` steps: (T,) shared or (B, K) per task -> (B, K) each.

  w_T - w_hat = -(I - eta S)^T w_hat, eta = 1 / lambda_max: in the eigenbasis the coordinates are
  -(1 - lam_i / lam_max)^T c_i. Evaluated in chunks of CHUNK tasks to bound the memory.
  """
  loops = np.asarray(loops)
  out: dict[str, list[np.ndarray]] = {}
  for start in range(0, spec.lam_BxD.shape[0], CHUNK):
    idx = slice(start, start + CHUNK)
    part = spec.take(idx)
    loops_BxK = loops[None, :] if loops.ndim == 1 else loops[idx]
    r_BxD = 1.0 - part.lam_BxD / part.lam_BxD[:, -1:]
    e_BxKxD = -(r_BxD[:, None, :] ** loops_BxK[:, :, None]) * part.c_BxD[:, None, :]
    for key, value in _distances(part, e_BxKxD).items():
      out.setdefault(key, []).append(value)
  return {key: np.concatenate(value) for key, value in out.items()}


def chen_transformer_distances(batch: tasks_lib.Tasks, spec: ChenSpectral,
                               num_loops: int) -> dict[str, np.ndarray]:
  """The same distances for the iterates w_1..w_T read off the looped transformer, (B, T).

  The prompts go through :func:`tasks.to_gram` and the fixed looped transformer's exact Gram
  forward (:func:`looped_icl.theory.chen.chen_fixed_iterates`); call under ``jax.enable_x64``.
  """
  w_BxTxD, _ = chen.chen_fixed_iterates(tasks_lib.to_gram(batch), num_loops)
  coords_BxTxD = np.einsum("bji,btj->bti", spec.u_BxDxD, np.asarray(w_BxTxD, np.float64))
  return _distances(spec, coords_BxTxD - spec.c_BxD[:, None, :])


def chen_relative_errors(spec: ChenSpectral,
                         dist: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Distances over their bound's alpha, (B, K) each: s and euclidean over ||w_hat|| in that
  norm, to_w_star over ||w_hat||_2 (= ||w*||_2 without noise), probe over ||w_hat||_2 ||x_q||_2."""
  w_norm_B = spec.alpha("euclidean")
  out = {k: dist[k] / spec.alpha(k)[:, None] for k in DISTANCE_NORMS if k in dist}
  if "to_w_star" in dist:
    out["to_w_star"] = dist["to_w_star"] / w_norm_B[:, None]
  if "probe" in dist:
    out["probe"] = dist["probe"] / (w_norm_B * spec.probe_norm_B)[:, None]
  return out


def chen_loops_guarantee(kappa_B: np.ndarray, eps: float) -> np.ndarray:
  """ceil(2 kappa ln(1/eps)): the loops after which the bound guarantees error <= eps alpha."""
  return np.ceil(2 * kappa_B * math.log(1 / eps))


def chen_observed_rate(rel_B: np.ndarray, loops_B: np.ndarray,
                       kappa_B: np.ndarray) -> np.ndarray:
  """The decay exponent per unit T / kappa, -ln(err / alpha) / (T / kappa), per task (the bound's
  is 1/2; the proof's sharper (1 - 1/kappa)^T gives >= 1)."""
  return -np.log(np.maximum(rel_B, 1e-300)) / (loops_B / kappa_B)


def chen_loops_to_epsilon(spec: ChenSpectral, eps: float) -> np.ndarray:
  """Per task, the least T with ||w_T - w_hat||_2 <= eps ||w_hat||_2 (bisection, exact GD).

  The distance never increases with T (every eigen-coordinate contracts by 1 - lam_i/lam_max in
  [0, 1)), and the bound guarantees T <= ceil(2 kappa ln(1/eps)); both are used (and checked).
  """
  target_B = eps * spec.alpha("euclidean")
  hi_B = chen_loops_guarantee(spec.kappa_B, eps).astype(np.int64)
  dist = lambda t_B: chen_closed_form_distances(spec, t_B[:, None])["euclidean"][:, 0]
  if np.any(dist(hi_B) > target_B * (1 + BOUND_REL_TOL)):
    raise AssertionError("the bound's guarantee T_eps <= ceil(2 kappa ln(1/eps)) failed")
  lo_B = np.zeros_like(hi_B)        # invariant: dist(lo) > target >= dist(hi)
  while np.any(hi_B - lo_B > 1):
    mid_B = (lo_B + hi_B) // 2
    ok_B = dist(mid_B) <= target_B
    hi_B, lo_B = np.where(ok_B, mid_B, hi_B), np.where(ok_B, lo_B, mid_B)
  return hi_B


def marchenko_pastur_kappa(d: int, n: int) -> float:
  """Marchenko-Pastur edge ratio ((1 + sqrt(d/n)) / (1 - sqrt(d/n)))^2 (Sigma = I, n, d -> inf)."""
  r = math.sqrt(d / n)
  return ((1 + r) / (1 - r)) ** 2


# ------------------------------------------------------------------------------------------------
# The bound, checked per task.
# ------------------------------------------------------------------------------------------------


def chen_bound_per_task(alpha_B: np.ndarray, loops_BxK: np.ndarray,
                        kappa_B: np.ndarray) -> np.ndarray:
  """:func:`looped_icl.theory.chen.chen_bound` per task and loop count, (B, K) float64."""
  return np.asarray(chen.chen_bound(alpha_B[:, None], loops_BxK, kappa_B[:, None]), np.float64)


@dataclasses.dataclass(frozen=True)
class ChenCheck:
  """Violations of err <= bound (1 + BOUND_REL_TOL) + floor over all (task, T) pairs."""
  violations: int
  pairs: int
  floor_pairs: int          # pairs whose bound is below the round-off floor
  max_ratio: float          # max err / bound over pairs above the floor


def chen_check(err_BxK: np.ndarray, bound_BxK: np.ndarray,
               floor_B: np.ndarray | float) -> ChenCheck:
  """Counts the pairs with err > bound (1 + BOUND_REL_TOL) + floor (floor per task or shared)."""
  floor_Bx1 = np.broadcast_to(np.asarray(floor_B, np.float64).reshape(-1, 1), (err_BxK.shape[0], 1))
  above_BxK = bound_BxK > floor_Bx1
  ratio = np.where(above_BxK, err_BxK / np.maximum(bound_BxK, np.finfo(np.float64).tiny), 0.0)
  return ChenCheck(violations=int(np.sum(err_BxK > bound_BxK * (1 + BOUND_REL_TOL) + floor_Bx1)),
                   pairs=int(err_BxK.size), floor_pairs=int(np.sum(~above_BxK)),
                   max_ratio=float(np.max(ratio)))


def chen_bound_checks(spec: ChenSpectral, dist: dict, loops, transformer: bool,
                      keys=DISTANCE_NORMS) -> dict[str, ChenCheck]:
  """Bound checks of ``keys`` (s / euclidean vs w_hat; to_w_star / probe vs w*).

  ``loops``: (K,) shared or (B, K) per task, the loop counts of ``dist``'s columns;
  ``transformer``: the distances come from the transformer (a round-off floor applies to all).
  The probe error obeys |<w_T - w*, u>| <= ||u|| ||w_T - w*||: its alpha and floor carry ||u||.
  """
  kappa_B = spec.kappa_B
  loops = np.asarray(loops)
  loops_BxK = np.broadcast_to(loops[None, :] if loops.ndim == 1 else loops, dist[keys[0]].shape)
  out = {}
  for key in keys:
    norm = "s" if key == "s" else "euclidean"
    alpha_B = spec.alpha(norm)
    floor_B = spec.floor(norm) if transformer or key in ("to_w_star", "probe") else 0.0
    if key == "probe":
      u_norm_B = spec.probe_norm_B
      alpha_B, floor_B = alpha_B * u_norm_B, floor_B * u_norm_B
    out[key] = chen_check(dist[key], chen_bound_per_task(alpha_B, loops_BxK, kappa_B), floor_B)
  return out


def chen_agreement(tf: dict[str, np.ndarray], cf: dict[str, np.ndarray],
                   spec: ChenSpectral) -> float:
  """max |transformer - closed form| / alpha over tasks, T and the two bound norms."""
  return max(float(np.max(np.abs(tf[k] - cf[k]) / spec.alpha(k)[:, None]))
             for k in DISTANCE_NORMS)


class ChenEvaluation(NamedTuple):
  """One setting evaluated twice (:func:`chen_evaluate`).

  spec: every task's :class:`ChenSpectral`; loops: the closed form's loop counts, (K,) or (B, K);
  closed_form: every task's distances at them; transformer: the first tasks' distances at
  T = 1..T_max from the transformer; agreement: :func:`chen_agreement` of the two on those tasks;
  checks / transformer_checks: the bound checks of each (:func:`chen_bound_checks`).
  """
  spec: ChenSpectral
  loops: np.ndarray
  closed_form: dict[str, np.ndarray]
  transformer: dict[str, np.ndarray]
  agreement: float
  checks: dict[str, ChenCheck]
  transformer_checks: dict[str, ChenCheck]


def chen_evaluate(batch: tasks_lib.Tasks, loops, num_transformer: int, transformer_loops: int, *,
                  per_kappa: bool = False, transformer_keys=DISTANCE_NORMS) -> ChenEvaluation:
  """Closed-form distances of every task of ``batch`` at ``loops``, the transformer's of the
  first ``num_transformer`` tasks at T = 1..``transformer_loops``, their agreement and the bound
  checks (``transformer_keys`` for the transformer's). Call under ``jax.enable_x64``.

  ``loops``: (K,) shared or (B, K) per task; with ``per_kappa``, a grid of s = T / kappa,
  evaluated at T = ceil(s kappa) per task.
  """
  spec = chen_spectral(batch)
  if per_kappa:
    loops = np.ceil(np.asarray(loops)[None, :] * spec.kappa_B[:, None]).astype(np.int64)
  closed_form = chen_closed_form_distances(spec, loops)
  spec_sub = spec.take(slice(0, num_transformer))
  subset = jax.tree_util.tree_map(lambda a: a[:num_transformer], batch)
  transformer = chen_transformer_distances(subset, spec_sub, transformer_loops)
  tf_loops = np.arange(1, transformer_loops + 1)
  agreement = chen_agreement(transformer, chen_closed_form_distances(spec_sub, tf_loops), spec_sub)
  return ChenEvaluation(
      spec=spec, loops=np.asarray(loops), closed_form=closed_form, transformer=transformer,
      agreement=agreement, checks=chen_bound_checks(spec, closed_form, loops, transformer=False),
      transformer_checks=chen_bound_checks(spec_sub, transformer, tf_loops, transformer=True,
                                           keys=transformer_keys))


__all__ = [
    "DISTANCE_NORMS", "BOUND_REL_TOL", "ROUNDOFF_FLOOR_FACTOR", "ChenSpectral",
    "chen_spectral", "chen_closed_form_distances", "chen_transformer_distances",
    "chen_loops_to_epsilon", "marchenko_pastur_kappa", "chen_bound_per_task", "ChenCheck",
    "chen_check", "chen_bound_checks", "chen_agreement", "chen_relative_errors",
    "chen_loops_guarantee", "chen_observed_rate", "ChenEvaluation", "chen_evaluate",
]
