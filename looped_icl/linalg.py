"""Batched products of tiny matrices, written the way XLA's CPU backend compiles well.

(Plus the two checks every matrix-valued entry point shares: :func:`float_dtype` and
:func:`check_square`.)

For d ~ 5 a batched ``dot_general`` ('bij,bjk->bik') runs one tiny GEMM per batch element, and a
broadcast-multiply-reduce does not fuse well either. An explicit sum over the (small) contracted
index of elementwise products fuses into one vectorised loop. Measured on 2 CPU cores for eight
chained (4096, 6, 6) products: einsum 18.5 ms, broadcast-reduce 3.6 ms, unrolled batch-first
1.5 ms, unrolled batch-last 0.8 ms (BUILD_NOTES.md). Hence two layouts:

* batch-first helpers (``mm``, ``mv``, ``vdot``) for (..., m, k) arrays, used by the
  samplers; leading axes broadcast explicitly, so they are safe under rank_promotion='raise';
* batch-last helpers (``*_bl``) for (m, k, B) arrays (B may be 1 to broadcast), used by the hot
  loops (Gram-space forward, population loss), where the batch is the contiguous SIMD axis.

Contracted dimensions above ``UNROLL_MAX`` fall back to ``dot_general``/einsum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import validation

UNROLL_MAX = 12


def float_dtype():
  """The default floating dtype: float32, or float64 under ``jax_enable_x64``."""
  return jnp.asarray(0.0).dtype


def check_square(name: str, m, d: int | None = None, *, finite: bool = False) -> None:
  """Raises ValueError unless ``m`` is square: (..., k, k) with k >= 1, or exactly (d, d).

  ``finite``: also reject NaN or infinite entries (checked on concrete values only, not traced).
  """
  if d is not None:
    validation.shape(name, m, (d, d))
  else:
    shape = tuple(np.shape(m))
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 1:
      raise ValueError(f"{name} must have shape (..., d, d) with d >= 1, got {shape}")
  if finite and not isinstance(m, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(m))):
    raise ValueError(f"{name} must be finite")


def _same_rank(*arrays):
  rank = max(a.ndim for a in arrays)
  return [jnp.reshape(a, (1,) * (rank - a.ndim) + a.shape) for a in arrays]


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b for (..., m, k) x (..., k, n), leading axes broadcast."""
  a, b = _same_rank(a, b)
  k = a.shape[-1]
  if k > UNROLL_MAX:
    return jnp.matmul(a, b)
  out = a[..., :, 0, None] * b[..., None, 0, :]
  for j in range(1, k):
    out = out + a[..., :, j, None] * b[..., None, j, :]
  return out


def mv(a: jax.Array, v: jax.Array) -> jax.Array:
  """a @ v for (..., m, k) x (..., k)."""
  return mm(a, v[..., :, None])[..., 0]


def t(a: jax.Array) -> jax.Array:
  """Transpose of the last two axes."""
  return jnp.swapaxes(a, -1, -2)


def vdot(u: jax.Array, v: jax.Array) -> jax.Array:
  """<u, v> over the last axis."""
  u, v = _same_rank(u, v)
  return jnp.sum(u * v, axis=-1)


# ----------------------------------------------------------------------------- batch-last


def to_bl(a_BxMxK: jax.Array) -> jax.Array:
  """(B, m, k) -> (m, k, B); a single (m, k) matrix -> (m, k, 1)."""
  return a_BxMxK[..., None] if a_BxMxK.ndim == 2 else jnp.moveaxis(a_BxMxK, 0, -1)


def opaque_one(dtype) -> jax.Array:
  """A scalar 1 that XLA cannot constant-fold: divide a product by it to keep it unfused.

  XLA's fusion pass duplicates cheap producers (adds, multiplies) into consumers that read each
  element several times (up to ~15 copies), so a product feeding another product is recomputed
  k times. A division by a runtime value is "expensive" to XLA and never duplicated; x / 1 == x
  exactly in IEEE arithmetic, so only the schedule changes, never the numbers. Create one per
  traced function and pass it to every product (measured with jax 0.10.2: one shared opaque 1
  keeps the divisions; a fresh one per product is folded into a multiply and fused again).
  """
  return jax.lax.optimization_barrier(jnp.ones((), dtype))


def _mm_bl_dot(a_MxKxB: jax.Array, b_KxNxB: jax.Array) -> jax.Array:
  """Batch-last a @ b as a dot_general (either B may be 1); a shared (unbatched) matrix times a
  batch is one real GEMM over (k, n * B), and its gradient w.r.t. the shared matrix a GEMM too."""
  if a_MxKxB.shape[-1] == 1 and b_KxNxB.shape[-1] != 1:
    return jnp.einsum("ik,knb->inb", a_MxKxB[..., 0], b_KxNxB)
  if b_KxNxB.shape[-1] == 1 and a_MxKxB.shape[-1] != 1:
    return jnp.einsum("ikb,kn->inb", a_MxKxB, b_KxNxB[..., 0])
  return jnp.einsum("ikb,knb->inb", a_MxKxB, b_KxNxB)


