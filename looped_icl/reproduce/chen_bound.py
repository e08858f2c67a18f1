r"""Chen, Li, Liang, Shi, Song 2024: fixed looped GD has error <= |alpha| exp(-T / (2 kappa)).

Paper claim (arXiv 2410.11268; only its abstract could be read): a linear looped transformer
implements multi-step gradient descent in context, and as long as the data has a constant
condition number -- e.g. n = O(d) examples -- it reaches a small error with T loops, the error
decaying as exp(-T / (2 kappa)) (SPEC §5), instead of needing n = exp(Omega(T)) examples.

Setting (no training): the fixed looped construction (:func:`looped_icl.constructions.chen_fixed`,
P = e_D e_D^T, Q = [[I, 0], [0, 0]]) with each prompt's own step eta = 1 / lambda_max(S),
S = X^T X / n, which is GD from w_0 = 0 on L(w) = ||y - X w||^2 / (2n). The transformer
"generates" the vector w_T: querying it with x_q = e_k reads coordinate k
(:func:`looped_icl.theory.chen_fixed_iterates`). The bound is :func:`looped_icl.theory.chen_bound`
with the claim its docstring pins: ||w_T - w_hat|| <= alpha exp(-T / (2 kappa)) in the S-norm and
in the Euclidean norm, alpha = the same norm of w_hat (the least-squares solution), kappa =
cond(X^T X) of that task. x ~ N(0, Sigma), w* ~ N(0, I), float64 throughout.

How the errors are computed. The transformer's Gram forward costs O(T d^4) per prompt (it runs d
query read-outs, each carrying its own copy of the Gram matrix), too slow for 10^4 tasks per
setting on two CPU cores. So every setting is evaluated twice:

* closed form (all tasks, every T): w_T - w_hat = -(I - eta S)^T w_hat, evaluated in the
  eigenbasis of S in NumPy (relative accuracy ~1e-14 at every T: products of powers, no
  cancellation), and
* the transformer (the first ``num_transformer`` tasks, T = 1..T_max): w_T read off
  :func:`theory.chen_fixed_iterates`; the two must agree (``*_transformer_vs_closed_form``).

Bound violations are counted for both, for every task and every T. A violation is
err > bound (1 + 1e-9) + floor; floor = 0 for the closed form's distances to w_hat (exact), and
floor = FLOOR_FACTOR kappa ||w_hat|| (Euclidean; times sqrt(lambda_max) in the S-norm) wherever
a float64 round-off floor exists: the transformer's iterate vs a separately solved w_hat, or the
distance to w* (w_hat - w* is a linear solve's round-off, ~d eps kappa ||w||, even without
noise). ``*_floor_pairs`` counts the (task, T) pairs whose bound is below that floor, i.e. where
the check is only "error at round-off level".

Experiments (CSV + PNG each):

1. ``chen_bound_vs_T``: error vs T = 1..T_max against the bound for n/d in {1.5, 2, 4, 8}
   (d = 10, Sigma = I, no noise); quantiles of error / alpha and error / bound; the per-task
   kappa distribution vs n/d (``chen_kappa.csv``) next to the Marchenko-Pastur edge value
   ((1 + sqrt(d/n)) / (1 - sqrt(d/n)))^2, and the loops T_eps needed for ||w_T - w_hat|| <=
   eps ||w_hat|| (eps = 1e-3; the bound guarantees T_eps <= ceil(2 kappa ln(1/eps))).
   Expected: zero violations; kappa's median falls with n/d towards O(1); T_eps ~ kappa.
2. ``chen_generation``: linear vector generation. The paper studies "linear vector generation
   tasks"; their exact definition could not be checked (only the abstract was available), and
   SPEC §5 describes the dual task as "generate v with <v, w*> ~ alpha". Implemented here:
   (a) generation: from the in-context pairs (x_i, y_i = <w*, x_i>) the looped transformer
   generates the vector v = w_T (read with the queries e_1..e_d); the generation error
   ||w_T - w*||_2 must obey the bound with alpha = ||w*||_2 (noiseless, so w_hat = w*);
   (b) the inner-product ("dual") reading: for a probe u (the prompt's query x_q ~ N(0, Sigma))
   the generated vector must satisfy <v, u> ~ alpha_u := <w*, u>, and |<w_T, u> - alpha_u| <=
   ||u|| ||w*|| exp(-T / (2 kappa)) (Cauchy-Schwarz on (a)). <w_T, u> is exactly the transformer's
   prediction at the query u (the query column evolves linearly). Expected: zero violations.
3. ``chen_kappa_stress``: Sigma with condition number kappa_Sigma in {1, 10, 100} ('condition'
   family, d = 5, n = 20). Per task, error / alpha at T = ceil(s kappa) collapses onto one curve
   in s = T / kappa below the bound's exp(-s/2) (the proof's sharper rate is exp(-s)); the loops
   T_eps to reach eps = 1e-3 grow proportionally to kappa (T_eps / kappa ~ constant).
4. ``chen_noise``: label noise sigma in {0, 0.1, 0.5} (n/d = 4, d = 10; the same X and w* for
   every sigma): the error to w_hat still obeys the bound; the error to w* plateaus at the OLS
   noise floor ||w_hat - w*|| (E ||w_hat - w*||^2 = sigma^2 d / (n - d - 1) for Sigma = I).

Paper numbers: the paper's rate exponent is 1/2 (exp(-T / (2 kappa))); the toolkit reports the
observed exponent per kappa (``observed_rate_per_kappa``, median of -ln(err/alpha) / (T/kappa) at
T = ceil(s_max kappa)), expected near 1 (the worst case decays as (1 - 1/kappa)^T).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from looped_icl import covariance
from looped_icl import tasks
from looped_icl import theory
from looped_icl.reproduce import common

RATIOS = (1.5, 2.0, 4.0, 8.0)          # n / d in experiments 1-2
KAPPAS_SIGMA = (1.0, 10.0, 100.0)      # experiment 3
NOISES = (0.0, 0.1, 0.5)               # experiment 4
D_MAIN, D_STRESS, N_STRESS, NOISE_RATIO = 10, 5, 20, 4.0
EPSILON = 1e-3                         # relative error target for the loops-to-eps counts
REL_TOL = 1e-9                         # relative slack of a violation (float64 evaluation)
# Absolute round-off floor, in units of kappa ||w_hat||: a float64 solve, or a GD fixed point
# reached in float64, is accurate to ~D eps kappa ||w|| (D = d + 1 = 11, eps = 2.2e-16, so
# ~2.4e-15 kappa ||w||); 1e-13 leaves a margin of 40 over that estimate.
FLOOR_FACTOR = 1e-13
QUANTILES = (0.1, 0.5, 0.9)
CHUNK = 1000                           # tasks per closed-form chunk (bounds the memory)
NORMS = ("s", "euclidean")             # distances to w_hat (the bound's norms)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How many tasks and loops a run uses."""
  num_tasks: int           # tasks per setting, closed form
  num_transformer: int     # of which run through the transformer
  max_loops: int           # T_max of experiments 1, 2 and 4
  stress_transformer: int  # transformer tasks per kappa_Sigma in experiment 3
  stress_loops: int        # their T_max
  num_s: int = 41          # grid of s = T / kappa in experiment 3


