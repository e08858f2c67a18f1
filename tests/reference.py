"""Independent NumPy references shared by the tests (written from SPEC.md, not the library)."""

import jax.numpy as jnp
import numpy as np

from looped_icl import tasks


def pgd_reference(x, y, x_query, a_list, etas) -> np.ndarray:
  """Explicit preconditioned GD w <- w + eta_l A_l^T X^T (y - X w) / n from the tokens;
  per-layer predictions <w_l, x_q>, shape (B, L)."""
  num_tasks, n, d = x.shape
  preds = np.zeros((num_tasks, len(a_list)))
  for b in range(num_tasks):
    w = np.zeros(d)
    for l, (a, eta) in enumerate(zip(a_list, etas)):
      w = w + eta * a.T @ x[b].T @ (y[b] - x[b] @ w) / n
      preds[b, l] = x_query[b] @ w
  return preds


def assert_rel_close(actual, expected, rel):
  """max |actual - expected| <= rel * max |expected| (shapes equal, expected not all zero)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  scale = np.max(np.abs(expected))
  assert scale > 0
  err = np.max(np.abs(actual - expected))
  assert err <= rel * scale, f"max error {err:.3g} > {rel:.1g} * {scale:.3g}"


def assert_mean_within(samples, expected, what, num_se=4.0):
  """Mean over axis 0 within ``num_se`` standard errors (sample std / sqrt(N)) of ``expected``,
  entrywise, in NumPy float64."""
  samples = np.asarray(samples, np.float64)
  expected = np.broadcast_to(np.asarray(expected, np.float64), samples.shape[1:])
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
  z = np.abs(mean - expected) / np.maximum(se, 1e-300)
  assert np.all(z <= num_se), f"{what}: mean {mean}, expected {expected}, SE {se}, z {z}"


def numpy_tasks(seed, cov, n, batch_size, noise_std):
  """Token-level tasks drawn in numpy (x ~ N(0, cov), w* ~ N(0, I), Gaussian label noise), in
  the library's Tasks container."""
  rng = np.random.default_rng(seed)
  chol = np.linalg.cholesky(np.asarray(cov, np.float64))
  d = chol.shape[0]
  x_all = rng.normal(size=(batch_size, n + 1, d)) @ chol.T
  w = rng.normal(size=(batch_size, d))
  y_all = np.einsum("bni,bi->bn", x_all, w) + noise_std * rng.normal(size=(batch_size, n + 1))
  return tasks.Tasks(x=jnp.asarray(x_all[:, :n]), y=jnp.asarray(y_all[:, :n]),
                     x_query=jnp.asarray(x_all[:, n]), y_query=jnp.asarray(y_all[:, n]),
                     w=jnp.asarray(w))
