"""The Gram-space forward of linear attention with a hand-written reverse mode (SPEC section 3).

A layer is Z_{l+1} = T_l Z_l with T_l = I - c_l P_l G_l Q_l, c_l = eta_l / n, and
G_{l+1} = T_l G_l T_l^T; the prediction after layer l is -u_{l+1}[D-1], u_{l+1} = T_l u_l, where
u_0 is the query column. Everything is batch-last ((D, D, B); see :mod:`linalg`).

Reverse mode (adjoints written with a bar, G_l symmetric):
  dT_l = du_{l+1} u_l^T + (dG_{l+1} + dG_{l+1}^T) T_l G_l,   du_l = T_l^T du_{l+1},
  dK_l = -c_l dT_l (K_l = P_l H_l, H_l = G_l Q_l),            deta_l = -<dT_l, K_l> / n,
  dP_l = sum_b dK_l H_l^T,  dH_l = P_l^T dK_l,  dQ_l = sum_b G_l^T dH_l,
  dG_l = T_l^T dG_{l+1} T_l + dH_l Q_l^T.
Autodiff of the forward gets the same numbers 4-5x slower on CPU: it differentiates each
unrolled product through slices (zero-padded cotangents) and sums the shared weights' gradients
with tiny reductions; here every batch-times-batch product is one fused pass and every shared
weight's gradient is one GEMM over the batch (BUILD_NOTES.md, Performance).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from looped_icl import linalg


def _layer(gram_DxDxB, query_DxB, p_DxD, q_DxD, c, one, *, last: bool):
  """One layer: G', u' and what the reverse pass needs. The last layer skips G' (unused)."""
  mm = functools.partial(linalg.mm_bl_unrolled, one=one)
  h_DxDxB = mm(gram_DxDxB, q_DxD[:, :, None])
  k_DxDxB = mm(p_DxD[:, :, None], h_DxDxB)
  t_DxDxB = linalg.eye_bl(p_DxD.shape[0], p_DxD.dtype) - c * k_DxDxB
  query_next = mm(t_DxDxB, query_DxB[:, None, :])[:, 0, :]
  if last:
    return None, query_next, (gram_DxDxB, query_DxB, h_DxDxB, k_DxDxB, None)
  w_DxDxB = mm(t_DxDxB, gram_DxDxB)
  gram_next = mm(w_DxDxB, linalg.t_bl(t_DxDxB))
  return gram_next, query_next, (gram_DxDxB, query_DxB, h_DxDxB, k_DxDxB, w_DxDxB)


def _forward(p_LxDxD, q_LxDxD, eta_L, gram_DxDxB, query_DxB, n, *, residuals: bool):
  """Per-layer predictions (L, B) and, with ``residuals``, the per-layer residuals of the
  reverse pass.

  With residuals (differentiation) the layers are unrolled in Python: a lax.scan over them
  measured 2.2x slower (its loop boundary keeps XLA from fusing across layers and adds dynamic
  slices of the residuals). Without (evaluation), the layers but the last run in a lax.scan,
  whose compile time does not grow with L (Chen et al.'s construction runs 100+ loops: 6.5 s
  to compile unrolled).
  """
  one = linalg.opaque_one(gram_DxDxB.dtype)
  num_layers, dim = p_LxDxD.shape[0], p_LxDxD.shape[-1]
  if not residuals:
    def body(carry, weights):
      gram_next, query_next, _ = _layer(*carry, *weights, one, last=False)
      return (gram_next, query_next), -query_next[dim - 1]

    (gram_DxDxB, query_DxB), preds_KxB = jax.lax.scan(
        body, (gram_DxDxB, query_DxB), (p_LxDxD[:-1], q_LxDxD[:-1], eta_L[:-1] / n))
    _, query_DxB, _ = _layer(gram_DxDxB, query_DxB, p_LxDxD[-1], q_LxDxD[-1], eta_L[-1] / n,
                             one, last=True)
    return jnp.concatenate([preds_KxB, -query_DxB[dim - 1][None]]), None
  preds, saved = [], []
  for l in range(num_layers):
    gram_DxDxB, query_DxB, res = _layer(gram_DxDxB, query_DxB, p_LxDxD[l], q_LxDxD[l],
                                        eta_L[l] / n, one, last=l == num_layers - 1)
    preds.append(-query_DxB[dim - 1])
    saved.append(res)
  return jnp.stack(preds), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def gram_predictions(p_LxDxD: jax.Array, q_LxDxD: jax.Array, eta_L: jax.Array,
                     gram_DxDxB: jax.Array, query_DxB: jax.Array, n: int) -> jax.Array:
  """Per-layer predictions (L, B) from batch-last G_0 (D, D, B) and query columns (D, B).

  ``gram_DxDxB`` must be symmetric (a Gram matrix); reverse mode is hand-written (module doc).
  """
  return _forward(p_LxDxD, q_LxDxD, eta_L, gram_DxDxB, query_DxB, n, residuals=False)[0]


