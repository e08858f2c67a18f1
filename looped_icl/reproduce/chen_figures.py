"""The figures of the ``chen_bound`` reproduction: the panels of each PNG, from the curves its
experiments collect (:mod:`looped_icl.reproduce.chen_bound`); :func:`theorem_4_5` draws the paper's
construction, the others the regression-side reading."""

from __future__ import annotations

import numpy as np

from looped_icl.reproduce import common


def spread(label: str, x, values_BxK: np.ndarray, color: str, top: str = "90%"
           ) -> list[common.Series]:
  """The median over tasks (solid) and the 90% quantile or the max (``top``, dotted) per column."""
  upper = np.max(values_BxK, axis=0) if top == "max" else np.quantile(values_BxK, 0.9, axis=0)
  return [common.Series(f"{label} median", x, np.median(values_BxK, axis=0), color + "-"),
          common.Series(f"{label} {top}", x, upper, color + ":")]


def bound_vs_loops(ctx: common.Context, panels: dict[str, list[common.Series]],
                   kappa_rows: list[dict], d: int) -> list[str]:
  """chen_bound_vs_T.png (error and error / bound vs T, kappa vs n/d) and chen_generation.png."""
  ratios = [r["n_over_d"] for r in kappa_rows]
  column = lambda key: [r[key] for r in kappa_rows]
  bound_png = common.line_figure(ctx, "chen_bound_vs_T.png", [
      common.Panel(panels["err"], "loops T", "median ||w_T - w_hat||_S / alpha", logy=True,
                   title="error vs T (S-norm) and the bound at the median kappa"),
      common.Panel(panels["ratio"], "loops T", "error / bound (per task)", logy=True,
                   title="error / bound: median and max over tasks (must stay <= 1)",
                   hlines={"bound": 1.0}),
      common.Panel([
          common.Series("median kappa", ratios, column("kappa_median")),
          common.Series("90% kappa", ratios, column("kappa_q90")),
          common.Series("Marchenko-Pastur edge", ratios, column("mp_kappa"), "--"),
          common.Series("median T_eps", ratios, column("loops_to_eps_median"), "s-")],
          "n / d", "kappa = cond(X^T X);  loops to eps=1e-3", logx=True, logy=True,
          title="per-task kappa and loops-to-eps vs n/d")],
      suptitle=f"Chen et al.: fixed looped GD vs |alpha| exp(-T/(2 kappa)), d={d}")
  generation_png = common.line_figure(ctx, "chen_generation.png", [
      common.Panel(panels["gen"], "loops T", "median ||w_T - w*|| / ||w*||", logy=True,
                   title="generated vector w_T (queries e_1..e_d)"),
      common.Panel(panels["probe"], "loops T", "median |<w_T, u> - <w*, u>| / (||u|| ||w*||)",
                   logy=True, title="inner-product reading at a probe u = x_q")],
      suptitle="Linear vector generation (noiseless, w_hat = w*)")
  return [bound_png, generation_png]


def kappa_stress(ctx: common.Context, raw: list[common.Series], collapse: list[common.Series],
                 s_grid: np.ndarray, rows: list[dict], eps: float, d: int, n: int) -> str:
  """chen_kappa_stress.png: error vs T, its collapse in T / kappa, loops to eps vs kappa."""
  kappas = [r["kappa_median"] for r in rows]
  return common.line_figure(ctx, "chen_kappa_stress.png", [
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
          "median kappa = cond(X^T X)", f"loops to eps={eps:g}", logx=True, logy=True,
          title="loops to eps grow ~ kappa")],
      suptitle=f"kappa stress test: Sigma 'condition' family, d={d}, n={n}")


def noise(ctx: common.Context, panels: dict[str, list[common.Series]], floors: dict[str, float],
          n_over_d: float, d: int) -> str:
  """chen_noise.png: the error to w_hat and to w* vs T for each noise level."""
  return common.line_figure(ctx, "chen_noise.png", [
      common.Panel(panels["hat"], "loops T", "median ||w_T - w_hat|| / ||w_hat||", logy=True,
                   title="error to w_hat: obeys the bound for every sigma"),
      common.Panel(panels["star"], "loops T", "median ||w_T - w*||", logy=True,
                   title="error to w*: plateaus at the OLS floor ||w_hat - w*||",
                   hlines=floors)],
      suptitle=f"Label noise, n/d={n_over_d:g}, d={d}")


def theorem_4_5(ctx: common.Context, curve_rows: list[dict], rows: list[dict], d: int) -> str:
  """chen_theorem_4_5.png: Theorem 4.5 as stated and corrected vs T (each n at the paper's d),
  and the observed decay exponent per unit T / kappa vs n/d (every setting)."""
  stated, corrected, rates = [], [], []
  for i, n in enumerate(sorted({r["n"] for r in curve_rows})):
    mine = [r for r in curve_rows if r["n"] == n]
    loops, color = [r["T"] for r in mine], f"C{i}"
    column = lambda key: [r[key] for r in mine]  # pylint: disable=cell-var-from-loop
    bound = common.Series(f"n={n} bound", loops, column("bound_over_scale_median_kappa"),
                          color + "--")
    stated += [common.Series(f"n={n}", loops, column("as_stated_err_over_scale_median"),
                             color + "-"), bound]
    corrected += [common.Series(f"n={n} median", loops, column("corrected_err_over_scale_median"),
                                color + "-"),
                  common.Series(f"n={n} 90%", loops, column("corrected_err_over_scale_q90"),
                                color + ":"), bound]
  for i, dim in enumerate(sorted({r["d"] for r in rows})):
    mine = [r for r in rows if r["d"] == dim]
    ratios = [r["n_over_d"] for r in mine]
    rates += [common.Series(f"d={dim} median", ratios, [r["rate_per_kappa_median"] for r in mine],
                            f"C{i}o-"),
              common.Series(f"d={dim} min", ratios, [r["rate_per_kappa_min"] for r in mine],
                            f"C{i}s:")]
  return common.line_figure(ctx, "chen_theorem_4_5.png", [
      common.Panel(stated, "loops T", "median |<q(T), theta*> - alpha| / |alpha|", logy=True,
                   title="as transcribed: fails for every T >= 1 (bounds dashed)"),
      common.Panel(corrected, "loops T", "error / (|alpha| ||theta*||^2)", logy=True,
                   title="corrected (ours): |<-q(T), theta*> - alpha ||theta*||^2|"),
      common.Panel(rates, "n / d", "-ln(err / scale) / (T / kappa)", logx=True,
                   title="decay exponent per unit T / kappa",
                   hlines={"bound's 1/2": 0.5, "(1 - 1/kappa)^T: 1": 1.0})],
      suptitle=f"Chen et al. Lemma 4.1 / Theorem 4.5 on their construction, d={d}")


__all__ = ["spread", "bound_vs_loops", "kappa_stress", "noise", "theorem_4_5"]
