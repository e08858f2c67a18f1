"""Task samplers: token level (sample_tasks), sufficient statistics (sample_gram), empirical
covariances (sample_empirical_covariance), and the prompt layout (SPEC sections 1-3).

Distributional claims are checked by Monte Carlo against closed-form moments and against the
other sampler: a mean passes when it is within 4 standard errors (SE = sample std / sqrt(N), or
sqrt(SE_a^2 + SE_b^2) for the difference of two independent samplers). All moments are computed
in NumPy float64 from the raw arrays, not with the library's own reductions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import covariance
from looped_icl import tasks
import reference  # tests/reference.py: shared NumPy references

NUM_SE = 4.0
D = 3
N = 8
NOISE = 0.5
SPECTRUM = (1.0, 0.4, 0.1)
BATCH = 50_000      # One batch shape for every float32 Monte Carlo draw (compiles are shared).
SMALL = 512         # One batch shape for the float64 draws.
SYM_B = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 0.5]])


def _sigma():
  return covariance.make_covariance("rotated", D, spectrum=SPECTRUM, cov_seed=1)


def _task(n=N, weight_prior="identity", design="gaussian", noise_std=NOISE):
  return tasks.make_task(_sigma(), n, noise_std=noise_std, weight_prior=weight_prior,
                         design=design)


def _np(x):
  return np.asarray(x, dtype=np.float64)


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _assert_same_mean(a, b, what):
  """Two independent samples have means within NUM_SE standard errors of their difference."""
  a, b = _np(a), _np(b)
  diff = a.mean(axis=0) - b.mean(axis=0)
  se = np.sqrt(a.var(axis=0, ddof=1) / a.shape[0] + b.var(axis=0, ddof=1) / b.shape[0])
  z = np.abs(diff) / np.maximum(se, 1e-300)
  assert np.all(z <= NUM_SE), f"{what}: difference {diff}, SE {se}, z {z}"


def _stats_from_tokens(batch):
  """(X^T X, X^T y, y^T y, w, x_q, y_q) computed in NumPy from the raw token arrays."""
  x, y = _np(batch.x), _np(batch.y)
  xtx = np.einsum("bni,bnj->bij", x, x)
  xty = np.einsum("bni,bn->bi", x, y)
  return xtx, xty, np.einsum("bn,bn->b", y, y), _np(batch.w), _np(batch.x_query), _np(
      batch.y_query)


def _stats_from_gram(gram):
  g, q = _np(gram.gram), _np(gram.query)
  return g[:, :D, :D], g[:, :D, D], g[:, D, D], _np(gram.w), q[:, :D], _np(gram.y_query)


def _features(xtx, xty, yty, w, xq, yq, with_rss=True):
  """Per-task statistics whose means have closed forms (see ``_closed_forms``)."""
  feats = {
      "XtX": xtx,
      "Xty": xty,
      "yty": yty,
      "yty^2": yty ** 2,
      "(tr XtX)^2": np.trace(xtx, axis1=1, axis2=2) ** 2,
      "Xty ytX": np.einsum("bi,bj->bij", xty, xty),
      "Xty w^T": np.einsum("bi,bj->bij", xty, w),
      "w w^T": np.einsum("bi,bj->bij", w, w),
      "xq xq^T": np.einsum("bi,bj->bij", xq, xq),
      "yq^2": yq ** 2,
      "(yq - <xq, w>)^2": (yq - np.einsum("bi,bi->b", xq, w)) ** 2,
  }
  if with_rss:  # Residual sum of squares of least squares: y^T y - y^T X (X^T X)^-1 X^T y.
    rss = yty - np.einsum("bi,bi->b", xty, np.linalg.solve(xtx, xty[:, :, None])[:, :, 0])
    feats["rss / s^2"] = rss / NOISE ** 2
    feats["(rss / s^2)^2"] = (rss / NOISE ** 2) ** 2
  return feats


def _closed_forms(sigma, sigma_w, n, s2, with_rss=True):
  """Exact moments for x ~ N(0, Sigma), w ~ N(0, Sigma_w), noise variance s2, n examples."""
  d = sigma.shape[0]
  t1 = np.trace(sigma @ sigma_w)
  t2 = np.trace(sigma @ sigma_w @ sigma @ sigma_w)
  forms = {
      "XtX": n * sigma,
      "Xty": np.zeros(d),
      "yty": n * (t1 + s2),
      # y_i | w iid N(0, v), v = w^T Sigma w + s2: E (y^T y)^2 = n (n + 2) E v^2.
      "yty^2": n * (n + 2) * (2 * t2 + (t1 + s2) ** 2),
      "(tr XtX)^2": 2 * n * np.trace(sigma @ sigma) + (n * np.trace(sigma)) ** 2,
      # Wishart: E[W B W] = n (n + 1) Sigma B Sigma + n tr(B Sigma) Sigma.
      "Xty ytX": (n * (n + 1) * sigma @ sigma_w @ sigma + n * t1 * sigma + n * s2 * sigma),
      "Xty w^T": n * sigma @ sigma_w,
      "w w^T": sigma_w,
      "xq xq^T": sigma,
      "yq^2": t1 + s2,
      "(yq - <xq, w>)^2": s2,
  }
  if with_rss:  # rss / s^2 ~ chi^2_{n-d}.
    forms["rss / s^2"] = n - d
    forms["(rss / s^2)^2"] = (n - d) * (n - d + 2)
  return forms


def _check_against_closed_forms(feats, forms, label):
  for name, expected in forms.items():
    reference.assert_mean_within(feats[name], expected, f"{label} {name}")


# ----------------------------------------------------------------------------------------------
# Prompt layout and sufficient statistics.
# ----------------------------------------------------------------------------------------------


def _handmade_tasks(rng, b=2, n=3, d=2):
  return tasks.Tasks(x=jnp.asarray(rng.standard_normal((b, n, d)), jnp.float32),
                     y=jnp.asarray(rng.standard_normal((b, n)), jnp.float32),
                     x_query=jnp.asarray(rng.standard_normal((b, d)), jnp.float32),
                     y_query=jnp.asarray(rng.standard_normal((b,)), jnp.float32),
                     w=jnp.asarray(rng.standard_normal((b, d)), jnp.float32))


def test_to_prompt_layout_matches_spec():
  """Z_0 = [[x_1 .. x_n x_q], [y_1 .. y_n 0]]: columns are tokens, the query label is 0."""
  rng = np.random.default_rng(0)
  b, n, d = 2, 3, 2
  batch = _handmade_tasks(rng, b, n, d)
  z = _np(tasks.to_prompt(batch))
  assert z.shape == (b, d + 1, n + 1)
  x, y, xq = _np(batch.x), _np(batch.y), _np(batch.x_query)
  for t in range(b):
    expected = np.zeros((d + 1, n + 1))
    for i in range(n):
      expected[:d, i] = x[t, i]
      expected[d, i] = y[t, i]
    expected[:d, n] = xq[t]
    expected[d, n] = 0.0
    np.testing.assert_array_equal(z[t], expected)


def test_to_gram_is_z_m_zt_of_the_prompt():
  rng = np.random.default_rng(1)
  b, n, d = 3, 5, 4
  batch = _handmade_tasks(rng, b, n, d)
  z = _np(tasks.to_prompt(batch))
  m = np.diag([1.0] * n + [0.0])                  # The query is not a key/value.
  gram = tasks.to_gram(batch)
  assert gram.n == n
  np.testing.assert_allclose(_np(gram.gram), z @ m @ np.swapaxes(z, 1, 2), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(_np(gram.query), z[:, :, n])
  np.testing.assert_array_equal(_np(gram.y_query), _np(batch.y_query))
  np.testing.assert_array_equal(_np(gram.w), _np(batch.w))
  xtx, xty, yty, xq = (_np(a) for a in tasks.split_gram(gram))
  x, y = _np(batch.x), _np(batch.y)
  np.testing.assert_allclose(xtx, np.einsum("bni,bnj->bij", x, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(xty, np.einsum("bni,bn->bi", x, y), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(yty, np.einsum("bn,bn->b", y, y), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(xq, _np(batch.x_query))


# ----------------------------------------------------------------------------------------------
# Token sampler: covariates for every design, weights, labels.
# ----------------------------------------------------------------------------------------------


def _t_abs_mean(nu):
  """E|T| for Student's t with nu dof."""
  return (2 * math.sqrt(nu) * math.gamma((nu + 1) / 2)
          / (math.sqrt(math.pi) * (nu - 1) * math.gamma(nu / 2)))


