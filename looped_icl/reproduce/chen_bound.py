r"""Chen, Li, Liang, Shi, Song 2024: Lemma 4.1 and Theorem 4.5 as stated, and the regression-side
reading of the bound |alpha| exp(-T / (2 kappa)).

Paper (arXiv 2410.11268; its statements, and what is inferred: docs/chen_2024_statements.md): a
linear looped transformer with tokens as rows, Z(0) = [[X, y], [q(0)^T, alpha]], Q = I, P =
[[I, 0], [0, 0]] and a mask that updates the query row only, run T loops Z(t) = Z(t-1) -
eta(t-1) Attn(Z(t-1)), generates q(T) with |<q(T), theta*> - alpha| <= |alpha| exp(-T/(2 kappa))
(Theorem 4.5), kappa = cond(X^T X), so n = O(d) examples (kappa = O(1)) suffice.

5. ``chen_theorem_4_5`` (the paper's object: :mod:`looped_icl.chen_construction`): X_ij ~ N(0, 1),
   theta* ~ N(0, I_d), y = X theta*, alpha ~ N(0, 1), q(0) = 0, eta(t) = 1 / lambda_max(X^T X);
   the paper's d = 4 with n in {6, 8, 16, 32, 64}, and n/d in {1.5, 2, 4, 8} at d = 8 (and 16 in
   the full run). Lemma 4.1 entrywise at a random q(0); Theorem 4.5 for every task and T =
   1..T_max as stated, with the sign fixed only (output -q(T)), and corrected (ours: target
   alpha ||theta*||^2), q(T) read off the transformer and checked against the closed-form GD.
   Expected: Lemma 4.1 to ~1e-13; the statement as written fails at every T >= 1 (<q(T), theta*>
   has the sign of -alpha, tending to -alpha ||theta*||^2); the corrected claim holds, decaying at
   ~1/kappa per loop, twice the bound's 1/(2 kappa).

1-4 are the REGRESSION-SIDE READING (the toolkit's first reproduction, a separate and weaker check
that holds by algebra): :func:`looped_icl.constructions.chen_fixed` (tokens as columns, GD on w in
the label row) with eta = 1 / lambda_max(S), S = X^T X / n, against :func:`looped_icl.theory.
chen_bound` with alpha := ||w_hat|| (S-norm and Euclidean). Closed form for all tasks, the
transformer for the first ``num_transformer`` (they must agree); violations up to the float64
floors of :mod:`looped_icl.theory.chen_closed_form` (``*_floor_pairs``: bound below the floor).

1. ``chen_bound_vs_T``: n/d in {1.5, 2, 4, 8} (d = 10, Sigma = I): error vs T = 1..T_max, kappa
   vs n/d next to the Marchenko-Pastur edge ((1 + sqrt(d/n)) / (1 - sqrt(d/n)))^2, loops T_eps to
   eps = 1e-3 relative error (guaranteed <= ceil(2 kappa ln(1/eps))).
2. ``chen_generation``: w_T read with the queries e_1..e_d: ||w_T - w*|| under the bound with
   alpha = ||w*||, and |<w_T - w*, u>| <= ||u|| ||w*|| exp(-T / (2 kappa)) at a probe u = x_q.
3. ``chen_kappa_stress``: kappa_Sigma in {1, 10, 100} (d = 5, n = 20): error vs s = T / kappa
   collapses onto one curve; T_eps ~ kappa.
4. ``chen_noise``: label noise sigma in {0, 0.1, 0.5} (n/d = 4, d = 10, same X and w*): the error
   to w_hat obeys the bound; the error to w* plateaus at the OLS floor ||w_hat - w*||.
Expected: 0 violations (``violations_total``); exponent per kappa ~1 against the bound's 1/2.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import numpy as np

from looped_icl import chen_construction
from looped_icl import covariance
from looped_icl import estimators
from looped_icl import tasks
from looped_icl import theory
from looped_icl.reproduce import chen_figures
from looped_icl.reproduce import common

RATIOS = (1.5, 2.0, 4.0, 8.0)          # n / d in experiments 1-2 and 5's sweep
KAPPAS_SIGMA = (1.0, 10.0, 100.0)      # experiment 3
NOISES = (0.0, 0.1, 0.5)               # experiment 4
D_MAIN, D_STRESS, N_STRESS, NOISE_RATIO = 10, 5, 20, 4.0
EPSILON = 1e-3                         # relative error target for the loops-to-eps counts
QUANTILES = (0.1, 0.5, 0.9)
NORMS = theory.DISTANCE_NORMS          # distances to w_hat (the bound's norms)
PAPER_D, PAPER_NS = 4, (6, 8, 16, 32, 64)   # experiment 5: the paper's d = 4 (our n values)
RATE_S = 10.0                          # exponents measured at T = min(T_max, ceil(RATE_S kappa))


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How many tasks and loops a run uses."""
  num_tasks: int           # tasks per setting, closed form
  num_transformer: int     # of which run through the transformer
  max_loops: int           # T_max of experiments 1, 2 and 4
  stress_transformer: int  # transformer tasks per kappa_Sigma in experiment 3
  stress_loops: int        # their T_max
  paper_tasks: int         # tasks per setting of experiment 5 (all through the transformer)
  paper_loops: int         # its T_max
  sweep_ds: tuple[int, ...]  # d of its n/d sweep
  num_s: int = 41          # grid of s = T / kappa in experiment 3


