"""Chen et al. 2024's fixed looped GD in closed form, in the eigenbasis of S (NumPy float64),
and its bound |alpha| exp(-T / (2 kappa)) checked per task and loop count (SPEC §5).

Closed form: w_T - w_hat = -(I - eta S)^T w_hat, eta = 1 / lambda_max(S): with S = U diag(lam) U^T
the coordinates of U^T (w_T - w_hat) are -(1 - lam_i / lam_max)^T c_i, c = U^T w_hat (relative
accuracy ~1e-14 at every T: products of powers, no cancellation). The transformer's Gram forward
costs O(T d^4) per prompt (d query read-outs, each carrying its own copy of the Gram matrix), so
the closed form serves many tasks and the transformer a subset it must agree with.

Round-off floors (the tolerances and the check itself are :mod:`looped_icl.theory.chen`'s): a
violation is err > bound (1 + BOUND_REL_TOL) + floor; floor = 0 for the closed form's distances to
w_hat (exact), and floor = ROUNDOFF_FLOOR_FACTOR kappa ||w_hat|| (Euclidean; times
sqrt(lambda_max) in the S-norm) wherever a float64 round-off floor exists: the transformer's
iterate vs a separately solved w_hat, or the distance to w* (w_hat - w* is a linear solve's
round-off, ~d eps kappa ||w||, even without noise).

The paper's own construction (tokens as rows, q generated; :mod:`looped_icl.chen_construction`)
runs GD on f(q) = ||X q + alpha y||^2 / 2; :func:`generation_closed_form` is that GD in closed form
and :func:`theorem_4_5_evaluate` checks Lemma 4.1 and Theorem 4.5 with both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from looped_icl import chen_construction
from looped_icl import tasks as tasks_lib
from looped_icl.theory import chen

DISTANCE_NORMS = ("s", "euclidean")    # the closed form's names of the same two norms
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
    floor_B = chen.ROUNDOFF_FLOOR_FACTOR * self.kappa_B * self.alpha("euclidean")
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
  if np.any(dist(hi_B) > target_B * (1 + chen.BOUND_REL_TOL)):
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


def chen_bound_checks(spec: ChenSpectral, dist: dict, loops, transformer: bool,
                      keys=DISTANCE_NORMS) -> dict[str, chen.ChenCheck]:
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
    out[key] = chen.chen_check(dist[key], chen_bound_per_task(alpha_B, loops_BxK, kappa_B),
                               floor_B)
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
  checks: dict[str, chen.ChenCheck]
  transformer_checks: dict[str, chen.ChenCheck]


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


# ------------------------------------------------------------------------------------------------
# The paper's construction: GD on q (Lemma 4.1, Theorem 4.5).
# ------------------------------------------------------------------------------------------------


def generation_closed_form(tasks: chen_construction.GenerationTasks, loops) -> np.ndarray:
  """q(T) of the paper's construction from q(0) = 0 with eta = 1 / lambda_max(X^T X), (B, K, d).

  A loop is q <- q - eta (A q + alpha X^T y), A = X^T X (Lemma 4.1), so q(T) = (I - (I - eta A)^T)
  q*, q* = -alpha theta_hat, theta_hat = A^{-1} X^T y; with A = U diag(lam) U^T the coordinates of
  U^T q(T) are -alpha (1 - (1 - lam_i / lam_max)^T) (U^T theta_hat)_i. ``loops``: (K,) shared.
  """
  x_BxNxD = np.asarray(tasks.x, np.float64)
  lam_BxD, u_BxDxD = np.linalg.eigh(np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD))
  xty_BxD = np.einsum("bni,bn->bi", x_BxNxD, np.asarray(tasks.y, np.float64))
  c_BxD = np.einsum("bji,bj->bi", u_BxDxD, xty_BxD) / lam_BxD          # U^T theta_hat
  r_BxD = 1.0 - lam_BxD / lam_BxD[:, -1:]
  gain_BxKxD = 1.0 - r_BxD[:, None, :] ** np.asarray(loops)[None, :, None]
  coords_BxKxD = -np.asarray(tasks.alpha, np.float64)[:, None, None] * gain_BxKxD * c_BxD[:, None]
  return np.einsum("bij,bkj->bki", u_BxDxD, coords_BxKxD)


class Theorem45Evaluation(NamedTuple):
  """One setting of generation tasks evaluated by :func:`theorem_4_5_evaluate`.

  kappa: (B,) cond(X^T X); errors: per reading (``THEOREM_4_5_READINGS``), (error (B, T), scale
  (B,)) for T = 1..T_max; checks: per reading, the :class:`~looped_icl.theory.chen.ChenCheck`;
  lemma_4_1: (max |Attn(Z(0)) - Lemma 4.1|, max |entry|); agreement: max |q_transformer -
  q_closed_form| / ||q*|| (||q*|| = |alpha| ||theta_hat||) over tasks and T.
  """
  kappa: np.ndarray
  errors: dict[str, tuple[np.ndarray, np.ndarray]]
  checks: dict[str, chen.ChenCheck]
  lemma_4_1: tuple[float, float]
  agreement: float


def theorem_4_5_evaluate(tasks: chen_construction.GenerationTasks, num_loops: int, *,
                         lemma_seed: int = 0) -> Theorem45Evaluation:
  """Lemma 4.1 and every reading of Theorem 4.5 on ``tasks``, T = 1..``num_loops``.

  Lemma 4.1 is checked at a random q(0) ~ N(0, I_d) (``lemma_seed``), so both of its terms are
  exercised; Theorem 4.5 reads q(t) off the transformer (q(0) = 0, eta(t) = 1 / lambda_max(X^T X))
  and compares it with :func:`generation_closed_form`. Call under ``jax.enable_x64``.
  """
  x_BxNxD = np.asarray(tasks.x, np.float64)
  num, _, d = x_BxNxD.shape
  lemma = chen_construction.lemma_4_1_error(
      tasks, np.random.default_rng(lemma_seed).standard_normal((num, d)))
  q_BxTxD = chen_construction.generated_vectors(tasks, num_loops)
  q_cf_BxTxD = generation_closed_form(tasks, np.arange(1, num_loops + 1))
  # |alpha| ||theta_hat|| = ||q*||, the scale of q(T).
  scale_B = np.linalg.norm(generation_closed_form(tasks, np.array([np.inf]))[:, 0], axis=1)
  agreement = float(np.max(np.abs(q_BxTxD - q_cf_BxTxD) / scale_B[:, None, None]))
  kappa_B = chen.generation_kappa(x_BxNxD)
  return Theorem45Evaluation(kappa=kappa_B, errors=chen.theorem_4_5_errors(tasks, q_BxTxD),
                             checks=chen.theorem_4_5_checks(tasks, q_BxTxD, kappa_B),
                             lemma_4_1=lemma, agreement=agreement)


def theorem_4_5_summary(ev: Theorem45Evaluation, rate_s: float) -> dict:
  """One setting's headline numbers: kappa quantiles, Lemma 4.1's error, the transformer's
  agreement, each reading's check, the as-stated error at T_max, and the decay exponent.

  The exponent per unit T / kappa (:func:`chen_observed_rate`; the bound's is 1/2) is measured on
  the corrected reading at T = min(T_max, ceil(rate_s kappa)) per task, where the error is still
  far above float64 round-off; its median and min over tasks are reported.
  """
  kappa_B = ev.kappa
  err_BxT, scale_B = ev.errors["corrected"]
  t_max = err_BxT.shape[1]
  loops_B = np.minimum(t_max, np.ceil(rate_s * kappa_B)).astype(np.int64)
  rel_B = err_BxT[np.arange(kappa_B.size), loops_B - 1] / scale_B
  rate_B = chen_observed_rate(rel_B, loops_B, kappa_B)
  stated_err_BxT, stated_scale_B = ev.errors["as_stated"]
  out = {"num_tasks": int(kappa_B.size), "T_max": int(t_max),
         "kappa_median": float(np.median(kappa_B)), "kappa_q90": float(np.quantile(kappa_B, 0.9)),
         "lemma_4_1_max_abs_error": ev.lemma_4_1[0], "lemma_4_1_max_abs_entry": ev.lemma_4_1[1],
         "transformer_vs_closed_form": ev.agreement}
  for reading, check in ev.checks.items():
    out.update({f"{reading}_{k}": v for k, v in dataclasses.asdict(check).items()})
  out.update(as_stated_err_over_alpha_final_median=float(np.median(
                 stated_err_BxT[:, -1] / stated_scale_B)),
             rate_per_kappa_median=float(np.median(rate_B)),
             rate_per_kappa_min=float(np.min(rate_B)), paper_rate_per_kappa=0.5)
  return out


def theorem_4_5_totals(summaries: list[dict]) -> dict:
  """``lemma_4_1`` and ``theorem_4_5`` over settings (:func:`theorem_4_5_summary` of each, with
  its ``d`` and ``n``): each reading's claim, pairs, violations, floor pairs and max ratio."""
  total = lambda key: sum(row[key] for row in summaries)
  most = lambda key: max(row[key] for row in summaries)
  theorem = {"paper_rate_per_kappa": 0.5,
             "transformer_vs_closed_form": most("transformer_vs_closed_form"),
             "rate_per_kappa_min": min(row["rate_per_kappa_min"] for row in summaries)}
  for r in chen.THEOREM_4_5_READINGS:
    theorem[r] = {"claim": chen.THEOREM_4_5_CLAIMS[r], "pairs": total(f"{r}_pairs"),
                  "violations": total(f"{r}_violations"),
                  "floor_pairs": total(f"{r}_floor_pairs"), "max_ratio": most(f"{r}_max_ratio")}
  theorem.update({k: [row[k] for row in summaries] for k in (
      "d", "n", "kappa_median", "rate_per_kappa_median", "as_stated_err_over_alpha_final_median")})
  return {"lemma_4_1": {"max_abs_error": most("lemma_4_1_max_abs_error"),
                        "max_abs_entry": most("lemma_4_1_max_abs_entry"),
                        "tasks": total("num_tasks")},
          "theorem_4_5": theorem}


__all__ = [
    "DISTANCE_NORMS", "ChenSpectral",
    "chen_spectral", "chen_closed_form_distances", "chen_transformer_distances",
    "chen_loops_to_epsilon", "marchenko_pastur_kappa", "chen_bound_per_task",
    "chen_bound_checks", "chen_agreement", "chen_relative_errors",
    "chen_loops_guarantee", "chen_observed_rate", "ChenEvaluation", "chen_evaluate",
    "generation_closed_form", "Theorem45Evaluation", "theorem_4_5_evaluate",
    "theorem_4_5_summary", "theorem_4_5_totals",
]
