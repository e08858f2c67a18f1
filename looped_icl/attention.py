"""Self-attention forward passes over stacked per-layer weights (SPEC sections 2-3).

A model of any kind (layered or looped) and parametrization is first turned into stacked weights
``p_LxDxD, q_LxDxD, eta_L`` (see :func:`looped_icl.models.layer_weights`), then run by one of:

* :func:`forward_tokens`: the reference path on the prompt Z (B, D, N), D = d+1, N = n+1:
  Z_{l+1} = Z_l - eta_l * P_l Z_l M act(Z_l^T Q_l Z_l), with act = identity/n (linear),
  relu/n, or a softmax over the n keys.
* :func:`forward_gram`: the exact fast path for linear attention. Attn(Z) = P G Q Z / n with
  G = Z M Z^T, so a layer is a left multiplication Z_{l+1} = T_l Z_l, T_l = I - eta_l P G_l Q / n,
  and G_{l+1} = T_l G_l T_l^T. Only G_0 and the query column are needed: O(L d^3) per task
  (kernel and its hand-written reverse mode: :mod:`looped_icl.gram_forward`).

Both return the prediction after every layer, y_hat_l = -Z_l[d, n], shape (B, L).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from looped_icl import gram_forward
from looped_icl import linalg
from looped_icl import validation

ACTIVATIONS = ("linear", "relu", "softmax")


def _check_weights(p_LxDxD, q_LxDxD, eta_L, dim: int) -> int:
  num_layers = p_LxDxD.shape[0]
  chex.assert_shape([p_LxDxD, q_LxDxD, eta_L], [(num_layers, dim, dim), (num_layers, dim, dim),
                                                (num_layers,)])
  return num_layers


def forward_tokens(p_LxDxD: jax.Array, q_LxDxD: jax.Array, eta_L: jax.Array, z_BxDxN: jax.Array,
                   activation: str = "linear") -> jax.Array:
  """Token-space forward; returns per-layer predictions (B, L)."""
  validation.choice("activation", activation, ACTIVATIONS)
  chex.assert_rank(z_BxDxN, 3)
  _, dim, num_tokens = z_BxDxN.shape
  n = num_tokens - 1
  _check_weights(p_LxDxD, q_LxDxD, eta_L, dim)

  def layer(z_BxDxN, weights):
    p_DxD, q_DxD, eta = weights
    keys_BxDxK = z_BxDxN[:, :, :n]                                        # M drops the query.
    scores_BxKxN = jnp.einsum("bik,ij,bjn->bkn", keys_BxDxK, q_DxD, z_BxDxN)
    if activation == "linear":
      mix_BxKxN = scores_BxKxN / n
    elif activation == "relu":
      mix_BxKxN = jax.nn.relu(scores_BxKxN) / n
    else:
      mix_BxKxN = jax.nn.softmax(scores_BxKxN, axis=1)
    attn_BxDxN = jnp.einsum("ij,bjk,bkn->bin", p_DxD, keys_BxDxK, mix_BxKxN)
    z_BxDxN = z_BxDxN - eta * attn_BxDxN
    return z_BxDxN, -z_BxDxN[:, dim - 1, n]

  _, preds_LxB = jax.lax.scan(layer, z_BxDxN, (p_LxDxD, q_LxDxD, eta_L))
  return preds_LxB.T


def forward_gram(p_LxDxD: jax.Array, q_LxDxD: jax.Array, eta_L: jax.Array, gram_BxDxD: jax.Array,
                 query_BxD: jax.Array, n: int) -> jax.Array:
  """Exact Gram-space forward of linear attention; returns per-layer predictions (B, L).

  Runs batch-last with a hand-written reverse mode (:mod:`looped_icl.gram_forward`).
  """
  chex.assert_rank([gram_BxDxD, query_BxD], [3, 2])
  batch, dim, _ = gram_BxDxD.shape
  chex.assert_shape([gram_BxDxD, query_BxD], [(batch, dim, dim), (batch, dim)])
  _check_weights(p_LxDxD, q_LxDxD, eta_L, dim)
  preds_LxB = gram_forward.gram_predictions(p_LxDxD, q_LxDxD, eta_L, linalg.to_bl(gram_BxDxD),
                                            query_BxD.T, n)
  return preds_LxB.T