QUICK = Sizes(num_tasks=2000, num_transformer=32, max_loops=100, stress_transformer=16,
              stress_loops=200)
FULL = Sizes(num_tasks=10_000, num_transformer=500, max_loops=300, stress_transformer=200,
             stress_loops=1000)


@dataclasses.dataclass(frozen=True)
class Setting:
  """One task distribution: d, n, Sigma = 'condition'(kappa_sigma), label noise, sampling seed."""
  d: int
  n: int
  kappa_sigma: float = 1.0
  noise_std: float = 0.0
  seed: int = 0

  def cov(self) -> np.ndarray:
    return np.asarray(covariance.make_covariance("condition", self.d, kappa=self.kappa_sigma),
                      np.float64)


def draw_tasks(setting: Setting, num: int) -> tasks.Tasks:
  """``num`` prompts of ``setting`` as NumPy float64 arrays in a :class:`tasks.Tasks` (SPEC §1).

  x, x_q ~ N(0, Sigma), w* ~ N(0, I), y = X w* + sigma z. Drawn with NumPy, not
  :func:`tasks.sample_gram`: same law, but no per-n compilation of the JAX samplers (each costs
  seconds on two cores, more than all the closed-form work here). The draws are made in a fixed
  order, so settings that differ only in sigma share X, x_q, w* and z.
  """
  rng = np.random.default_rng(setting.seed)
  chol_DxD = np.linalg.cholesky(setting.cov())
  x_BxNxD = rng.standard_normal((num, setting.n, setting.d)) @ chol_DxD.T
  x_query_BxD = rng.standard_normal((num, setting.d)) @ chol_DxD.T
  w_BxD = rng.standard_normal((num, setting.d))
  z_BxN1 = rng.standard_normal((num, setting.n + 1))
  y_BxN = np.einsum("bni,bi->bn", x_BxNxD, w_BxD) + setting.noise_std * z_BxN1[:, :-1]
  y_query_B = np.einsum("bi,bi->b", x_query_BxD, w_BxD) + setting.noise_std * z_BxN1[:, -1]
  return tasks.Tasks(x=x_BxNxD, y=y_BxN, x_query=x_query_BxD, y_query=y_query_B, w=w_BxD)


def subset(batch: tasks.Tasks, num: int) -> tasks.Tasks:
  """The first ``num`` prompts."""
  return jax.tree_util.tree_map(lambda a: a[:num], batch)


