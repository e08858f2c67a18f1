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

How the errors are computed (:mod:`looped_icl.theory.chen_closed_form`): every setting is
evaluated in closed form (all tasks, every T) and through the transformer (the first
``num_transformer`` tasks, T = 1..T_max); the two must agree (``*_transformer_vs_closed_form``).
Bound violations are counted for both, for every task and every T, up to the float64 round-off
floors that module documents; ``*_floor_pairs`` counts the (task, T) pairs whose bound is below
that floor, i.e. where the check is only "error at round-off level".

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

import collections
import dataclasses
import math

import jax
import numpy as np

from looped_icl import covariance
from looped_icl import estimators
from looped_icl import tasks
from looped_icl import theory
from looped_icl.reproduce import chen_figures
from looped_icl.reproduce import common

RATIOS = (1.5, 2.0, 4.0, 8.0)          # n / d in experiments 1-2
KAPPAS_SIGMA = (1.0, 10.0, 100.0)      # experiment 3
NOISES = (0.0, 0.1, 0.5)               # experiment 4
D_MAIN, D_STRESS, N_STRESS, NOISE_RATIO = 10, 5, 20, 4.0
EPSILON = 1e-3                         # relative error target for the loops-to-eps counts
QUANTILES = (0.1, 0.5, 0.9)
NORMS = theory.DISTANCE_NORMS          # distances to w_hat (the bound's norms)


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
# The four experiments (the math: :mod:`looped_icl.theory.chen_closed_form`).
# ------------------------------------------------------------------------------------------------


def _quantile_columns(prefix: str, values_BxK: np.ndarray) -> list[dict]:
  """{prefix_q10, prefix_median, prefix_q90} per column k."""
  q_QxK = np.quantile(values_BxK, QUANTILES, axis=0)
  names = [f"{prefix}_q{int(100 * q)}" if q != 0.5 else f"{prefix}_median" for q in QUANTILES]
  return [dict(zip(names, q_QxK[:, k])) for k in range(values_BxK.shape[1])]


def _total(checks: dict[str, theory.ChenCheck], field: str) -> int:
  return sum(getattr(c, field) for c in checks.values())


