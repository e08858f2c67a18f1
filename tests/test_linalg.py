"""Tests for looped_icl.linalg: the unrolled products against NumPy, and the shared checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import linalg


def test_float_dtype_follows_x64(x64):
  del x64
  assert linalg.float_dtype() == jnp.float64
  with jax.enable_x64(False):
    assert linalg.float_dtype() == jnp.float32


def test_check_square():
  linalg.check_square("m", np.zeros((2, 3, 3)))
  linalg.check_square("m", np.eye(4), 4, finite=True)
  for bad in (np.zeros(3), np.zeros((3, 4)), np.zeros((2, 0, 0))):
    with pytest.raises(ValueError, match=r"^m must have shape \(\.\.\., d, d\) with d >= 1"):
      linalg.check_square("m", bad)
  with pytest.raises(ValueError, match=r"^a must have shape \(3, 3\), got \(4, 4\)$"):
    linalg.check_square("a", np.eye(4), 3)
  nan = np.eye(3)
  nan[0, 1] = np.nan
  linalg.check_square("a", nan, 3)                     # finiteness only when asked
  with pytest.raises(ValueError, match="^a must be finite$"):
    linalg.check_square("a", nan, 3, finite=True)
  jax.jit(lambda m: linalg.check_square("a", m, 3, finite=True) or m)(jnp.eye(3))  # traced: ok


def test_products_match_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 4, 2))
  np.testing.assert_allclose(linalg.mm(a, b), a @ b, rtol=1e-6, atol=1e-6)
  v = rng.normal(size=(5, 4))
  np.testing.assert_allclose(linalg.mv(a, v), np.einsum("bij,bj->bi", a, v), rtol=1e-6,
                             atol=1e-6)
  a_bl, b_bl = np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1)
  np.testing.assert_allclose(linalg.mm_bl(jnp.asarray(a_bl), jnp.asarray(b_bl)),
                             np.moveaxis(a @ b, 0, -1), rtol=1e-6, atol=1e-6)