def _gram_predictions_fwd(p_LxDxD, q_LxDxD, eta_L, gram_DxDxB, query_DxB, n):
  preds_LxB, saved = _forward(p_LxDxD, q_LxDxD, eta_L, gram_DxDxB, query_DxB, n,
                              residuals=True)
  return preds_LxB, (p_LxDxD, q_LxDxD, eta_L, saved)


def _gram_predictions_bwd(n, residuals, dpreds_LxB):
  p_LxDxD, q_LxDxD, eta_L, saved = residuals
  one = linalg.opaque_one(dpreds_LxB.dtype)
  mm = functools.partial(linalg.mm_bl_unrolled, one=one)
  dim = p_LxDxD.shape[-1]
  last_Dx1 = (jnp.arange(dim) == dim - 1).astype(dpreds_LxB.dtype)[:, None]
  dgram_DxDxB, dquery_DxB = None, jnp.zeros_like(saved[0][1])   # G_L is not an output
  dps, dqs, detas = [], [], []
  for l in reversed(range(len(saved))):
    gram_DxDxB, query_DxB, h_DxDxB, k_DxDxB, w_DxDxB = saved[l]
    p_DxD, q_DxD, c = p_LxDxD[l], q_LxDxD[l], eta_L[l] / n
    t_DxDxB = linalg.eye_bl(dim, p_DxD.dtype) - c * k_DxDxB
    tt_DxDxB = linalg.t_bl(t_DxDxB)
    dquery_DxB = dquery_DxB - last_Dx1 * dpreds_LxB[l][None, :]          # pred = -u[D-1]
    dt_DxDxB = dquery_DxB[:, None, :] * query_DxB[None, :, :]
    dquery_DxB = mm(tt_DxDxB, dquery_DxB[:, None, :])[:, 0, :]
    if dgram_DxDxB is not None:
      dt_DxDxB = dt_DxDxB + mm(dgram_DxDxB + linalg.t_bl(dgram_DxDxB), w_DxDxB)
      dgram_DxDxB = mm(mm(tt_DxDxB, dgram_DxDxB), t_DxDxB)
    detas.append(-jnp.sum(dt_DxDxB * k_DxDxB) / n)
    dk_DxDxB = -c * dt_DxDxB
    dps.append(linalg.sum_outer_bl(dk_DxDxB, h_DxDxB))
    dh_DxDxB = mm(p_DxD.T[:, :, None], dk_DxDxB)
    dqs.append(linalg.sum_outer_bl(linalg.t_bl(gram_DxDxB), linalg.t_bl(dh_DxDxB)))
    dgram_h = mm(dh_DxDxB, q_DxD.T[:, :, None])
    dgram_DxDxB = dgram_h if dgram_DxDxB is None else dgram_DxDxB + dgram_h
  return (jnp.stack(dps[::-1]), jnp.stack(dqs[::-1]), jnp.stack(detas[::-1]), dgram_DxDxB,
          dquery_DxB)


gram_predictions.defvjp(_gram_predictions_fwd, _gram_predictions_bwd)
