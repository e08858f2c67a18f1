"""The population loss's M/N recursion with a hand-written reverse mode (SPEC section 4).

Per sample of S (symmetric, d x d) and layer l, with K_l = eta_l A_l^T (shared by the samples,
(d, d, 1), or per sample, (d, d, S) for GD++), U_l = K_l S and T_l = I - U_l:
  M_{l+1} = T_l M_l,  N_{l+1} = T_l N_l + K_l,  M_0 = -I, N_0 = 0,
  loss_l = <Q_l, M_{l+1}> + c <W_l, N_{l+1}> + nu,   c = nu / n, nu = sigma^2,
  Q_l = Sigma_x M_{l+1} Sigma_w,  W_l = V_l S,  V_l = Sigma_x N_{l+1}
(<., .> the Frobenius product; loss_l is tr(Sigma_x M Sigma_w M^T) + c tr(Sigma_x N S N^T) + nu).

Reverse mode (adjoints written d., g_l = dloss_l per sample; Sigma_x, Sigma_w, S symmetric):
  dM_{l+1} += 2 g_l Q_l,  dN_{l+1} += 2 c g_l W_l,
  dT_l = dM_{l+1} M_l^T + dN_{l+1} N_l^T,  dM_l = T_l^T dM_{l+1},  dN_l = T_l^T dN_{l+1},
  dK_l = dN_{l+1} - dT_l S  (summed over the samples when K_l is shared),
  dS = sum_l [c g_l N_{l+1}^T V_l - K_l^T dT_l],
  dSigma_x = sum_{l,b} g_l (M_{l+1} Sigma_w M_{l+1}^T + c N_{l+1} S N_{l+1}^T),
  dSigma_w = sum_{l,b} g_l M_{l+1}^T Sigma_x M_{l+1},  dnu = sum_{l,b} g_l (<W_l, N_{l+1}> / n + 1).
The first layer uses M_0 = -I, N_0 = 0 (M_1 = U_0 - I, N_1 = K_0, dT_0 = -dM_1). Cotangents
nobody reads (S, the covariances, nu while training) are removed by XLA.

Every product, shared matrices (K, Sigma) times the batch included, is one fused pass
(``linalg.mm_bl_unrolled`` with an opaque 1): a GEMM over the reshaped batch reshapes its
operand, and XLA:CPU fuses the producing product into that reshape at ~20 ns per element. As
in :mod:`gram_forward`, the differentiated path unrolls the layers in Python and evaluation
scans them. Autodiff of the recursion (the first performance pass) took 12.3 ms for the value
and gradient at S = 1024, L = 4; this takes 1.5 ms (BUILD_NOTES.md, Performance).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from looped_icl import linalg


def _layer(m_DxDxS, n_DxDxS, k_DxDxB, s_DxDxS, sigma_x, sigma_w, noise_var, n, mm):
  """One layer (M_l, N_l -> M_{l+1}, N_{l+1}; M_l None for the first) and its loss, (S,)."""
  u_DxDxS = mm(k_DxDxB, s_DxDxS)
  if m_DxDxS is None:
    m_DxDxS = u_DxDxS - linalg.eye_bl(s_DxDxS.shape[0], s_DxDxS.dtype)
    n_DxDxS = jnp.broadcast_to(k_DxDxB, s_DxDxS.shape)
  else:
    m_DxDxS = m_DxDxS - mm(u_DxDxS, m_DxDxS)
    n_DxDxS = n_DxDxS - mm(u_DxDxS, n_DxDxS) + k_DxDxB
  q_DxDxS = mm(mm(sigma_x, m_DxDxS), sigma_w)
  v_DxDxS = mm(sigma_x, n_DxDxS)
  w_DxDxS = mm(v_DxDxS, s_DxDxS)
  loss_S = (linalg.frob_bl(q_DxDxS, m_DxDxS) + noise_var / n * linalg.frob_bl(w_DxDxS, n_DxDxS)
            + noise_var)
  return loss_S, (m_DxDxS, n_DxDxS, u_DxDxS, q_DxDxS, v_DxDxS, w_DxDxS)


def _forward(k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, n, *, residuals: bool):
  """Per-layer losses (L, S) and, with ``residuals``, the per-layer (M_{l+1}, N_{l+1}, U_l, Q_l,
  V_l, W_l) of the reverse pass. Without, the layers after the first run in a lax.scan: its
  compile time does not grow with L (20 unrolled layers took 2.7 s to compile), and nothing is
  differentiated through it."""
  mm = functools.partial(linalg.mm_bl_unrolled, one=linalg.opaque_one(s_DxDxS.dtype))
  layer = functools.partial(_layer, s_DxDxS=s_DxDxS, sigma_x=sigma_x_DxD[:, :, None],
                            sigma_w=sigma_w_DxD[:, :, None], noise_var=noise_var, n=n, mm=mm)
  loss_S, saved = layer(None, None, k_LxDxDxB[0])
  if not residuals:
    def body(carry, k_DxDxB):
      loss_S, out = layer(*carry, k_DxDxB)
      return out[:2], loss_S

    _, losses_LxS = jax.lax.scan(body, saved[:2], k_LxDxDxB[1:])
    return jnp.concatenate([loss_S[None], losses_LxS]), None
  losses, saved = [loss_S], [saved]
  for l in range(1, k_LxDxDxB.shape[0]):
    loss_S, out = layer(*saved[-1][:2], k_LxDxDxB[l])
    losses.append(loss_S)
    saved.append(out)
  return jnp.stack(losses), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def population_losses(k_LxDxDxB: jax.Array, s_DxDxS: jax.Array, sigma_x_DxD: jax.Array,
                      sigma_w_DxD: jax.Array, noise_var: jax.Array, n: int) -> jax.Array:
  """Rao-Blackwellised loss of every layer for each sample of S: (L, S).

  ``k_LxDxDxB``: eta_l A_l^T per layer, shared ((L, d, d, 1)) or per sample ((L, d, d, S));
  ``s_DxDxS``: samples of S = X^T X / n, batch-last; the covariances must be symmetric.
  Reverse mode is hand-written (module doc).
  """
  return _forward(k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, n,
                  residuals=False)[0]


def _population_losses_fwd(k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, n):
  losses_LxS, saved = _forward(k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, n,
                               residuals=True)
  return losses_LxS, (k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, saved)


def _population_losses_bwd(n, residuals, dlosses_LxS):
  k_LxDxDxB, s_DxDxS, sigma_x_DxD, sigma_w_DxD, noise_var, saved = residuals
  sigma_x, sigma_w = sigma_x_DxD[:, :, None], sigma_w_DxD[:, :, None]
  one = linalg.opaque_one(s_DxDxS.dtype)
  mm = functools.partial(linalg.mm_bl_unrolled, one=one)
  t = linalg.t_bl
  c = noise_var / n
  dm_DxDxS = dn_DxDxS = None
  ds_DxDxS = jnp.zeros_like(s_DxDxS)
  dsigma_x_DxD, dsigma_w_DxD = jnp.zeros_like(sigma_x_DxD), jnp.zeros_like(sigma_w_DxD)
  dnoise_var = jnp.zeros_like(noise_var)
  dks = []
  for l in reversed(range(len(saved))):
    m_DxDxS, n_DxDxS, u_DxDxS, q_DxDxS, v_DxDxS, w_DxDxS = saved[l]
    k_DxDxB = k_LxDxDxB[l]
    g_1x1xS = dlosses_LxS[l][None, None, :]
    # The loss terms of this layer.
    dm_loss, dn_loss = 2 * g_1x1xS * q_DxDxS, (2 * c) * g_1x1xS * w_DxDxS
    # Materialised (/ one): each is read k times by the products below.
    dm_DxDxS = (dm_loss if dm_DxDxS is None else dm_DxDxS + dm_loss) / one
    dn_DxDxS = (dn_loss if dn_DxDxS is None else dn_DxDxS + dn_loss) / one
    ds_DxDxS = ds_DxDxS + c * mm(t(n_DxDxS), g_1x1xS * v_DxDxS)
    dsigma_x_DxD = (dsigma_x_DxD
                    + linalg.sum_outer_bl(g_1x1xS * mm(m_DxDxS, sigma_w), m_DxDxS)
                    + c * linalg.sum_outer_bl(g_1x1xS * mm(n_DxDxS, s_DxDxS), n_DxDxS))
    dsigma_w_DxD = dsigma_w_DxD + linalg.sum_outer_bl(t(m_DxDxS),
                                                      t(g_1x1xS * mm(sigma_x, m_DxDxS)))
    dnoise_var = dnoise_var + jnp.sum(dlosses_LxS[l] * (linalg.frob_bl(w_DxDxS, n_DxDxS) / n + 1))
    # Through M_{l+1} = T_l M_l, N_{l+1} = T_l N_l + K_l, T_l = I - K_l S.
    if l == 0:
      dt_DxDxS = -dm_DxDxS                                               # M_0 = -I, N_0 = 0
    else:
      m_prev, n_prev = saved[l - 1][:2]
      dt_DxDxS = mm(dm_DxDxS, t(m_prev)) + mm(dn_DxDxS, t(n_prev))
    dk_DxDxS = dn_DxDxS - mm(dt_DxDxS, s_DxDxS)
    dks.append(jnp.sum(dk_DxDxS, axis=-1, keepdims=True) if k_DxDxB.shape[-1] == 1 else dk_DxDxS)
    ds_DxDxS = ds_DxDxS - mm(t(k_DxDxB), dt_DxDxS)
    if l > 0:
      ut_DxDxS = t(u_DxDxS) / one
      dm_DxDxS = dm_DxDxS - mm(ut_DxDxS, dm_DxDxS)
      dn_DxDxS = dn_DxDxS - mm(ut_DxDxS, dn_DxDxS)
  return jnp.stack(dks[::-1]), ds_DxDxS, dsigma_x_DxD, dsigma_w_DxD, dnoise_var


population_losses.defvjp(_population_losses_fwd, _population_losses_bwd)
