"""Matplotlib figures (PNG, Agg backend) of a run: loss curve, loss vs loops, preconditioners."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

_BASELINE_STYLES = {"gd": "tab:orange", "pgd_inv_cov": "tab:green", "ols": "tab:gray",
                    "ridge": "tab:purple", "newton": "tab:brown"}


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]):
  """(fig, axes 2-D array) without pyplot: no global backend switch, no figure registry, so
  importing or plotting never changes a notebook's inline backend."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Figure, path: str) -> str:
  """Saves ``fig`` as PNG (Agg canvas) and returns ``path``."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path




def loss_curve(path: str, history: list[dict], summary: dict | None = None) -> str:
  """Training loss vs step (log scale), with the baselines as horizontal lines."""
  fig, axes = new_figure(figsize=(6, 4))
  ax = axes[0, 0]
  lo, hi = 0.0, np.inf
  if history:
    train_losses = np.asarray([r["loss"] for r in history])
    ax.semilogy([r["step"] for r in history], train_losses, label="train loss")
    lo, hi = train_losses.min() / 20, train_losses.max() * 5
  for name, value in ((summary or {}).get("baselines") or {}).items():
    if name not in _BASELINE_STYLES:
      continue
    if lo <= value <= hi:  # baselines far off the training range would flatten the curve
      ax.axhline(value, ls="--", lw=1, color=_BASELINE_STYLES[name], label=f"{name} {value:.3g}")
    else:
      ax.plot([], [], ls="--", lw=1, color=_BASELINE_STYLES[name],
              label=f"{name} {value:.3g} (off scale)")
  ax.set_xlabel("step")
  ax.set_ylabel("in-context loss")
  ax.legend(fontsize=8)
  ax.set_title("training")
  return save(fig, path)


def loss_vs_loops(path: str, summary: dict, trained_loops: int, kind: str) -> str:
  """Evaluation loss after each layer/loop; the trained depth is marked."""
  fig, axes = new_figure(figsize=(6, 4))
  ax = axes[0, 0]
  mc = summary["loss_vs_loops"]
  ax.semilogy(np.arange(1, len(mc) + 1), mc, "o-", label="model (MC)")
  if "population_loss_vs_loops" in summary:
    pop = summary["population_loss_vs_loops"]
    ax.semilogy(np.arange(1, len(pop) + 1), pop, "x--", label="model (population)")
  ax.axvline(trained_loops, color="k", lw=0.8, ls=":", label="trained depth")
  ax.set_xlabel("loops" if kind == "looped" else "layer")
  ax.set_ylabel("in-context loss")
  ax.legend(fontsize=8)
  return save(fig, path)


def preconditioners(path: str, a_LxDxD, cov) -> str:
  """Heatmaps of each layer's effective preconditioner next to Sigma^-1 scaled to match."""
  a = np.asarray(a_LxDxD, np.float64)
  inv = np.linalg.inv(np.asarray(cov, np.float64))
  num = a.shape[0]
  fig, axes = new_figure(1, num + 1, figsize=(3 * (num + 1), 3))
  for i in range(num):
    lim = np.abs(a[i]).max() or 1.0
    im = axes[0, i].imshow(a[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0, i].set_title(f"A_eff layer {i + 1}" if num > 1 else "A_eff")
    fig.colorbar(im, ax=axes[0, i], fraction=0.046)
  scale = float(np.sum(a[-1] * inv) / np.sum(inv * inv))
  target = scale * inv
  lim = np.abs(target).max() or 1.0
  im = axes[0, num].imshow(target, cmap="RdBu_r", vmin=-lim, vmax=lim)
  axes[0, num].set_title(f"{scale:.3g} x Sigma^-1")
  fig.colorbar(im, ax=axes[0, num], fraction=0.046)
  for ax in axes[0]:
    ax.set_xticks([])
    ax.set_yticks([])
  return save(fig, path)