def main_settings() -> list[Setting]:
  return [Setting(D_MAIN, int(round(r * D_MAIN)), seed=10 + i) for i, r in enumerate(RATIOS)]


def stress_settings() -> list[Setting]:
  return [Setting(D_STRESS, N_STRESS, kappa_sigma=k, seed=20 + i)
          for i, k in enumerate(KAPPAS_SIGMA)]


def noise_settings() -> list[Setting]:
  """The same seed for every sigma: identical X and w*, only the label noise differs."""
  n = int(round(NOISE_RATIO * D_MAIN))
  return [Setting(D_MAIN, n, noise_std=s, seed=30) for s in NOISES]


# ------------------------------------------------------------------------------------------------
# GD errors in the eigenbasis of S (closed form) and from the transformer's iterates.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spectral:
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
    floor_B = FLOOR_FACTOR * self.kappa_B * self.alpha("euclidean")
    return floor_B * (np.sqrt(self.lam_BxD[:, -1]) if norm == "s" else 1.0)

  def take(self, idx) -> Spectral:
    return Spectral(*(a[idx] for a in dataclasses.astuple(self)))


def spectral(batch: tasks.Tasks) -> Spectral:
  """Eigen-decomposition of every task's S = X^T X / n and w_hat, w*, x_q in that basis."""
  x_BxNxD = np.asarray(batch.x, np.float64)
  n = x_BxNxD.shape[1]
  lam_BxD, u_BxDxD = np.linalg.eigh(np.einsum("bni,bnj->bij", x_BxNxD, x_BxNxD) / n)
  ut_BxDxD = np.swapaxes(u_BxDxD, 1, 2)
  xty_BxD = np.einsum("bni,bn->bi", x_BxNxD, np.asarray(batch.y, np.float64)) / n
  c_BxD = np.einsum("bij,bj->bi", ut_BxDxD, xty_BxD) / lam_BxD
  w_star_BxD = np.asarray(batch.w, np.float64)
  query_BxD = np.asarray(batch.x_query, np.float64)
  return Spectral(lam_BxD=lam_BxD, u_BxDxD=u_BxDxD, c_BxD=c_BxD,
                  delta_BxD=c_BxD - np.einsum("bij,bj->bi", ut_BxDxD, w_star_BxD),
                  probe_BxD=np.einsum("bij,bj->bi", ut_BxDxD, query_BxD))


def _distances(spec: Spectral, e_BxKxD: np.ndarray) -> dict[str, np.ndarray]:
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