def mm_bl_unrolled(a_MxKxB: jax.Array, b_KxNxB: jax.Array, one: jax.Array | None = None
                   ) -> jax.Array:
  """Batch-last a @ b as one fused pass over the batch (a dot_general for k > ``UNROLL_MAX``,
  where the unrolled sum is slower: 2x at d = 20), without a custom reverse mode (for
  hand-written adjoints); ``one`` from :func:`opaque_one` keeps the result out of consumers."""
  if a_MxKxB.shape[1] > UNROLL_MAX:
    return _mm_bl_dot(a_MxKxB, b_KxNxB)
  # In lax (a[:, j, None, :] * b[None, j] broadcast to (m, n, B)): the same program as the
  # NumPy-style expression, traced and lowered ~2x faster (each jnp operator is a nested jit to
  # trace), which every unrolled product of the suite's ~2000 programs pays.
  shape = (a_MxKxB.shape[0], b_KxNxB.shape[1], max(a_MxKxB.shape[2], b_KxNxB.shape[2]))

  def term(j):
    column = jax.lax.slice_in_dim(a_MxKxB, j, j + 1, axis=1)
    row = jax.lax.slice_in_dim(b_KxNxB, j, j + 1, axis=0)
    return jax.lax.mul(jax.lax.broadcast_in_dim(column, shape, (0, 1, 2)),
                       jax.lax.broadcast_in_dim(row, shape, (0, 1, 2)))

  out = term(0)
  for j in range(1, a_MxKxB.shape[1]):
    out = jax.lax.add(out, term(j))
  return out if one is None else out / one


def _sum_to_batch(x_MxNxB: jax.Array, batch: int) -> jax.Array:
  return jnp.sum(x_MxNxB, axis=-1, keepdims=True) if batch == 1 else x_MxNxB


@jax.custom_vjp
def _mm_bl_fused(a_MxKxB: jax.Array, b_KxNxB: jax.Array) -> jax.Array:
  return mm_bl_unrolled(a_MxKxB, b_KxNxB)


def _mm_bl_fused_fwd(a_MxKxB, b_KxNxB):
  return mm_bl_unrolled(a_MxKxB, b_KxNxB), (a_MxKxB, b_KxNxB)


def _mm_bl_fused_bwd(residuals, g_MxNxB):
  # Autodiff of the unrolled form would pad every slice's cotangent back to full size (k padded
  # copies per product); the adjoint products dA = dC B^T, dB = A^T dC are products again.
  a_MxKxB, b_KxNxB = residuals
  da = _sum_to_batch(mm_bl_unrolled(g_MxNxB, t_bl(b_KxNxB)), a_MxKxB.shape[-1])
  db = _sum_to_batch(mm_bl_unrolled(t_bl(a_MxKxB), g_MxNxB), b_KxNxB.shape[-1])
  return da, db


_mm_bl_fused.defvjp(_mm_bl_fused_fwd, _mm_bl_fused_bwd)


def mm_bl(a_MxKxB: jax.Array, b_KxNxB: jax.Array) -> jax.Array:
  """Batch-last a @ b: (m, k, B) x (k, n, B) -> (m, n, B) (either B may be 1).

  Differentiable (reverse mode) with adjoints that are again fused products.
  """
  if a_MxKxB.shape[-1] != b_KxNxB.shape[-1] or a_MxKxB.shape[1] > UNROLL_MAX:
    return _mm_bl_dot(a_MxKxB, b_KxNxB)       # shared times batch, or a large contraction
  return _mm_bl_fused(a_MxKxB, b_KxNxB)


def sum_outer_bl(a_MxKxB: jax.Array, b_NxKxB: jax.Array) -> jax.Array:
  """sum_b a_b b_b^T: (m, k, B) x (n, k, B) -> (m, n), one GEMM over k B (measured 4x faster
  than the einsum form on CPU); the gradient of a shared matrix w.r.t. a batch of products."""
  m, k, b = a_MxKxB.shape
  return a_MxKxB.reshape(m, k * b) @ b_NxKxB.reshape(b_NxKxB.shape[0], k * b).T


def t_bl(a_MxKxB: jax.Array) -> jax.Array:
  """Batch-last transpose: (m, k, B) -> (k, m, B)."""
  return jnp.swapaxes(a_MxKxB, 0, 1)


def frob_bl(a_MxKxB: jax.Array, b_MxKxB: jax.Array) -> jax.Array:
  """Batch-last tr(a^T b): (m, k, B) x (m, k, B) -> (B,)."""
  return jnp.sum(a_MxKxB * b_MxKxB, axis=(0, 1))


def eye_bl(d: int, dtype) -> jax.Array:
  """The identity as a batch-last (d, d, 1) array."""
  return jnp.eye(d, dtype=dtype)[:, :, None]
