"""Layered and looped linear transformers and their parametrizations (SPEC section 3).

A model is a typed :class:`ModelConfig` plus a params pytree (a dict of arrays):

============== ====================================== =========================================
parametrization params (layered: leading axis L)        attention weights
============== ====================================== =========================================
full           ``p``, ``q``: (D, D), D = d+1          P, Q free
preconditioner ``a``: (d, d), general (not symmetric)  P = e_D e_D^T, Q = [[A, 0], [0, 0]]
gdpp           ``a``, ``b``: (d, d)                    P = [[B, 0], [0, 1]], Q = [[A, 0], [0, 0]]
fixed          ``eta``: () or (L,) if per_loop_eta     GD construction P = e_D e_D^T,
                                                       Q = [[I, 0], [0, 0]], step eta (Chen et al.)
============== ====================================== =========================================

layered: Z_{l+1} = Z_l - Attn(Z_l; P_l, Q_l) (eta = 1 unless ``fixed``);
looped:  Z_{l+1} = Z_l - eta * Attn(Z_l; P, Q), the same weights every loop.
The preconditioner family computes w_{l+1} = w_l + eta A^T X^T (y - X w_l) / n exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from looped_icl import attention
from looped_icl import fields
from looped_icl import linalg
from looped_icl import tasks as tasks_lib
from looped_icl import validation

KINDS = ("looped", "layered")
PARAMETRIZATIONS = ("full", "preconditioner", "gdpp", "fixed")
FORWARDS = ("gram", "tokens")


@dataclasses.dataclass(frozen=True)
class ModelConfig(fields.Section):
  """Static description of a model (hashable: safe as a jit static argument); the ``model``
  section of the config schema (each field's doc below; ``d`` comes from ``task.d``).

  ``eta`` is the configured looped step; a trainer that sweeps it passes the traced value to
  :func:`predict` / :func:`layer_weights` (``eta=``) instead.
  """
  d: int = fields.field(None, "Covariate dimension (tokens have D = d + 1 rows); task.d.",
                        check=fields.positive_int, in_config=False)
  num_layers: int = fields.field(4, "L: layers, or loops used in training.",
                                 check=fields.positive_int)
  kind: str = fields.field("looped", "looped (one block, shared weights) | layered (separate "
                           "weights per layer).", choices=KINDS)
  parametrization: str = fields.field("preconditioner", "full | preconditioner | gdpp | fixed "
                                      "(see the table above).", choices=PARAMETRIZATIONS)
  eta: float = fields.field(1.0, "Looped step: Z <- Z - eta Attn(Z); initial eta of the fixed "
                            "parametrization.", check=fields.positive, hyper="eta")
  activation: str = fields.field("linear", "linear | relu | softmax (relu/softmax need "
                                 "train.forward = tokens).", choices=attention.ACTIVATIONS)
  per_loop_eta: bool = fields.field(False, "fixed only: one trainable eta_t per loop.")
  init_scale: float = fields.field(1e-3, "Std of the Gaussian initialisation of the trainable "
                                   "matrices.", check=fields.nonnegative)

  def check(self):
    if self.per_loop_eta and self.parametrization != "fixed":
      raise ValueError("per_loop_eta must be False unless parametrization='fixed', got True")

  @property
  def dim(self) -> int:
    return self.d + 1


def init_params(key: jax.Array, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Gaussian initialisation N(0, init_scale^2) of the trainable matrices.

  ``fixed``: a shared eta starts at cfg.eta. Per-step etas start at eta_t = cfg.eta
  exp(init_scale g_t), g_t ~ N(0, 1): with A = I the factors (I - eta_t S) commute, so the loss
  is symmetric in (eta_1, ..., eta_T) and equal starting steps would get equal gradients forever
  (the optimum, a Chebyshev-like schedule, is off that diagonal).
  """
  dtype = linalg.float_dtype()
  lead = (cfg.num_layers,) if cfg.kind == "layered" else ()
  if cfg.parametrization == "fixed":
    if not (cfg.per_loop_eta or cfg.kind == "layered"):
      return {"eta": jnp.asarray(cfg.eta, dtype)}
    spread = jnp.exp(cfg.init_scale * jax.random.normal(key, (cfg.num_layers,), dtype))
    return {"eta": cfg.eta * spread}
  names, size = {"full": (("p", "q"), cfg.dim), "preconditioner": (("a",), cfg.d),
                 "gdpp": (("a", "b"), cfg.d)}[cfg.parametrization]
  keys = jax.random.split(key, len(names))
  return {name: cfg.init_scale * jax.random.normal(k, lead + (size, size), dtype)
          for name, k in zip(names, keys)}


def _embed_top_left(a_xDxD: jax.Array, corner: float) -> jax.Array:
  """[[A, 0], [0, corner]] for A of shape (..., d, d)."""
  d = a_xDxD.shape[-1]
  out = jnp.zeros(a_xDxD.shape[:-2] + (d + 1, d + 1), a_xDxD.dtype)
  return out.at[..., :d, :d].set(a_xDxD).at[..., d, d].set(corner)


def _label_projector(d: int, lead: tuple[int, ...], dtype) -> jax.Array:
  p = jnp.zeros(lead + (d + 1, d + 1), dtype)
  return p.at[..., d, d].set(1.0)


def attention_weights(params: dict[str, jax.Array], cfg: ModelConfig, *, eta=None):
  """The model's own (P, Q, eta) with the leading axis of its params (L for layered).

  ``eta``: the looped step, if not ``cfg.eta`` (a traced value in a sweep over it); a layered
  non-fixed model's step is 1 and a fixed model's its trained ``params["eta"]``.
  """
  step = cfg.eta if eta is None else eta
  if cfg.parametrization == "full":
    p, q = params["p"], params["q"]
    eta = jnp.asarray(step if cfg.kind == "looped" else 1.0, p.dtype)
  elif cfg.parametrization == "preconditioner":
    a = params["a"]
    p, q = _label_projector(cfg.d, a.shape[:-2], a.dtype), _embed_top_left(a, 0.0)
    eta = jnp.asarray(step if cfg.kind == "looped" else 1.0, a.dtype)
  elif cfg.parametrization == "gdpp":
    a, b = params["a"], params["b"]
    p, q = _embed_top_left(b, 1.0), _embed_top_left(a, 0.0)
    eta = jnp.asarray(step if cfg.kind == "looped" else 1.0, a.dtype)
  else:
    eta = params["eta"]
    eye = jnp.eye(cfg.d, dtype=eta.dtype)
    p, q = _label_projector(cfg.d, (), eta.dtype), _embed_top_left(eye, 0.0)
  return p, q, eta


def layer_weights(params: dict[str, jax.Array], cfg: ModelConfig, num_loops: int | None = None,
                  *, eta=None):
  """Stacked per-layer weights ``(p_LxDxD, q_LxDxD, eta_L)`` for ``num_loops`` layers.

  A looped model may be run for any number of loops (shared weights; with ``per_loop_eta`` the
  loops past the trained ones reuse the last eta_t). A layered model may be truncated to its first
  ``num_loops`` layers but not extended. ``eta``: see :func:`attention_weights`.
  """
  num = cfg.num_layers if num_loops is None else validation.positive_int("num_loops", num_loops)
  if cfg.kind == "layered" and num > cfg.num_layers:
    raise ValueError(f"num_loops must be <= num_layers={cfg.num_layers} for a layered model, "
                     f"got {num}")
  p, q, eta = attention_weights(params, cfg, eta=eta)
  dim = cfg.dim
  if cfg.kind == "layered":
    p = jnp.broadcast_to(p, (cfg.num_layers, dim, dim))[:num]
    q = jnp.broadcast_to(q, (cfg.num_layers, dim, dim))[:num]
    return p, q, jnp.broadcast_to(eta, (cfg.num_layers,))[:num]
  if eta.ndim == 1:  # per-loop etas of a looped fixed model
    idx = jnp.minimum(jnp.arange(num), eta.shape[0] - 1)
    eta_L = eta[idx]
  else:
    eta_L = jnp.broadcast_to(eta, (num,))
  return jnp.broadcast_to(p, (num, dim, dim)), jnp.broadcast_to(q, (num, dim, dim)), eta_L


def predict(params: dict[str, jax.Array], cfg: ModelConfig,
            batch: tasks_lib.Tasks | tasks_lib.GramTasks, *, forward: str = "gram",
            num_loops: int | None = None, all_layers: bool = False, eta=None) -> jax.Array:
  """Predictions y_hat = -Z_L[d, n] for a batch of tasks.

  Args:
    params: the model's params.
    cfg: its :class:`ModelConfig`.
    batch: :class:`~looped_icl.tasks.Tasks` (either forward) or
      :class:`~looped_icl.tasks.GramTasks` (``gram`` forward only).
    forward: ``gram`` (exact fast path; linear attention only) or ``tokens`` (reference).
    num_loops: layers/loops to run (default ``cfg.num_layers``).
    all_layers: return every layer's prediction, (B, num_loops), instead of the last, (B,).
    eta: the looped step if not ``cfg.eta`` (see :func:`attention_weights`).
  """
  validation.choice("forward", forward, FORWARDS)
  # Validate the inputs before building any weights.
  if forward == "gram" and cfg.activation != "linear":
    raise ValueError(f"forward must be 'tokens' for activation={cfg.activation!r}, got 'gram'")
  if isinstance(batch, tasks_lib.Tasks):
    got_d = batch.x.shape[-1]
  elif forward == "tokens":
    raise ValueError("batch must be token-level Tasks for forward='tokens' (got GramTasks)")
  else:
    got_d = batch.gram.shape[-1] - 1
  if got_d != cfg.d:
    raise ValueError(f"batch dimension d={got_d} must equal model d={cfg.d}")
  p, q, eta = layer_weights(params, cfg, num_loops, eta=eta)
  if forward == "gram":
    gram = tasks_lib.to_gram(batch) if isinstance(batch, tasks_lib.Tasks) else batch
    preds = attention.forward_gram(p, q, eta, gram.gram, gram.query, gram.n)
  else:
    preds = attention.forward_tokens(p, q, eta, tasks_lib.to_prompt(batch), cfg.activation)
  return preds if all_layers else preds[:, -1]