def _bound_vs_loops(ctx: common.Context, sizes: Sizes) -> dict:
  """Experiments 1 (bound vs T, kappa vs n/d) and 2 (linear vector generation)."""
  loops = np.arange(1, sizes.max_loops + 1)
  rows, kappa_rows, gen_rows = [], [], []
  panels: dict[str, list[common.Series]] = {"err": [], "ratio": [], "gen": [], "probe": []}
  totals = collections.Counter()
  for i, (setting, ratio) in enumerate(zip(main_settings(), RATIOS)):
    ev = theory.chen_evaluate(draw_tasks(setting, sizes.num_tasks), loops, sizes.num_transformer,
                              sizes.max_loops, transformer_keys=NORMS + ("to_w_star", "probe"))
    spec, cf, kappa_B = ev.spec, ev.closed_form, ev.spec.kappa_B
    checks_gen = theory.chen_bound_checks(spec, cf, loops, transformer=False,
                                          keys=("to_w_star", "probe"))
    for name, checks in (("closed_form", ev.checks), ("transformer", ev.transformer_checks),
                         ("generation", checks_gen)):
      for field in ("violations", "pairs", "floor_pairs"):
        totals[f"{field}_{name}"] += _total(checks, field)
    rel = theory.chen_relative_errors(spec, cf)
    over_bound = {k: cf[k] / theory.chen_bound_per_task(spec.alpha(k), loops[None, :], kappa_B)
                  for k in NORMS}
    gen_rel, probe_rel = rel["to_w_star"], rel["probe"]
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
    t_eps_B = theory.chen_loops_to_epsilon(spec, EPSILON)
    kappa_rows.append({
        "n_over_d": ratio, "d": setting.d, "n": setting.n, "num_tasks": kappa_B.size,
        "kappa_median": kappa_med, "kappa_q90": float(np.quantile(kappa_B, 0.9)),
        "kappa_max": float(np.max(kappa_B)),
        "mp_kappa": theory.marchenko_pastur_kappa(setting.d, setting.n),
        "loops_to_eps_median": float(np.median(t_eps_B)),
        "loops_to_eps_q90": float(np.quantile(t_eps_B, 0.9)),
        "loops_to_eps_over_kappa_median": float(np.median(t_eps_B / kappa_B)),
        "loops_to_eps_over_guarantee_max": float(np.max(
            t_eps_B / theory.chen_loops_guarantee(kappa_B, EPSILON))),
        "violations_closed_form": _total(ev.checks, "violations"),
        "violations_transformer": _total(ev.transformer_checks, "violations"),
        "violations_generation": _total(checks_gen, "violations"),
        "s_err_over_bound_max": ev.checks["s"].max_ratio,
        "euclidean_err_over_bound_max": ev.checks["euclidean"].max_ratio,
        "transformer_vs_closed_form": ev.agreement,
    })
    label, color = f"n/d={ratio:g}", f"C{i}"
    panels["err"] += chen_figures.spread(label, loops, rel["s"], color) + [
        common.Series(f"bound, median kappa={kappa_med:.3g}", loops, bound_med, color + "--")]
    panels["ratio"] += chen_figures.spread(label, loops, over_bound["s"], color, top="max")
    panels["gen"] += [
        common.Series(label, loops, np.median(gen_rel, axis=0), color + "-"),
        common.Series(f"bound, kappa={kappa_med:.3g}", loops, bound_med, color + "--")]
    panels["probe"] += chen_figures.spread(label, loops, probe_rel, color)
  common.write_csv(ctx, "chen_bound_vs_T.csv", rows)
  common.write_csv(ctx, "chen_kappa.csv", kappa_rows)
  common.write_csv(ctx, "chen_generation.csv", gen_rows)
  chen_figures.bound_vs_loops(ctx, panels, kappa_rows, D_MAIN)
  res = {k: v for k, v in totals.items() if k != "floor_pairs_closed_form"}
  res.update({k: [r[k] for r in kappa_rows] for k in (
      "n_over_d", "kappa_median", "kappa_q90", "mp_kappa", "loops_to_eps_median",
      "loops_to_eps_over_kappa_median")})
  res.update(
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
    ev = theory.chen_evaluate(draw_tasks(setting, sizes.num_tasks), s_grid,
                              sizes.stress_transformer, sizes.stress_loops, per_kappa=True)
    spec, loops_BxK, tf, kappa_B = ev.spec, ev.loops, ev.transformer, ev.spec.kappa_B
    rel_BxK = theory.chen_relative_errors(spec, ev.closed_form)["euclidean"]
    spec_sub = spec.take(slice(0, sizes.stress_transformer))
    for checks in (ev.checks, ev.transformer_checks):
      violations, pairs = violations + _total(checks, "violations"), pairs + _total(checks, "pairs")
    agree = max(agree, ev.agreement)
    t_eps_B = theory.chen_loops_to_epsilon(spec, EPSILON)
    # Observed exponent per kappa at s_max: -ln(err / alpha) / (T / kappa).
    rate_B = theory.chen_observed_rate(rel_BxK[:, -1], loops_BxK[:, -1], kappa_B)
    label, color = f"kappa_Sigma={setting.kappa_sigma:g}", f"C{i}"
    for k, s in enumerate(s_grid):
      q = np.quantile(rel_BxK[:, k], QUANTILES)
      curve_rows.append({"kappa_sigma": setting.kappa_sigma, "s": s, "err_over_alpha_q10": q[0],
                         "err_over_alpha_median": q[1], "err_over_alpha_q90": q[2],
                         "bound": math.exp(-s / 2), "sharp_rate": math.exp(-s)})
    collapse += chen_figures.spread(label, s_grid, rel_BxK, color)
    raw.append(common.Series(label, tf_loops, np.median(
        tf["euclidean"] / spec_sub.alpha("euclidean")[:, None], axis=0), color + "-"))
    rows.append({
        "kappa_sigma": setting.kappa_sigma, "d": setting.d, "n": setting.n,
        "num_tasks": kappa_B.size, "kappa_median": float(np.median(kappa_B)),
        "kappa_q90": float(np.quantile(kappa_B, 0.9)),
        "loops_to_eps_median": float(np.median(t_eps_B)),
        "loops_to_eps_q90": float(np.quantile(t_eps_B, 0.9)),
        "loops_to_eps_over_kappa_median": float(np.median(t_eps_B / kappa_B)),
        "guarantee_median": float(np.median(theory.chen_loops_guarantee(kappa_B, EPSILON))),
        "observed_rate_per_kappa_median": float(np.median(rate_B)),
        "paper_rate_per_kappa": 0.5,
    })
  common.write_csv(ctx, "chen_kappa_stress.csv", rows)
  common.write_csv(ctx, "chen_kappa_collapse.csv", curve_rows)
  kappas = [r["kappa_median"] for r in rows]
  chen_figures.kappa_stress(ctx, raw, collapse, s_grid, rows, EPSILON, D_STRESS, N_STRESS)
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
    ev = theory.chen_evaluate(draw_tasks(setting, sizes.num_tasks), loops, sizes.num_transformer,
                              sizes.max_loops)
    spec, cf, tf = ev.spec, ev.closed_form, ev.transformer
    agree = max(agree, ev.agreement)
    for checks in (ev.checks, ev.transformer_checks):
      violations, pairs = violations + _total(checks, "violations"), pairs + _total(checks, "pairs")
    floor_B = spec.ols_error_B     # ||w_hat - w*||
    rel_hat = theory.chen_relative_errors(spec, cf)["euclidean"]
    med_star = np.median(cf["to_w_star"], axis=0)
    for t_idx, t in enumerate(loops):
      rows.append({"sigma": setting.noise_std, "T": int(t),
                   "err_to_w_hat_over_alpha_median": float(np.median(rel_hat[:, t_idx])),
                   "err_to_w_star_median": float(med_star[t_idx]),
                   "err_to_w_star_q90": float(np.quantile(cf["to_w_star"][:, t_idx], 0.9)),
                   "ols_floor_median": float(np.median(floor_B))})
    mean_sq, mean_sq_se = estimators.mean_and_stderr(floor_B**2, ddof=0)
    summary_rows.append({
        "sigma": setting.noise_std, "d": setting.d, "n": setting.n, "num_tasks": floor_B.size,
        "ols_floor_median": float(np.median(floor_B)),
        "final_err_to_w_star_median": float(med_star[-1]),
        "final_err_to_w_star_transformer_median": float(np.median(tf["to_w_star"][:, -1])),
        "ols_floor_transformer_median": float(np.median(floor_B[:sizes.num_transformer])),
        "ols_floor_mean_square": mean_sq,
        "ols_floor_mean_square_se": mean_sq_se,
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
  chen_figures.noise(ctx, panels, floors, NOISE_RATIO, D_MAIN)
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
