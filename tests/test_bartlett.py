"""Exact chi-square and Bartlett draws (looped_icl.bartlett).

Laws are checked by Monte Carlo in NumPy float64 on the raw arrays: a mean passes within 4
standard errors (SE = sample std / sqrt(B)), a distribution by Kolmogorov-Smirnov at a fixed key.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from looped_icl import bartlett
import reference  # tests/reference.py: shared NumPy references

D = 3
N = 8
BATCH = 50_000      # the batch shape of tests/test_tasks.py's float32 draws


def _np(x):
  return np.asarray(x, dtype=np.float64)


def test_chi_square_matches_the_chi_square_law():
  """Each column is chi^2 with its dofs (0 gives 0; shapes below 1 take the boost branch):
  Kolmogorov-Smirnov against scipy's CDF (p > 1e-3 at this fixed key) and the mean within 4 SE.
  The columns are independent: their correlations are within 4 / sqrt(B) of 0."""
  dofs = np.array([0.0, 1.0, 2.0, 3.0, 15.0, 2000.0])
  draws = _np(bartlett.chi_square(jax.random.key(40), jnp.asarray(dofs, jnp.float32), BATCH))
  assert draws.shape == (BATCH, dofs.size)
  np.testing.assert_array_equal(draws[:, 0], 0.0)
  for k, column in zip(dofs[1:], draws[:, 1:].T):
    assert np.all(column > 0)
    assert stats.kstest(column, stats.chi2(k).cdf).pvalue > 1e-3, k
    reference.assert_mean_within(column, k, f"E chi^2_{k:g}")
  corr = np.corrcoef(draws[:, 1:].T)
  np.testing.assert_array_less(np.abs(corr - np.eye(dofs.size - 1)), 4 / np.sqrt(BATCH))


def test_bartlett_factor_law():
  """A lower triangular, A_ii^2 ~ chi^2_{n-i} (i = 0..d-1), A_ij ~ N(0, 1) below the diagonal."""
  n = N
  a = _np(bartlett.bartlett_factor(jax.random.key(24), n, D, BATCH, jnp.float32))
  assert a.shape == (BATCH, D, D)
  np.testing.assert_array_equal(a[:, np.triu_indices(D, 1)[0], np.triu_indices(D, 1)[1]], 0.0)
  diag = np.diagonal(a, axis1=1, axis2=2)
  assert np.all(diag > 0)
  dofs = n - np.arange(D)
  reference.assert_mean_within(diag ** 2, dofs, "E A_ii^2")
  reference.assert_mean_within(diag ** 4, dofs * (dofs + 2), "E A_ii^4")
  low = a[:, np.tril_indices(D, -1)[0], np.tril_indices(D, -1)[1]]
  reference.assert_mean_within(low, np.zeros(low.shape[1]), "E A_ij")
  reference.assert_mean_within(low ** 2, np.ones(low.shape[1]), "E A_ij^2")
  # A A^T ~ Wishart_d(n, I): E = n I.
  reference.assert_mean_within(np.einsum("bij,bkj->bik", a, a), n * np.eye(D), "E A A^T")
