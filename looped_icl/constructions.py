"""Explicit weights that realise gradient-descent algorithms in context.

Each builder returns ``(cfg, params)`` for :func:`looped_icl.models.predict`:

* :func:`gd`: k steps of GD with step eta, w <- w + eta X^T (y - X w) / n.
* :func:`preconditioned_gd`: w <- w + eta A_l^T X^T (y - X w) / n, A shared or per layer.
* :func:`gdpp`: Ahn et al.'s GD++ (A_l, B_l): the covariates are also transformed,
  x <- (I - eta B_l S_l A_l) x with S_l the current X^T X / n.
* :func:`chen_fixed`: Chen et al.'s fixed looped construction (P = e_D e_D^T,
  Q = [[I, 0], [0, 0]]) with only the step eta (or per-loop eta_t) free. With
  eta = 1 / lambda_max(X^T X / n) it is GD with their step; the error after T loops is then below
  |alpha| exp(-T / (2 kappa)) (:func:`looped_icl.theory.chen_bound`).
* :func:`to_full`: the same model written in the ``full`` (P, Q) parametrization.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import linalg
from looped_icl import models
from looped_icl import validation


def _as_float(x) -> jax.Array:
  return jnp.asarray(x, linalg.float_dtype())


def _stack(name: str, mats, num_layers: int, kind: str) -> jax.Array:
  """(d, d) -> shared; (L, d, d) -> per layer (layered only)."""
  mats = _as_float(mats)
  if mats.ndim == 2:
    validation.shape(name, mats, (mats.shape[0], mats.shape[0]))
    if kind == "layered":
      return jnp.broadcast_to(mats, (num_layers,) + mats.shape)
    return mats
  validation.shape(name, mats, (num_layers, None, None))
  validation.shape(name, mats, (num_layers, mats.shape[1], mats.shape[1]))
  if kind == "looped":
    raise ValueError(f"{name} must be one (d, d) matrix for kind='looped', got {mats.shape}")
  return mats


def preconditioned_gd(a, num_layers: int, *, eta: float = 1.0, kind: str = "looped"):
  """L steps of preconditioned GD: w_{l+1} = w_l + eta A_l^T X^T (y - X w_l) / n.

  Args:
    a: (d, d) shared preconditioner, or (L, d, d) one per layer (``layered`` only).
    num_layers: L.
    eta: step (looped: the model's eta; layered: folded into A_l).
    kind: ``looped`` or ``layered``.
  """
  validation.positive("eta", eta)
  validation.choice("kind", kind, models.KINDS)
  num_layers = validation.positive_int("num_layers", num_layers)
  a = _stack("a", a, num_layers, kind)
  cfg = models.ModelConfig(d=a.shape[-1], num_layers=num_layers, kind=kind,
                           parametrization="preconditioner",
                           eta=float(eta) if kind == "looped" else 1.0)
  return cfg, {"a": a if kind == "looped" else eta * a}


def gd(d: int, num_layers: int, eta: float, *, kind: str = "looped"):
  """L steps of plain GD with step eta (A = I)."""
  d = validation.positive_int("d", d)
  return preconditioned_gd(jnp.eye(d), num_layers, eta=eta, kind=kind)


def gdpp(a, b, num_layers: int, *, eta: float = 1.0, kind: str = "layered"):
  """Ahn et al.'s GD++ with (A_l, B_l): P_l = [[B_l, 0], [0, 1]], Q_l = [[A_l, 0], [0, 0]]."""
  validation.positive("eta", eta)
  validation.choice("kind", kind, models.KINDS)
  num_layers = validation.positive_int("num_layers", num_layers)
  a, b = _stack("a", a, num_layers, kind), _stack("b", b, num_layers, kind)
  if a.shape != b.shape:
    raise ValueError(f"b must have the shape of a {a.shape}, got {b.shape}")
  cfg = models.ModelConfig(d=a.shape[-1], num_layers=num_layers, kind=kind, parametrization="gdpp",
                           eta=float(eta) if kind == "looped" else 1.0)
  if kind == "layered":  # eta multiplies the whole attention: fold it into A (P's corner is 1).
    a = eta * a
  return cfg, {"a": a, "b": b}


def chen_fixed(d: int, num_loops: int, eta: float | np.ndarray, *, per_loop_eta: bool = False):
  """Chen et al.'s fixed looped construction with step eta (scalar, or (T,) if per_loop_eta)."""
  d = validation.positive_int("d", d)
  num_loops = validation.positive_int("num_loops", num_loops)
  eta = _as_float(eta)
  validation.positive("eta", np.asarray(eta))
  if per_loop_eta:
    validation.shape("eta", eta, (num_loops,))
  else:
    validation.shape("eta", eta, ())
  cfg = models.ModelConfig(d=d, num_layers=num_loops, kind="looped", parametrization="fixed",
                           eta=float(eta.reshape(-1)[0]), per_loop_eta=per_loop_eta)
  return cfg, {"eta": eta}


def to_full(params, cfg: models.ModelConfig):
  """Rewrites any linear model in the ``full`` parametrization (same predictions, exactly)."""
  if cfg.parametrization == "fixed" and cfg.per_loop_eta:
    raise ValueError("cfg.per_loop_eta must be False to write a looped model with shared full "
                     "weights")
  p, q, eta = models.attention_weights(params, cfg)
  full_eta = cfg.eta
  if cfg.parametrization == "fixed":  # fold the (trainable) eta into P; the full model uses 1.
    p = eta[..., None, None] * jnp.broadcast_to(p, eta.shape + p.shape[-2:])
    q = jnp.broadcast_to(q, p.shape)
    full_eta = 1.0
  full_cfg = models.ModelConfig(d=cfg.d, num_layers=cfg.num_layers, kind=cfg.kind,
                                parametrization="full", eta=full_eta, activation=cfg.activation)
  return full_cfg, {"p": p, "q": q}