def closed_form_distances(spec: Spectral, loops) -> dict[str, np.ndarray]:
  """Exact GD distances after ``loops`` steps: (T,) shared or (B, K) per task -> (B, K) each.

  w_T - w_hat = -(I - eta S)^T w_hat, eta = 1 / lambda_max: in the eigenbasis the coordinates are
  -(1 - lam_i / lam_max)^T c_i. Evaluated in chunks of tasks to bound the memory.
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


def transformer_distances(batch: tasks.Tasks, spec: Spectral,
                          num_loops: int) -> dict[str, np.ndarray]:
  """The same distances for the iterates w_1..w_T read off the looped transformer, (B, T).

  The prompts go through :func:`tasks.to_gram` and the fixed looped transformer's exact Gram
  forward (:func:`theory.chen_fixed_iterates`); call under ``jax.enable_x64``.
  """
  w_BxTxD, _ = theory.chen_fixed_iterates(tasks.to_gram(batch), num_loops)
  coords_BxTxD = np.einsum("bji,btj->bti", spec.u_BxDxD, np.asarray(w_BxTxD, np.float64))
  return _distances(spec, coords_BxTxD - spec.c_BxD[:, None, :])


def loops_to_epsilon(spec: Spectral, eps: float = EPSILON) -> np.ndarray:
  """Per task, the least T with ||w_T - w_hat||_2 <= eps ||w_hat||_2 (bisection, exact GD).

  The distance never increases with T (every eigen-coordinate contracts by 1 - lam_i/lam_max in
  [0, 1)), and the bound guarantees T <= ceil(2 kappa ln(1/eps)); both are used (and checked).
  """
  target_B = eps * spec.alpha("euclidean")
  hi_B = np.ceil(2.0 * spec.kappa_B * math.log(1.0 / eps)).astype(np.int64)
  dist = lambda t_B: closed_form_distances(spec, t_B[:, None])["euclidean"][:, 0]
  if np.any(dist(hi_B) > target_B * (1 + REL_TOL)):
    raise AssertionError("the bound's guarantee T_eps <= ceil(2 kappa ln(1/eps)) failed")
  lo_B = np.zeros_like(hi_B)        # invariant: dist(lo) > target >= dist(hi)
  while np.any(hi_B - lo_B > 1):
    mid_B = (lo_B + hi_B) // 2
    ok_B = dist(mid_B) <= target_B
    hi_B, lo_B = np.where(ok_B, mid_B, hi_B), np.where(ok_B, lo_B, mid_B)
  return hi_B


# ------------------------------------------------------------------------------------------------
# Bound checks and summaries.
# ------------------------------------------------------------------------------------------------


def bound(alpha_B: np.ndarray, loops_BxK: np.ndarray, kappa_B: np.ndarray) -> np.ndarray:
  """theory.chen_bound per task and loop count, (B, K)."""
  return np.asarray(theory.chen_bound(alpha_B[:, None], loops_BxK, kappa_B[:, None]), np.float64)


@dataclasses.dataclass(frozen=True)
class Check:
  """Violations of err <= bound (1 + REL_TOL) + floor over all (task, T) pairs."""
  violations: int
  pairs: int
  floor_pairs: int          # pairs whose bound is below the round-off floor
  max_ratio: float          # max err / bound over pairs above the floor


def check(err_BxK: np.ndarray, bound_BxK: np.ndarray, floor_B: np.ndarray | float) -> Check:
  floor_Bx1 = np.broadcast_to(np.asarray(floor_B, np.float64).reshape(-1, 1), (err_BxK.shape[0], 1))
  above_BxK = bound_BxK > floor_Bx1
  ratio = np.where(above_BxK, err_BxK / np.maximum(bound_BxK, np.finfo(np.float64).tiny), 0.0)
  return Check(violations=int(np.sum(err_BxK > bound_BxK * (1 + REL_TOL) + floor_Bx1)),
               pairs=int(err_BxK.size), floor_pairs=int(np.sum(~above_BxK)),
               max_ratio=float(np.max(ratio)))


def _quantile_columns(prefix: str, values_BxK: np.ndarray) -> list[dict]:
  """{prefix_q10, prefix_median, prefix_q90} per column k."""
  q_QxK = np.quantile(values_BxK, QUANTILES, axis=0)
  names = [f"{prefix}_q{int(100 * q)}" if q != 0.5 else f"{prefix}_median" for q in QUANTILES]
  return [dict(zip(names, q_QxK[:, k])) for k in range(values_BxK.shape[1])]


def _mp_kappa(d: int, n: int) -> float:
  """Marchenko-Pastur edge ratio ((1 + sqrt(d/n)) / (1 - sqrt(d/n)))^2 (Sigma = I, n, d -> inf)."""
  r = math.sqrt(d / n)
  return ((1 + r) / (1 - r)) ** 2


def _agreement(tf: dict[str, np.ndarray], cf: dict[str, np.ndarray], spec: Spectral) -> float:
  """max |transformer - closed form| / alpha over tasks, T and the two bound norms."""
  return max(float(np.max(np.abs(tf[k] - cf[k]) / spec.alpha(k)[:, None])) for k in NORMS)


def _evaluate(setting: Setting, sizes: Sizes, num_transformer: int, tf_loops: int,
              cf_loops: np.ndarray):
  """Draws the tasks; closed-form distances at ``cf_loops`` and the transformer's at 1..tf_loops."""
  batch = draw_tasks(setting, sizes.num_tasks)
  spec = spectral(batch)
  spec_sub = spec.take(slice(0, num_transformer))
  tf = transformer_distances(subset(batch, num_transformer), spec_sub, tf_loops)
  tf_cf = closed_form_distances(spec_sub, np.arange(1, tf_loops + 1))
  return spec, closed_form_distances(spec, cf_loops), tf, _agreement(tf, tf_cf, spec_sub)


def _bound_checks(spec: Spectral, dist: dict, loops, transformer: bool,
                  keys=NORMS) -> dict[str, Check]:
  """Bound checks of ``keys`` (s / euclidean vs w_hat; to_w_star / probe vs w*).

  ``loops``: (K,) shared or (B, K) per task, the loop counts of ``dist``'s columns.
  """
  kappa_B = spec.kappa_B
  loops = np.asarray(loops)
  loops_BxK = np.broadcast_to(loops[None, :] if loops.ndim == 1 else loops, dist[keys[0]].shape)
  out = {}
  for key in keys:
    norm = "s" if key == "s" else "euclidean"
    alpha_B = spec.alpha(norm)
    floor_B = spec.floor(norm) if transformer or key in ("to_w_star", "probe") else 0.0
    if key == "probe":  # |<w_T - w*, u>| <= ||u|| ||w_T - w*||.
      u_norm_B = np.sqrt(np.sum(spec.probe_BxD**2, axis=1))
      alpha_B, floor_B = alpha_B * u_norm_B, floor_B * u_norm_B
    out[key] = check(dist[key], bound(alpha_B, loops_BxK, kappa_B), floor_B)
  return out


def _total(checks: dict[str, Check], field: str) -> int:
  return sum(getattr(c, field) for c in checks.values())


# ------------------------------------------------------------------------------------------------
# The four experiments.
# ------------------------------------------------------------------------------------------------