# E|z_k| of one whitened coordinate z = L^-1 x (L the Cholesky factor of Sigma), per design.
ABS_MEAN = {
    "gaussian": math.sqrt(2 / math.pi),
    "uniform": math.sqrt(3) / 2,                                   # U(-sqrt 3, sqrt 3).
    "student_t": math.sqrt((tasks.STUDENT_T_DOF - 2) / tasks.STUDENT_T_DOF)
                 * _t_abs_mean(tasks.STUDENT_T_DOF),              # Rescaled to variance 1.
    # sqrt(d) u_k, u uniform on the sphere: E|u_k| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    "sphere": math.sqrt(D) * math.gamma(D / 2) / (math.sqrt(math.pi) * math.gamma((D + 1) / 2)),
    # g sqrt(s), s ~ Gamma(k)/k: E sqrt(s) = Gamma(k + 1/2) / (Gamma(k) sqrt(k)).
    "gamma": math.sqrt(2 / math.pi) * math.gamma(tasks.GAMMA_SHAPE + 0.5)
             / (math.gamma(tasks.GAMMA_SHAPE) * math.sqrt(tasks.GAMMA_SHAPE)),
}


@pytest.mark.parametrize("design", tasks.DESIGNS)
def test_covariates_have_covariance_sigma_for_every_design(design):
  """Empirical E[x x^T] of all B (n + 1) covariate vectors is Sigma entrywise within 4 SE of the
  entries (SE of entry (i, j) = std(x_i x_j) / sqrt(B (n + 1)); about 0.002 here), and each
  whitened coordinate has the design's E|z_k| (which tells the five laws apart)."""
  sigma = _np(_sigma())
  batch = tasks.sample_tasks(jax.random.key(10), _task(design=design), BATCH)
  x = np.concatenate([_np(batch.x), _np(batch.x_query)[:, None, :]], axis=1).reshape(-1, D)
  assert x.shape == (BATCH * (N + 1), D)
  reference.assert_mean_within(np.einsum("ki,kj->kij", x, x), sigma, f"{design} E[x x^T]")
  reference.assert_mean_within(x, np.zeros(D), f"{design} E[x]")
  z = np.linalg.solve(np.linalg.cholesky(sigma), x.T).T
  reference.assert_mean_within(np.abs(z), np.full(D, ABS_MEAN[design]), f"{design} E|z|")
  if design == "sphere":  # ||z||^2 = d exactly, for every vector.
    np.testing.assert_allclose(np.sum(z ** 2, axis=1), D, rtol=1e-4)
  # Labels keep the regression model for every design: y - <x, w> is N(0, s^2) noise.
  resid = _np(batch.y) - np.einsum("bni,bi->bn", _np(batch.x), _np(batch.w))
  reference.assert_mean_within(resid.reshape(-1) ** 2, NOISE ** 2, f"{design} noise variance")