QUICK = Sizes(num_tasks=2000, num_transformer=32, max_loops=100, stress_transformer=16,
              stress_loops=200, paper_tasks=200, paper_loops=60, sweep_ds=(8,))
FULL = Sizes(num_tasks=10_000, num_transformer=500, max_loops=300, stress_transformer=200,
             stress_loops=1000, paper_tasks=1000, paper_loops=200, sweep_ds=(8, 16))


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


def paper_settings(sizes: Sizes) -> list[tuple[str, int, int]]:
  """Experiment 5's (group, d, n): the paper's d = 4, then the n/d sweep (RATIOS)."""
  return [("paper", PAPER_D, n) for n in PAPER_NS] + [
      ("sweep", d, int(round(r * d))) for d in sizes.sweep_ds for r in RATIOS]


def noise_settings() -> list[Setting]:
  """The same seed for every sigma: identical X and w*, only the label noise differs."""
  n = int(round(NOISE_RATIO * D_MAIN))
  return [Setting(D_MAIN, n, noise_std=s, seed=30) for s in NOISES]


# ------------------------------------------------------------------------------------------------
# The experiments (the math: :mod:`looped_icl.theory`, :mod:`looped_icl.chen_construction`).
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


def _paper_statements(ctx: common.Context, sizes: Sizes) -> dict:
  """Experiment 5: Lemma 4.1 and Theorem 4.5 as the paper states them, on its construction."""
  readings = theory.THEOREM_4_5_READINGS
  loops = np.arange(1, sizes.paper_loops + 1)
  rows, curve_rows = [], []
  for i, (group, d, n) in enumerate(paper_settings(sizes)):
    gen = chen_construction.sample_tasks(40 + i, sizes.paper_tasks, d, n)
    ev = theory.theorem_4_5_evaluate(gen, sizes.paper_loops, lemma_seed=60 + i)
    rows.append({"group": group, "d": d, "n": n, "n_over_d": n / d,
                 **theory.theorem_4_5_summary(ev, RATE_S)})
    if group == "paper":
      rel = {r: err / scale[:, None] for r, (err, scale) in ev.errors.items()}
      bound = np.exp(-loops / (2 * rows[-1]["kappa_median"]))
      for t_idx, t in enumerate(loops):
        curve_rows.append({"n": n, "T": int(t), "bound_over_scale_median_kappa": bound[t_idx],
                           **{f"{r}_err_over_scale_median": float(np.median(rel[r][:, t_idx]))
                              for r in readings},
                           "corrected_err_over_scale_q90": float(np.quantile(
                               rel["corrected"][:, t_idx], 0.9))})
  common.write_csv(ctx, "chen_theorem_4_5.csv", rows)
  common.write_csv(ctx, "chen_theorem_4_5_vs_T.csv", curve_rows)
  chen_figures.theorem_4_5(ctx, curve_rows, rows, PAPER_D)
  out = theory.theorem_4_5_totals(rows)
  out["theorem_4_5"].update(step="eta(t) = 1 / lambda_max(X^T X)", smallest_counterexample={
      r: theory.theorem_4_5_counterexample(r) for r in readings[:2]})
  return out


def run(ctx: common.Context) -> dict:
  """All five experiments (float64); returns the headline numbers."""
  sizes = QUICK if ctx.quick else FULL
  with jax.enable_x64(True):
    results = {"paper_bound": "|alpha| exp(-T / (2 kappa))", "epsilon": EPSILON,
               "sizes": dataclasses.asdict(sizes)}
    results.update(_paper_statements(ctx, sizes))
    results["regression_side_reading"] = (
        "experiments 1-4 below (violations_total): GD on w in the label row, alpha := ||w_hat|| "
        "(S-norm and Euclidean); holds by algebra, (1 - 1/kappa)^T <= exp(-T / kappa)")
    results.update(_bound_vs_loops(ctx, sizes))
    results.update(_kappa_stress(ctx, sizes))
    results.update(_noise(ctx, sizes))
  results["violations_total"] = (results["violations_closed_form"]
                                 + results["violations_transformer"]
                                 + results["violations_generation"]
                                 + results["stress_violations"] + results["noise_violations"])
  return results