def _bound_vs_loops(ctx: common.Context, sizes: Sizes) -> dict:
  """Experiments 1 (bound vs T, kappa vs n/d) and 2 (linear vector generation)."""
  loops = np.arange(1, sizes.max_loops + 1)
  rows, kappa_rows, gen_rows, res = [], [], [], {}
  panels: dict[str, list[common.Series]] = {"err": [], "ratio": [], "gen": [], "probe": []}
  violations = {"closed_form": 0, "transformer": 0, "generation": 0}
  pairs = {"closed_form": 0, "transformer": 0, "generation": 0}
  floor_pairs = {"closed_form": 0, "transformer": 0, "generation": 0}
  for i, (setting, ratio) in enumerate(zip(main_settings(), RATIOS)):
    spec, cf, tf, agree = _evaluate(setting, sizes, sizes.num_transformer, sizes.max_loops, loops)
    kappa_B = spec.kappa_B
    checks_cf = _bound_checks(spec, cf, loops, transformer=False)
    checks_tf = _bound_checks(spec.take(slice(0, sizes.num_transformer)), tf, loops,
                              transformer=True, keys=NORMS + ("to_w_star", "probe"))
    checks_gen = _bound_checks(spec, cf, loops, transformer=False, keys=("to_w_star", "probe"))
    for name, checks in (("closed_form", checks_cf), ("transformer", checks_tf),
                         ("generation", checks_gen)):
      for field, tally in (("violations", violations), ("pairs", pairs),
                           ("floor_pairs", floor_pairs)):
        tally[name] += _total(checks, field)
    rel = {k: cf[k] / spec.alpha(k)[:, None] for k in NORMS}
    over_bound = {k: cf[k] / bound(spec.alpha(k), loops[None, :], kappa_B) for k in NORMS}
    w_norm_B = spec.alpha("euclidean")
    u_norm_B = np.sqrt(np.sum(spec.probe_BxD**2, axis=1))
    gen_rel = cf["to_w_star"] / w_norm_B[:, None]
    probe_rel = cf["probe"] / (w_norm_B * u_norm_B)[:, None]
    kappa_med = float(np.median(kappa_B))
    bound_med = np.exp(-loops / (2 * kappa_med))
    cols = [_quantile_columns(f"{k}_err_over_alpha", rel[k]) for k in NORMS]
    cols += [_quantile_columns(f"{k}_err_over_bound", over_bound[k]) for k in NORMS]
    for t_idx, t in enumerate(loops):
      row = {"n_over_d": ratio, "d": setting.d, "n": setting.n, "T": int(t),
             "bound_over_alpha_median_kappa": bound_med[t_idx]}
      for col in cols:
        row.update(col[t_idx])
      for k in NORMS:
        row[f"{k}_err_over_bound_max"] = float(np.max(over_bound[k][:, t_idx]))
      rows.append(row)
    for t_idx, (g, p) in enumerate(zip(_quantile_columns("gen_err_over_w_norm", gen_rel),
                                       _quantile_columns("probe_err_over_norms", probe_rel))):
      gen_rows.append({"n_over_d": ratio, "n": setting.n, "T": int(loops[t_idx]), **g, **p,
                       "bound_over_alpha_median_kappa": bound_med[t_idx]})
    t_eps_B = loops_to_epsilon(spec)
    kappa_rows.append({
        "n_over_d": ratio, "d": setting.d, "n": setting.n, "num_tasks": kappa_B.size,
        "kappa_median": kappa_med, "kappa_q90": float(np.quantile(kappa_B, 0.9)),
        "kappa_max": float(np.max(kappa_B)), "mp_kappa": _mp_kappa(setting.d, setting.n),
        "loops_to_eps_median": float(np.median(t_eps_B)),
        "loops_to_eps_q90": float(np.quantile(t_eps_B, 0.9)),
        "loops_to_eps_over_kappa_median": float(np.median(t_eps_B / kappa_B)),
        "loops_to_eps_over_guarantee_max": float(np.max(
            t_eps_B / np.ceil(2 * kappa_B * math.log(1 / EPSILON)))),
        "violations_closed_form": _total(checks_cf, "violations"),
        "violations_transformer": _total(checks_tf, "violations"),
        "violations_generation": _total(checks_gen, "violations"),
        "s_err_over_bound_max": checks_cf["s"].max_ratio,
        "euclidean_err_over_bound_max": checks_cf["euclidean"].max_ratio,
        "transformer_vs_closed_form": agree,
    })
    label, color = f"n/d={ratio:g}", f"C{i}"
    panels["err"] += [
        common.Series(f"{label} median", loops, np.median(rel["s"], axis=0), color + "-"),
        common.Series(f"{label} 90%", loops, np.quantile(rel["s"], 0.9, axis=0), color + ":"),
        common.Series(f"bound, median kappa={kappa_med:.3g}", loops, bound_med, color + "--")]
    panels["ratio"] += [
        common.Series(f"{label} median", loops, np.median(over_bound["s"], axis=0), color + "-"),
        common.Series(f"{label} max", loops, np.max(over_bound["s"], axis=0), color + ":")]
    panels["gen"] += [
        common.Series(label, loops, np.median(gen_rel, axis=0), color + "-"),
        common.Series(f"bound, kappa={kappa_med:.3g}", loops, bound_med, color + "--")]
    panels["probe"] += [
        common.Series(f"{label} median", loops, np.median(probe_rel, axis=0), color + "-"),
        common.Series(f"{label} 90%", loops, np.quantile(probe_rel, 0.9, axis=0), color + ":")]
  common.write_csv(ctx, "chen_bound_vs_T.csv", rows)
  common.write_csv(ctx, "chen_kappa.csv", kappa_rows)
  common.write_csv(ctx, "chen_generation.csv", gen_rows)
  ratios = [r["n_over_d"] for r in kappa_rows]
  common.line_figure(ctx, "chen_bound_vs_T.png", [
      common.Panel(panels["err"], "loops T", "median ||w_T - w_hat||_S / alpha", logy=True,
                   title="error vs T (S-norm) and the bound at the median kappa"),
      common.Panel(panels["ratio"], "loops T", "error / bound (per task)", logy=True,
                   title="error / bound: median and max over tasks (must stay <= 1)",
                   hlines={"bound": 1.0}),
      common.Panel([
          common.Series("median kappa", ratios, [r["kappa_median"] for r in kappa_rows]),
          common.Series("90% kappa", ratios, [r["kappa_q90"] for r in kappa_rows]),
          common.Series("Marchenko-Pastur edge", ratios, [r["mp_kappa"] for r in kappa_rows],
                        "--"),
          common.Series("median T_eps", ratios, [r["loops_to_eps_median"] for r in kappa_rows],
                        "s-")],
          "n / d", "kappa = cond(X^T X);  loops to eps=1e-3", logx=True, logy=True,
          title="per-task kappa and loops-to-eps vs n/d")],
      suptitle=f"Chen et al.: fixed looped GD vs |alpha| exp(-T/(2 kappa)), d={D_MAIN}")
  common.line_figure(ctx, "chen_generation.png", [
      common.Panel(panels["gen"], "loops T", "median ||w_T - w*|| / ||w*||", logy=True,
                   title="generated vector w_T (queries e_1..e_d)"),
      common.Panel(panels["probe"], "loops T", "median |<w_T, u> - <w*, u>| / (||u|| ||w*||)",
                   logy=True, title="inner-product reading at a probe u = x_q")],
      suptitle="Linear vector generation (noiseless, w_hat = w*)")
  res.update(
      violations_closed_form=violations["closed_form"], pairs_closed_form=pairs["closed_form"],
      violations_transformer=violations["transformer"], pairs_transformer=pairs["transformer"],
      floor_pairs_transformer=floor_pairs["transformer"],
      violations_generation=violations["generation"], pairs_generation=pairs["generation"],
      floor_pairs_generation=floor_pairs["generation"],
      n_over_d=ratios,
      kappa_median=[r["kappa_median"] for r in kappa_rows],
      kappa_q90=[r["kappa_q90"] for r in kappa_rows],
      mp_kappa=[r["mp_kappa"] for r in kappa_rows],
      loops_to_eps_median=[r["loops_to_eps_median"] for r in kappa_rows],
      loops_to_eps_over_kappa_median=[r["loops_to_eps_over_kappa_median"] for r in kappa_rows],
      loops_to_eps_over_guarantee_max=max(r["loops_to_eps_over_guarantee_max"]
                                          for r in kappa_rows),
      err_over_bound_max=max(max(r["s_err_over_bound_max"], r["euclidean_err_over_bound_max"])
                             for r in kappa_rows),
      transformer_vs_closed_form=max(r["transformer_vs_closed_form"] for r in kappa_rows))
  return res