def test_designs_differ_from_each_other():
  """The E|z| values tell the designs apart (so the test above catches a swapped design), except
  sphere vs uniform: for d = 3 a coordinate of the sphere IS uniform (Archimedes' hat-box
  theorem), and there the exact ||z||^2 = d check separates them."""
  assert D == 3
  np.testing.assert_allclose(ABS_MEAN["sphere"], ABS_MEAN["uniform"], rtol=1e-12)
  values = sorted(v for k, v in ABS_MEAN.items() if k != "sphere")
  assert min(b - a for a, b in zip(values, values[1:])) > 0.01


@pytest.mark.parametrize("weight_prior", tasks.WEIGHT_PRIORS)
def test_weights_follow_the_prior(weight_prior):
  sigma = _np(_sigma())
  sigma_w = np.eye(D) if weight_prior == "identity" else np.linalg.inv(sigma)
  task = _task(weight_prior=weight_prior)
  np.testing.assert_allclose(_np(task.weight_cov), sigma_w, rtol=1e-4, atol=1e-4)
  w = _np(tasks.sample_tasks(jax.random.key(11), task, BATCH).w)
  reference.assert_mean_within(w, np.zeros(D), f"{weight_prior} E[w]")
  reference.assert_mean_within(np.einsum("bi,bj->bij", w, w), sigma_w, f"{weight_prior} E[w w^T]")