def _kappa_stress(ctx: common.Context, sizes: Sizes) -> dict:
  """Experiment 3: error vs T / kappa collapses; loops to eps grow proportionally to kappa."""
  s_max = 2.0 * math.log(1.0 / EPSILON)
  s_grid = np.linspace(0.0, s_max, sizes.num_s)
  tf_loops = np.arange(1, sizes.stress_loops + 1)
  rows, curve_rows, collapse, raw = [], [], [], []
  violations = pairs = 0
  agree = 0.0
  for i, setting in enumerate(stress_settings()):
    batch = draw_tasks(setting, sizes.num_tasks)
    spec = spectral(batch)
    kappa_B = spec.kappa_B
    loops_BxK = np.ceil(s_grid[None, :] * kappa_B[:, None]).astype(np.int64)
    dist = closed_form_distances(spec, loops_BxK)
    rel_BxK = dist["euclidean"] / spec.alpha("euclidean")[:, None]
    spec_sub = spec.take(slice(0, sizes.stress_transformer))
    tf = transformer_distances(subset(batch, sizes.stress_transformer), spec_sub,
                               sizes.stress_loops)
    for checks in (_bound_checks(spec, dist, loops_BxK, transformer=False),
                   _bound_checks(spec_sub, tf, tf_loops, transformer=True)):
      violations, pairs = violations + _total(checks, "violations"), pairs + _total(checks, "pairs")
    agree = max(agree, _agreement(tf, closed_form_distances(spec_sub, tf_loops), spec_sub))
    t_eps_B = loops_to_epsilon(spec)
    # Observed exponent per kappa at s_max: -ln(err / alpha) / (T / kappa).
    rate_B = -np.log(np.maximum(rel_BxK[:, -1], 1e-300)) / (loops_BxK[:, -1] / kappa_B)
    label, color = f"kappa_Sigma={setting.kappa_sigma:g}", f"C{i}"
    for k, s in enumerate(s_grid):
      q = np.quantile(rel_BxK[:, k], QUANTILES)
      curve_rows.append({"kappa_sigma": setting.kappa_sigma, "s": s, "err_over_alpha_q10": q[0],
                         "err_over_alpha_median": q[1], "err_over_alpha_q90": q[2],
                         "bound": math.exp(-s / 2), "sharp_rate": math.exp(-s)})
    collapse += [
        common.Series(f"{label} median", s_grid, np.median(rel_BxK, axis=0), color + "-"),
        common.Series(f"{label} 90%", s_grid, np.quantile(rel_BxK, 0.9, axis=0), color + ":")]
    raw.append(common.Series(label, tf_loops, np.median(
        tf["euclidean"] / spec_sub.alpha("euclidean")[:, None], axis=0), color + "-"))
    rows.append({
        "kappa_sigma": setting.kappa_sigma, "d": setting.d, "n": setting.n,
        "num_tasks": kappa_B.size, "kappa_median": float(np.median(kappa_B)),
        "kappa_q90": float(np.quantile(kappa_B, 0.9)),
        "loops_to_eps_median": float(np.median(t_eps_B)),
        "loops_to_eps_q90": float(np.quantile(t_eps_B, 0.9)),
        "loops_to_eps_over_kappa_median": float(np.median(t_eps_B / kappa_B)),
        "guarantee_median": float(np.median(np.ceil(2 * kappa_B * math.log(1 / EPSILON)))),
        "observed_rate_per_kappa_median": float(np.median(rate_B)),
        "paper_rate_per_kappa": 0.5,
    })
  common.write_csv(ctx, "chen_kappa_stress.csv", rows)
  common.write_csv(ctx, "chen_kappa_collapse.csv", curve_rows)
  kappas = [r["kappa_median"] for r in rows]
  common.line_figure(ctx, "chen_kappa_stress.png", [
      common.Panel(raw, "loops T", "median ||w_T - w_hat|| / ||w_hat|| (transformer)",
                   logy=True, title="error vs T: slower with larger kappa_Sigma"),
      common.Panel(collapse + [
          common.Series("bound exp(-s/2)", s_grid, np.exp(-s_grid / 2), "k--"),
          common.Series("exp(-s)", s_grid, np.exp(-s_grid), "k:")],
          "s = T / kappa (T = ceil(s kappa) per task)", "||w_T - w_hat|| / ||w_hat||",
          logy=True, title="collapse in T / kappa"),
      common.Panel([
          common.Series("median loops to eps", kappas, [r["loops_to_eps_median"] for r in rows]),
          common.Series("median ceil(2 kappa ln(1/eps)) (bound)", kappas,
                        [r["guarantee_median"] for r in rows], "--")],
          "median kappa = cond(X^T X)", f"loops to eps={EPSILON:g}", logx=True, logy=True,
          title="loops to eps grow ~ kappa")],
      suptitle=f"kappa stress test: Sigma 'condition' family, d={D_STRESS}, n={N_STRESS}")
  return {
      "stress_kappa_sigma": list(KAPPAS_SIGMA),
      "stress_kappa_median": kappas,
      "stress_loops_to_eps_median": [r["loops_to_eps_median"] for r in rows],
      "stress_loops_to_eps_over_kappa_median": [r["loops_to_eps_over_kappa_median"] for r in rows],
      "stress_violations": violations, "stress_pairs": pairs,
      "stress_transformer_vs_closed_form": agree,
      "paper_rate_per_kappa": 0.5,
      "observed_rate_per_kappa": [r["observed_rate_per_kappa_median"] for r in rows],
  }