def test_labels_are_linear_plus_noise_of_variance_s2():
  batch = tasks.sample_tasks(jax.random.key(12), _task(), BATCH)
  x, y, w = _np(batch.x), _np(batch.y), _np(batch.w)
  resid = (y - np.einsum("bni,bi->bn", x, w)).reshape(-1)
  num = resid.size
  # Closed-form SE of the mean of eps^2, eps ~ N(0, s^2): s^2 sqrt(2 / num).
  assert abs(np.mean(resid ** 2) - NOISE ** 2) <= NUM_SE * NOISE ** 2 * math.sqrt(2 / num)
  assert abs(np.mean(resid)) <= NUM_SE * NOISE / math.sqrt(num)
  # The noise is independent of the covariates: E[eps x] = 0.
  reference.assert_mean_within(resid[:, None] * x.reshape(-1, D), np.zeros(D), "E[eps x]")
  resid_q = _np(batch.y_query) - np.einsum("bi,bi->b", _np(batch.x_query), w)
  reference.assert_mean_within(resid_q ** 2, NOISE ** 2, "query noise variance")


def test_noiseless_labels_are_exactly_linear():
  batch = tasks.sample_tasks(jax.random.key(13), _task(noise_std=0.0), BATCH)
  x, y, w = _np(batch.x), _np(batch.y), _np(batch.w)
  np.testing.assert_allclose(y, np.einsum("bni,bi->bn", x, w), atol=1e-5)
  np.testing.assert_allclose(_np(batch.y_query), np.einsum("bi,bi->b", _np(batch.x_query), w),
                             atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Sufficient-statistic sampler versus the token sampler and the closed forms.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_prior", tasks.WEIGHT_PRIORS)
def test_sample_gram_matches_token_sampler_and_closed_forms(weight_prior):
  """Non-identity Sigma, noise s = 0.5, n = 8 > d = 3 (Bartlett path). Means of X^T X, X^T y,
  y^T y; second moments E (y^T y)^2, E (tr X^T X)^2, E X^T y y^T X; the joint law with w and the
  query; and rss / s^2 ~ chi^2_{n-d} (mean and second moment)."""
  task = _task(weight_prior=weight_prior)
  assert tasks.uses_bartlett(task)
  sigma = _np(_sigma())
  sigma_w = np.eye(D) if weight_prior == "identity" else np.linalg.inv(sigma)
  forms = _closed_forms(sigma, sigma_w, N, NOISE ** 2)
  token = _features(*_stats_from_tokens(tasks.sample_tasks(jax.random.key(20), task, BATCH)))
  gram = tasks.sample_gram(jax.random.key(21), task, BATCH)
  assert gram.gram.shape == (BATCH, D + 1, D + 1) and gram.n == N
  np.testing.assert_array_equal(_np(gram.query)[:, D], 0.0)
  bartlett = _features(*_stats_from_gram(gram))
  _check_against_closed_forms(token, forms, f"tokens/{weight_prior}")
  _check_against_closed_forms(bartlett, forms, f"bartlett/{weight_prior}")
  for name in forms:
    _assert_same_mean(token[name], bartlett[name], f"tokens vs bartlett/{weight_prior} {name}")


def test_sample_gram_variance_of_yty_matches():
  """Var(y^T y) of the two samplers agrees with each other and with the closed form
  n (n + 2) (2 t2 + (t1 + s^2)^2) - n^2 (t1 + s^2)^2 (t1 = tr Sigma, t2 = tr Sigma^2 for
  w ~ N(0, I)), within 4 SE: the variance is the mean of the per-task terms (v - mean v)^2 (the
  centring by the sample mean changes it by O(1/N), negligible against its SE)."""
  task = _task(weight_prior="identity")
  sigma = _np(_sigma())
  t1, t2 = np.trace(sigma), np.trace(sigma @ sigma)
  expected = N * (N + 2) * (2 * t2 + (t1 + NOISE ** 2) ** 2) - (N * (t1 + NOISE ** 2)) ** 2
  yty_tok = _stats_from_tokens(tasks.sample_tasks(jax.random.key(22), task, BATCH))[2]
  yty_bar = _stats_from_gram(tasks.sample_gram(jax.random.key(23), task, BATCH))[2]
  sq_tok = (yty_tok - yty_tok.mean()) ** 2
  sq_bar = (yty_bar - yty_bar.mean()) ** 2
  reference.assert_mean_within(sq_tok, expected, "tokens Var(y^T y)")
  reference.assert_mean_within(sq_bar, expected, "bartlett Var(y^T y)")
  _assert_same_mean(sq_tok, sq_bar, "tokens vs bartlett Var(y^T y)")


def test_sample_gram_falls_back_when_n_below_d():
  n = 2
  task = _task(n=n)
  assert not tasks.uses_bartlett(task)
  key = jax.random.key(25)
  gram = tasks.sample_gram(key, task, BATCH)
  # The fallback is exactly the statistics of the token sampler with the same key.
  token_gram = tasks.to_gram(tasks.sample_tasks(key, task, BATCH))
  np.testing.assert_array_equal(_np(gram.gram), _np(token_gram.gram))
  assert gram.n == n
  sigma = _np(_sigma())
  forms = _closed_forms(sigma, np.eye(D), n, NOISE ** 2, with_rss=False)
  feats = _features(*_stats_from_gram(gram), with_rss=False)
  _check_against_closed_forms(feats, forms, "n < d")
  # X^T X has rank n < d: its d - n smallest singular values vanish (to float32 rounding).
  sv = np.linalg.svd(_np(gram.gram)[:, :D, :D], compute_uv=False)
  assert np.all(sv[:, n:] <= 1e-5 * sv[:, :1])


@pytest.mark.parametrize("design", ["uniform", "sphere"])
def test_sample_gram_falls_back_for_non_gaussian_designs(design):
  task = _task(design=design)
  assert not tasks.uses_bartlett(task)
  key = jax.random.key(26)
  np.testing.assert_array_equal(_np(tasks.sample_gram(key, task, BATCH).gram),
                                _np(tasks.to_gram(tasks.sample_tasks(key, task, BATCH)).gram))


def test_sample_gram_with_n_equal_to_d():
  """n == d: Bartlett with chi^2 of 0 dof for the residual; the first and second moments hold."""
  task = _task(n=D)
  assert tasks.uses_bartlett(task)
  sigma = _np(_sigma())
  forms = _closed_forms(sigma, np.eye(D), D, NOISE ** 2, with_rss=False)
  feats = _features(*_stats_from_gram(tasks.sample_gram(jax.random.key(27), task, BATCH)),
                    with_rss=False)
  _check_against_closed_forms(feats, forms, "n == d")


def test_sample_gram_with_n_equal_to_d_has_no_residual(x64):
  """n == d: y lies in the span of the d columns of X, so rss = 0 (float64, exact up to
  rounding); n = d + 2: rss / s^2 is chi^2_2, positive. The draws are float64 under x64."""
  del x64
  gram = tasks.sample_gram(jax.random.key(28), _task(n=D), SMALL)
  assert all(a.dtype == np.float64 for a in _leaves(gram))
  xtx, xty, yty, *_ = _stats_from_gram(gram)
  rss = yty - np.einsum("bi,bi->b", xty, np.linalg.solve(xtx, xty[:, :, None])[:, :, 0])
  np.testing.assert_allclose(rss, 0.0, atol=1e-8 * np.max(yty))
  xtx, xty, yty, *_ = _stats_from_gram(
      tasks.sample_gram(jax.random.key(28), _task(n=D + 2), SMALL))
  rss = yty - np.einsum("bi,bi->b", xty, np.linalg.solve(xtx, xty[:, :, None])[:, :, 0])
  assert np.all(rss > 0)


def test_per_task_random_covariance():
  """random_cov_kappa: each task has its own Sigma (no Bartlett). With w ~ N(0, Sigma_task^-1)
  every task whitens: E y^T y = n (d + s^2) exactly as for Sigma = I. A Haar rotation gives
  E X^T X = n E[tr Sigma] / d I and E w w^T = E[tr Sigma^-1] / d I."""
  d, kappa = D, 20.0
  task = tasks.make_task(jnp.eye(d), N, noise_std=NOISE, weight_prior="inverse_covariance",
                         random_cov_kappa=kappa)
  assert not tasks.uses_bartlett(task)
  batch = tasks.sample_gram(jax.random.key(29), task, BATCH)
  gram, w = _np(batch.gram), _np(batch.w)
  reference.assert_mean_within(gram[:, d, d], N * (d + NOISE ** 2), "E y^T y (whitened)")
  mean_trace = 1.0 + 1.0 / kappa + (d - 2) * (1.0 - 1.0 / kappa) / math.log(kappa)
  mean_inv_trace = 1.0 + kappa + (d - 2) * (kappa - 1.0) / math.log(kappa)
  reference.assert_mean_within(gram[:, :d, :d], N * mean_trace / d * np.eye(d),
                               "E X^T X (random Sigma)")
  reference.assert_mean_within(np.einsum("bi,bj->bij", w, w), mean_inv_trace / d * np.eye(d),
                               "E w w^T")


# ----------------------------------------------------------------------------------------------
# Empirical covariance S = X^T X / n.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [N, 2])
def test_sample_empirical_covariance_wishart_moments(n):
  """E[S] = Sigma and E[S B S] = Sigma B Sigma + (Sigma B Sigma + tr(B Sigma) Sigma) / n for a
  symmetric B, within 4 SE; n = 8 uses Bartlett, n = 2 < d the token fallback."""
  task = _task(n=n)
  assert tasks.uses_bartlett(task) == (n >= D)
  sigma = _np(_sigma())
  s = _np(tasks.sample_empirical_covariance(jax.random.key(30), task, BATCH))
  assert s.shape == (BATCH, D, D)
  np.testing.assert_allclose(s, np.swapaxes(s, 1, 2), atol=1e-6)
  reference.assert_mean_within(s, sigma, f"n={n} E[S]")
  sbs = sigma @ SYM_B @ sigma
  expected = sbs + (sbs + np.trace(SYM_B @ sigma) * sigma) / n
  reference.assert_mean_within(np.einsum("bij,jk,bkl->bil", s, SYM_B, s), expected,
                               f"n={n} E[S B S]")
  # Same law as S computed from the token sampler's X.
  x = _np(tasks.sample_tasks(jax.random.key(31), task, BATCH).x)
  s_tok = np.einsum("bni,bnj->bij", x, x) / n
  _assert_same_mean(s, s_tok, f"n={n} S vs tokens")
  _assert_same_mean(np.einsum("bij,jk,bkl->bil", s, SYM_B, s),
                    np.einsum("bij,jk,bkl->bil", s_tok, SYM_B, s_tok), f"n={n} SBS vs tokens")


# ----------------------------------------------------------------------------------------------
# Determinism and dtypes.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["tasks", "gram", "empirical"])
def test_same_key_same_arrays_and_different_keys_differ(sampler):
  fn = {"tasks": tasks.sample_tasks, "gram": tasks.sample_gram,
        "empirical": tasks.sample_empirical_covariance}[sampler]
  task = _task()
  a = _leaves(fn(jax.random.key(40), task, BATCH))
  b = _leaves(fn(jax.random.key(40), task, BATCH))
  c = _leaves(fn(jax.random.key(41), task, BATCH))
  for u, v, other in zip(a, b, c):
    np.testing.assert_array_equal(u, v)
    random = u != 0                                # Skips the constant query label 0.
    assert random.mean() > 0.7
    assert np.mean(u[random] != other[random]) > 0.99   # Continuous draws: all differ.


def test_default_dtype_is_float32():
  task = _task()
  assert task.cov.dtype == jnp.float32 and task.noise_std.dtype == jnp.float32
  for tree in (tasks.sample_tasks(jax.random.key(0), task, BATCH),
               tasks.sample_gram(jax.random.key(0), task, BATCH),
               tasks.sample_empirical_covariance(jax.random.key(0), task, BATCH)):
    assert all(a.dtype == np.float32 for a in _leaves(tree))


def test_dtype_is_float64_under_x64(x64):
  """Under x64 every sampler returns float64. sample_gram and sample_empirical_covariance run
  (they share one compiled float64 gamma sampler with the test above); the token sampler and the
  prompt are traced with jax.eval_shape (same dtypes as a run, without compiling them again)."""
  del x64
  task = _task()
  assert task.cov.dtype == jnp.float64 and task.noise_std.dtype == jnp.float64
  key = jax.random.key(0)
  for tree in (tasks.sample_gram(key, task, SMALL),
               tasks.sample_empirical_covariance(key, task, SMALL),
               jax.eval_shape(lambda k: tasks.sample_tasks(k, task, SMALL), key),
               jax.eval_shape(lambda k: tasks.to_prompt(tasks.sample_tasks(k, task, SMALL)), key),
               jax.eval_shape(lambda k: tasks.to_gram(tasks.sample_tasks(k, task, SMALL)), key)):
    assert all(a.dtype == np.float64 for a in jax.tree.leaves(tree))


def test_as_float64_casts_only_sigma_and_the_noise(x64):
  del x64
  with jax.enable_x64(False):
    task = tasks.make_task(np.diag(SPECTRUM), N, noise_std=NOISE, weight_prior="inverse_covariance",
                           design="uniform")
  assert task.cov.dtype == jnp.float32
  task64 = tasks.as_float64(task)
  assert task64.cov.dtype == jnp.float64 and task64.noise_std.dtype == jnp.float64
  np.testing.assert_array_equal(task64.cov, np.asarray(task.cov, np.float64))
  assert float(task64.noise_std) == float(np.float32(NOISE))
  assert (task64.n, task64.weight_prior, task64.design, task64.random_cov_kappa) == (
      N, "inverse_covariance", "uniform", None)


def test_require_one_covariance_names_the_caller():
  tasks.require_one_covariance(_task(), "anything")
  with pytest.raises(ValueError, match=r"^task.random_cov_kappa must be None .* for the solver "
                                       r"\(one fixed Sigma\), got 4.0$"):
    tasks.require_one_covariance(tasks.make_task(np.eye(D), N, random_cov_kappa=4.0),
                                 "the solver")


def test_as_gram_converts_tasks_and_rejects_other_inputs():
  batch = tasks.sample_tasks(jax.random.key(3), _task(), 8)
  gram = tasks.as_gram(batch)
  np.testing.assert_array_equal(gram.gram, tasks.to_gram(batch).gram)
  assert tasks.as_gram(gram) is gram
  with pytest.raises(ValueError, match="^prompts must be a tasks.GramTasks or tasks.Tasks batch, "
                                       "got ndarray$"):
    tasks.as_gram(np.zeros((8, 4, 4)), "prompts")