def _noise(ctx: common.Context, sizes: Sizes) -> dict:
  """Experiment 4: the bound vs w_hat survives label noise; the error to w* hits the OLS floor."""
  loops = np.arange(1, sizes.max_loops + 1)
  rows, summary_rows = [], []
  panels = {"hat": [], "star": []}
  floors = {}
  violations = pairs = 0
  agree = 0.0
  for setting in noise_settings():
    spec, cf, tf, a = _evaluate(setting, sizes, sizes.num_transformer, sizes.max_loops, loops)
    agree = max(agree, a)
    for checks in (_bound_checks(spec, cf, loops, transformer=False),
                   _bound_checks(spec.take(slice(0, sizes.num_transformer)), tf, loops,
                                 transformer=True)):
      violations, pairs = violations + _total(checks, "violations"), pairs + _total(checks, "pairs")
    floor_B = np.sqrt(np.sum(spec.delta_BxD**2, axis=1))     # ||w_hat - w*||
    rel_hat = cf["euclidean"] / spec.alpha("euclidean")[:, None]
    med_star = np.median(cf["to_w_star"], axis=0)
    for t_idx, t in enumerate(loops):
      rows.append({"sigma": setting.noise_std, "T": int(t),
                   "err_to_w_hat_over_alpha_median": float(np.median(rel_hat[:, t_idx])),
                   "err_to_w_star_median": float(med_star[t_idx]),
                   "err_to_w_star_q90": float(np.quantile(cf["to_w_star"][:, t_idx], 0.9)),
                   "ols_floor_median": float(np.median(floor_B))})
    mean_sq = float(np.mean(floor_B**2))
    summary_rows.append({
        "sigma": setting.noise_std, "d": setting.d, "n": setting.n, "num_tasks": floor_B.size,
        "ols_floor_median": float(np.median(floor_B)),
        "final_err_to_w_star_median": float(med_star[-1]),
        "final_err_to_w_star_transformer_median": float(np.median(tf["to_w_star"][:, -1])),
        "ols_floor_transformer_median": float(np.median(floor_B[:sizes.num_transformer])),
        "ols_floor_mean_square": mean_sq,
        "ols_floor_mean_square_se": float(np.std(floor_B**2) / math.sqrt(floor_B.size)),
        "ols_floor_mean_square_theory": setting.noise_std**2 * setting.d
                                        / (setting.n - setting.d - 1),
        "final_err_to_w_hat_over_alpha_median": float(np.median(rel_hat[:, -1])),
    })
    if setting.noise_std > 0:  # (sigma = 0: the floor is float64 round-off, ~1e-15)
      floors[f"sigma={setting.noise_std:g} floor"] = float(np.median(floor_B))
    label = f"sigma={setting.noise_std:g}"
    panels["hat"].append(common.Series(label, loops, np.median(rel_hat, axis=0), "-"))
    panels["star"].append(common.Series(label, loops, med_star, "-"))
  kappa_med = float(np.median(spec.kappa_B))   # the same X for every sigma
  panels["hat"].append(common.Series(f"bound, median kappa={kappa_med:.3g}", loops,
                                     np.exp(-loops / (2 * kappa_med)), "k--"))
  common.write_csv(ctx, "chen_noise_vs_T.csv", rows)
  common.write_csv(ctx, "chen_noise.csv", summary_rows)
  common.line_figure(ctx, "chen_noise.png", [
      common.Panel(panels["hat"], "loops T", "median ||w_T - w_hat|| / ||w_hat||", logy=True,
                   title="error to w_hat: obeys the bound for every sigma"),
      common.Panel(panels["star"], "loops T", "median ||w_T - w*||", logy=True,
                   title="error to w*: plateaus at the OLS floor ||w_hat - w*||",
                   hlines=floors)],
      suptitle=f"Label noise, n/d={NOISE_RATIO:g}, d={D_MAIN}")
  return {
      "noise_sigma": list(NOISES),
      "noise_violations": violations, "noise_pairs": pairs,
      "noise_transformer_vs_closed_form": agree,
      "noise_ols_floor_median": [r["ols_floor_median"] for r in summary_rows],
      "noise_final_err_to_w_star_median": [r["final_err_to_w_star_median"] for r in summary_rows],
      "noise_ols_floor_mean_square": [r["ols_floor_mean_square"] for r in summary_rows],
      "noise_ols_floor_mean_square_theory": [r["ols_floor_mean_square_theory"]
                                             for r in summary_rows],
  }


def run(ctx: common.Context) -> dict:
  """All four experiments (float64); returns the headline numbers."""
  sizes = QUICK if ctx.quick else FULL
  with jax.enable_x64(True):
    results = {"paper_bound": "|alpha| exp(-T / (2 kappa))", "epsilon": EPSILON,
               "sizes": dataclasses.asdict(sizes)}
    results.update(_bound_vs_loops(ctx, sizes))
    results.update(_kappa_stress(ctx, sizes))
    results.update(_noise(ctx, sizes))
  results["violations_total"] = (results["violations_closed_form"]
                                 + results["violations_transformer"]
                                 + results["violations_generation"]
                                 + results["stress_violations"] + results["noise_violations"])
  return results
