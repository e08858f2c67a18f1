"""Tests of looped_icl.losses against independent computations.

* The Rao-Blackwellised population loss given X is checked exactly (x64) against the conditional
  expectation computed in NumPy from the model's bilinear form: for fixed X the prediction is
  y_hat = x_q^T K_l y, with K_l read off by running the explicit data-space recursion (plain
  preconditioned GD or GD++) on basis labels y = e_j and basis queries x_q = e_i; then
  E[(y_hat - y_q)^2 | X]
    = tr(Sigma (K X - I) Sigma_w (K X - I)^T) + sigma^2 tr(Sigma K K^T) + sigma^2.
* The population loss averaged over S ~ law of X^T X / n agrees with brute-force Monte Carlo of the
  model on fresh tasks within 4 standard errors of the difference, for every layer.
* One layer has the closed form (derived in the docstring of ``_one_layer_closed_form``).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import constructions
from looped_icl import estimators
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks

D_COV = 3
N_CTX = 10
NUM_MC = 20000      # fresh tasks for brute-force Monte Carlo
NUM_S = 4000        # samples of S for the Rao-Blackwellised loss
NOISE_STD = 0.5
NUM_EXACT = 5       # samples of S checked exactly against the conditional expectation
EXTRA_LOOPS = 2     # looped models are also run this many loops past their trained number
FAMILY_KINDS = [("preconditioner", "layered"), ("preconditioner", "looped"), ("gdpp", "layered"),
                ("gdpp", "looped"), ("fixed", "looped")]

_sample_tasks = jax.jit(tasks.sample_tasks, static_argnums=2)  # one compile, not many eager ops
_sample_s = jax.jit(tasks.sample_empirical_covariance, static_argnums=2)


def _rotated_cov(seed: int = 0) -> np.ndarray:
  u, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D_COV, D_COV)))
  cov = (u * np.array([1.0, 0.5, 0.25])) @ u.T
  return (cov + cov.T) / 2


COV = _rotated_cov()


@pytest.fixture
def f32_matmul():
  """Float32 comparisons at ~1e-5 need true float32 matmuls (accelerators default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield


def _weight_cov(prior: str) -> np.ndarray:
  return np.eye(D_COV) if prior == "identity" else np.linalg.inv(COV)


def _model(family: str, kind: str, num_layers: int, seed: int):
  """A model of the family with moderate, non-symmetric weights (sensible, not optimal, GD)."""
  rng = np.random.default_rng(seed)
  lead = (num_layers,) if kind == "layered" else ()

  def noise():
    return 0.1 * rng.standard_normal(lead + (D_COV, D_COV))

  inv_cov = np.linalg.inv(COV)
  a = inv_cov / np.linalg.norm(inv_cov, 2) + noise()  # ~ Sigma^-1 scaled to unit norm
  eta = 0.8 if kind == "looped" else 1.0
  if family == "preconditioner":
    cfg = models.ModelConfig(d=D_COV, num_layers=num_layers, kind=kind, eta=eta)
    return cfg, {"a": jnp.asarray(a)}
  if family == "gdpp":
    b = 0.3 * np.eye(D_COV) + noise()
    cfg = models.ModelConfig(d=D_COV, num_layers=num_layers, kind=kind, parametrization="gdpp",
                             eta=eta)
    return cfg, {"a": jnp.asarray(a), "b": jnp.asarray(b)}
  etas = rng.uniform(0.3, 0.8, num_layers)
  return constructions.chen_fixed(D_COV, num_layers, etas, per_loop_eta=True)


def _model_weights_np(cfg, params):
  """Per-layer (A_l, B_l or None, eta_l) as NumPy, read directly off the params."""
  num = cfg.num_layers
  if cfg.parametrization == "fixed":
    etas = np.broadcast_to(np.asarray(params["eta"], np.float64), (num,))
    return [np.eye(cfg.d)] * num, None, list(etas)
  a = np.asarray(params["a"], np.float64)
  b = np.asarray(params["b"], np.float64) if "b" in params else None
  eta = cfg.eta if cfg.kind == "looped" else 1.0
  if cfg.kind == "looped":
    return [a] * num, None if b is None else [b] * num, [eta] * num
  return list(a), None if b is None else list(b), [eta] * num


def _predict_np(x, y, x_query, a_list, b_list, etas) -> np.ndarray:
  """Data-space recursion of one task (GD++ if b_list, else B = 0, i.e. preconditioned GD).

  Covariates x <- (I - eta B S_l A) x (query included), labels r_j <- r_j - eta x_j^T A^T
  X_l^T r / n, r_q starts at 0; returns -r_q after every layer.
  """
  n, d = x.shape
  xs = np.vstack([x, x_query[None, :]])
  r = np.append(y, 0.0)
  preds = []
  for l, (a, eta) in enumerate(zip(a_list, etas)):
    keys = xs[:n]
    r = r - eta * xs @ a.T @ keys.T @ r[:n] / n
    if b_list is not None:
      xs = xs @ (np.eye(d) - eta * b_list[l] @ (keys.T @ keys / n) @ a).T
    preds.append(-r[n])
  return np.array(preds)


def _conditional_loss_np(x, a_list, b_list, etas, weight_cov, noise_var) -> np.ndarray:
  """E[(y_hat - y_q)^2 | X] for every layer, from the bilinear form y_hat = x_q^T K y."""
  n, d = x.shape
  num_layers = len(a_list)
  k = np.zeros((num_layers, d, n))
  for i in range(d):
    for j in range(n):
      k[:, i, j] = _predict_np(x, np.eye(n)[j], np.eye(d)[i], a_list, b_list, etas)
  out = np.zeros(num_layers)
  for l in range(num_layers):
    m = k[l] @ x - np.eye(d)
    out[l] = (np.trace(COV @ m @ weight_cov @ m.T) + noise_var * np.trace(COV @ k[l] @ k[l].T)
              + noise_var)
  return out


@functools.lru_cache(maxsize=None)
def _fresh_tasks(prior: str, noise_std: float, dtype):
  """A cached batch of NUM_MC fresh tasks (one compile of the sampler per prior)."""
  task = tasks.make_task(COV, N_CTX, noise_std=noise_std, weight_prior=prior)
  assert task.cov.dtype == dtype
  key = jax.random.key(1000 + 10 * tasks.WEIGHT_PRIORS.index(prior) + int(noise_std > 0))
  return task, _sample_tasks(key, task, NUM_MC)


@functools.lru_cache(maxsize=None)
def _s_samples(dtype) -> jax.Array:
  """A cached draw of NUM_S samples of S = X^T X / n (its law depends only on Sigma and n)."""
  s = _sample_s(jax.random.key(2000), tasks.make_task(COV, N_CTX), NUM_S)
  assert s.dtype == dtype
  return s


@functools.partial(jax.jit, static_argnames=("cfg",))
def _all_losses(params, cfg, task, batch, s):
  """Per-task squared errors, mc_loss, the Rao-Blackwellised samples and their mean."""
  preds = models.predict(params, cfg, batch, all_layers=True)
  out = {"sq_err": (preds - batch.y_query[:, None]) ** 2,
         "mc": losses.mc_loss(params, cfg, batch, all_layers=True),
         "pop_samples": losses.population_loss_samples(params, cfg, task, s),
         "pop": losses.population_loss(params, cfg, task, s, all_layers=True)}
  if cfg.kind == "looped":
    out["pop_longer"] = losses.population_loss_samples(
        params, cfg, task, s[:NUM_EXACT], num_loops=cfg.num_layers + EXTRA_LOOPS)
  return out


def _run(family, kind, prior, noise_std, num_layers=3, seed=3):
  cfg, params = _model(family, kind, num_layers, seed=seed)
  task, batch = _fresh_tasks(prior, noise_std, jnp.float64)
  s = _s_samples(jnp.float64)
  return cfg, params, s, jax.tree.map(np.asarray, _all_losses(params, cfg, task, batch, s))


def _design_from_s(s: np.ndarray) -> np.ndarray:
  """An n x d X with X^T X / n = S (the models see X only through X^T X and X^T y)."""
  x = np.zeros((N_CTX, D_COV))
  x[:D_COV] = np.sqrt(N_CTX) * np.linalg.cholesky(s).T
  return x


@pytest.mark.parametrize("noise_std", [0.0, NOISE_STD])
@pytest.mark.parametrize("prior", tasks.WEIGHT_PRIORS)
@pytest.mark.parametrize("family,kind", FAMILY_KINDS)
def test_population_samples_equal_conditional_expectation(x64, family, kind, prior, noise_std):
  cfg, params, s, out = _run(family, kind, prior, noise_std)
  weights = _model_weights_np(cfg, params)
  s = np.asarray(s[:NUM_EXACT], np.float64)
  want = np.stack([_conditional_loss_np(_design_from_s(si), *weights, _weight_cov(prior),
                                        noise_std**2) for si in s])
  assert out["pop_samples"].shape == (NUM_S, 3)
  np.testing.assert_allclose(out["pop_samples"][:NUM_EXACT], want, rtol=1e-10)
  np.testing.assert_allclose(out["pop"], out["pop_samples"].mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(out["mc"], out["sq_err"].mean(axis=0), rtol=1e-12)
  if kind == "looped":  # extrapolated loops follow the same recursion with the last weights
    a_list, b_list, etas = weights
    extra = EXTRA_LOOPS
    longer = (a_list + a_list[-1:] * extra,
              None if b_list is None else b_list + b_list[-1:] * extra, etas + etas[-1:] * extra)
    want = np.stack([_conditional_loss_np(_design_from_s(si), *longer, _weight_cov(prior),
                                          noise_std**2) for si in s])
    np.testing.assert_allclose(out["pop_longer"], want, rtol=1e-10)


def _mean_se(samples):
  samples = np.asarray(samples, np.float64)
  return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])


@pytest.mark.parametrize("noise_std", [0.0, NOISE_STD])
@pytest.mark.parametrize("prior", tasks.WEIGHT_PRIORS)
@pytest.mark.parametrize("family,kind", FAMILY_KINDS)
def test_population_loss_matches_monte_carlo(x64, family, kind, prior, noise_std):
  _, _, _, out = _run(family, kind, prior, noise_std)
  mc_mean, mc_se = _mean_se(out["sq_err"])
  pop_mean, pop_se = _mean_se(out["pop_samples"])
  se = np.sqrt(mc_se**2 + pop_se**2)
  assert mc_mean.shape == (3,)
  assert np.all(se < 0.03 * pop_mean), (se, pop_mean)  # the comparison has power
  assert np.all(np.abs(mc_mean - pop_mean) <= 4 * se), (mc_mean, pop_mean, se)
  # The models genuinely learn: the loss falls from layer 1 to layer 3 by far more than the
  # Monte Carlo error, so a layer mix-up would fail the comparison above.
  assert pop_mean[-1] < pop_mean[0] - 8 * se[0]


def _one_layer_closed_form(a, weight_cov, noise_var) -> float:
  """Population loss of w_1 = A^T X^T y / n, with S = X^T X / n, e = (A^T S - I) w* + A^T xi.

  f = E tr(Sigma (I - A^T S) Sigma_w (I - S A)) + sigma^2/n E tr(Sigma A^T S A) + sigma^2
    = tr(Sigma_w Sigma) - 2 tr(Sigma A^T Sigma Sigma_w) + tr(Sigma A^T E[S Sigma_w S] A)
      + sigma^2/n tr(Sigma A^T Sigma A) + sigma^2,
  and for Gaussian x (Isserlis) E[S B S] = Sigma B Sigma + (Sigma B Sigma + tr(B Sigma) Sigma)/n
  for symmetric B.
  """
  n = N_CTX
  esbs = COV @ weight_cov @ COV + (COV @ weight_cov @ COV + np.trace(weight_cov @ COV) * COV) / n
  return float(np.trace(weight_cov @ COV) - 2 * np.trace(COV @ a.T @ COV @ weight_cov)
               + np.trace(COV @ a.T @ esbs @ a) + noise_var / n * np.trace(COV @ a.T @ COV @ a)
               + noise_var)


@pytest.mark.parametrize("prior", tasks.WEIGHT_PRIORS)
def test_one_layer_closed_form(x64, prior):
  rng = np.random.default_rng(4)
  a = (0.8 * np.linalg.inv(COV) / np.linalg.norm(np.linalg.inv(COV), 2)
       + 0.2 * rng.standard_normal((D_COV, D_COV)))
  weight_cov = _weight_cov(prior)
  # E[S B S] itself, by NumPy Monte Carlo of S = X^T X / n (checks the Isserlis algebra).
  xs = rng.standard_normal((20000, N_CTX, D_COV)) @ np.linalg.cholesky(COV).T
  s_np = np.einsum("sni,snj->sij", xs, xs) / N_CTX
  sws = COV @ weight_cov @ COV
  esbs = sws + (sws + np.trace(weight_cov @ COV) * COV) / N_CTX
  mean, se = _mean_se(s_np @ weight_cov @ s_np)
  assert np.all(np.abs(mean - esbs) <= 4 * se)
  # A looped model with eta = 0.8 takes the step 0.8 A.
  cfg = models.ModelConfig(d=D_COV, num_layers=1, kind="looped", eta=0.8)
  params = {"a": jnp.asarray(a)}
  for noise_std in (0.0, NOISE_STD):
    want = _one_layer_closed_form(0.8 * a, weight_cov, noise_std**2)
    task, batch = _fresh_tasks(prior, noise_std, jnp.float64)
    out = _all_losses(params, cfg, task, batch, _s_samples(jnp.float64))
    for samples in (out["sq_err"], out["pop_samples"]):
      mean, se = _mean_se(samples)
      assert se[0] < 0.03 * want
      assert abs(mean[0] - want) <= 4 * se[0], (mean, want, se)


def _np_tasks(seed: int, num: int, weight_cov: np.ndarray, noise_std: float):
  """Token-level tasks drawn in NumPy, so cheap tests need no compiled sampler."""
  rng = np.random.default_rng(seed)
  chol = np.linalg.cholesky(COV)
  x_all = rng.standard_normal((num, N_CTX + 1, D_COV)) @ chol.T
  w = rng.standard_normal((num, D_COV)) @ np.linalg.cholesky(weight_cov).T
  y_all = np.einsum("bni,bi->bn", x_all, w) + noise_std * rng.standard_normal((num, N_CTX + 1))
  return x_all[:, :N_CTX], y_all[:, :N_CTX], x_all[:, N_CTX], y_all[:, N_CTX], w


class LossVariantsTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(jax.default_matmul_precision("highest"))  # no TF32 on accelerators

  @chex.variants(with_jit=True, without_jit=True)
  def test_losses_variants(self):
    cfg, params = _model("gdpp", "layered", 2, seed=5)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    weights = _model_weights_np(cfg, params)
    prior = "inverse_covariance"
    task = tasks.make_task(COV, N_CTX, noise_std=NOISE_STD, weight_prior=prior)
    x, y, xq, yq, w = _np_tasks(6, 64, _weight_cov(prior), NOISE_STD)

    s = np.einsum("sni,snj->sij", x[:4], x[:4]) / N_CTX
    pop = self.variant(lambda p, t, s_: losses.population_loss(p, cfg, t, s_, all_layers=True))
    want = np.mean([_conditional_loss_np(xi, *weights, _weight_cov(prior), NOISE_STD**2)
                    for xi in x[:4]], axis=0)
    np.testing.assert_allclose(np.asarray(pop(params, task, jnp.asarray(s, jnp.float32))), want,
                               rtol=1e-4)

    batch = tasks.Tasks(*(jnp.asarray(v, jnp.float32) for v in (x, y, xq, yq, w)))
    mc = self.variant(lambda p, b: losses.mc_loss(p, cfg, b, all_layers=True))
    preds = np.stack([_predict_np(x[t], y[t], xq[t], *weights) for t in range(64)])
    np.testing.assert_allclose(np.asarray(mc(params, batch)),
                               np.mean((preds - yq[:, None]) ** 2, axis=0), rtol=1e-4)


def test_jitted_population_loss_does_not_retrace(f32_matmul):
  traces = []
  cfg, _ = _model("preconditioner", "layered", 2, seed=8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(params, task, s):
    traces.append(1)
    return losses.population_loss(params, cfg, task, s)

  values = []
  for i, noise_std in enumerate((0.1, 0.7)):  # new values, same shapes: no retrace
    _, params = _model("preconditioner", "layered", 2, seed=8 + i)
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    task = tasks.make_task(COV, N_CTX, noise_std=noise_std)
    x = _np_tasks(9 + i, 3, np.eye(D_COV), noise_std)[0]
    s = jnp.asarray(np.einsum("sni,snj->sij", x, x) / N_CTX, jnp.float32)
    values.append(float(loss(params, task, s)))
    want = np.mean([_conditional_loss_np(xi, *_model_weights_np(cfg, params), np.eye(D_COV),
                                         noise_std**2)[-1] for xi in x])
    np.testing.assert_allclose(values[-1], want, rtol=1e-5)
  assert len(traces) == 1
  assert abs(values[0] - values[1]) > 1e-2


@pytest.mark.parametrize("family,kind", [("preconditioner", "layered"), ("gdpp", "looped")])
def test_population_gradient_matches_finite_differences(x64, family, kind):
  cfg, params = _model(family, kind, 3, seed=11)
  task = tasks.make_task(COV, N_CTX, noise_std=NOISE_STD, weight_prior="inverse_covariance")
  s = _s_samples(jnp.float64)[:64]

  @jax.jit
  def loss_and_grad(a):
    return jax.value_and_grad(
        lambda a_: losses.population_loss({**params, "a": a_}, cfg, task, s))(a)

  a0 = np.asarray(params["a"])
  grad = np.asarray(loss_and_grad(a0)[1])
  assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 1e-3
  h = 1e-5
  fd = np.zeros(a0.shape)
  for idx in np.ndindex(*a0.shape):
    e = np.zeros(a0.shape)
    e[idx] = h
    fd[idx] = (float(loss_and_grad(a0 + e)[0]) - float(loss_and_grad(a0 - e)[0])) / (2 * h)
  # Central differences: truncation O(h^2) ~ 1e-10, rounding ~ 1e-16 / h ~ 1e-11.
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8 * np.max(np.abs(fd)))


@pytest.mark.parametrize("family", ["preconditioner", "gdpp", "full", "fixed"])
def test_mc_loss_gradient_finite_and_matches_directional_fd(x64, family):
  kind = "looped" if family == "fixed" else "layered"
  if family == "full":
    rng = np.random.default_rng(13)
    cfg = models.ModelConfig(d=D_COV, num_layers=3, kind=kind, parametrization="full")
    params = {k: jnp.asarray(0.1 * rng.standard_normal((3, D_COV + 1, D_COV + 1)))
              for k in ("p", "q")}
  else:
    cfg, params = _model(family, kind, 3, seed=13)
  _, batch = _fresh_tasks("identity", NOISE_STD, jnp.float64)
  batch = jax.tree.map(lambda v: v[:256], batch)

  @jax.jit
  def loss_and_grad(p):
    return jax.value_and_grad(lambda p_: losses.mc_loss(p_, cfg, batch))(p)

  leaves = jax.tree.leaves(loss_and_grad(params)[1])
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  rng = np.random.default_rng(15)
  direction = jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape)), params)
  h = 1e-6
  plus = float(loss_and_grad(jax.tree.map(lambda p, v: p + h * v, params, direction))[0])
  minus = float(loss_and_grad(jax.tree.map(lambda p, v: p - h * v, params, direction))[0])
  fd = (plus - minus) / (2 * h)
  analytic = sum(float(jnp.sum(g * v)) for g, v in zip(leaves, jax.tree.leaves(direction)))
  assert abs(fd) > 1e-3
  np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_population_loss_input_errors():
  cfg = models.ModelConfig(d=D_COV, num_layers=2, parametrization="full")
  params = models.init_params(jax.random.key(0), cfg)
  task = tasks.make_task(COV, N_CTX)
  s = jnp.broadcast_to(jnp.asarray(COV, jnp.float32), (2, D_COV, D_COV))
  with pytest.raises(ValueError, match="parametrization must be one of"):
    losses.population_loss(params, cfg, task, s)
  cfg, params = _model("preconditioner", "looped", 2, seed=0)
  with pytest.raises(ValueError, match="random_cov_kappa must be None"):
    losses.population_loss(params, cfg, tasks.make_task(COV, N_CTX, random_cov_kappa=4.0), s)
  with pytest.raises(AssertionError):
    losses.population_loss(params, cfg, task, s[:, :2, :2])


def test_per_loop_steps_enter_symmetrically(x64):
  """With A = I the loop factors (I - eta_t S) commute: the population loss is invariant under
  permutations of (eta_1, ..., eta_T), and equal steps get equal gradients (models.init_params
  spreads them for that reason)."""
  del x64
  cfg, _ = constructions.chen_fixed(3, 4, np.full(4, 0.2), per_loop_eta=True)
  task = tasks.make_task(np.diag([1.0, 0.5, 0.25]), 8, noise_std=0.3)
  s = tasks.sample_empirical_covariance(jax.random.key(0), task, 500)
  etas = jnp.asarray([0.1, 0.25, 0.4, 0.15])
  base = losses.population_loss({"eta": etas}, cfg, task, s)
  for perm in ([3, 2, 1, 0], [1, 0, 3, 2]):
    np.testing.assert_allclose(losses.population_loss({"eta": etas[jnp.asarray(perm)]}, cfg,
                                                      task, s), base, rtol=1e-12)
  # Compiled: op by op, the reverse pass compiled one program per op (14 s of this test).
  grad = jax.jit(jax.grad(lambda e: losses.population_loss({"eta": e}, cfg, task, s)))(
      jnp.full(4, 0.2))
  np.testing.assert_allclose(grad, grad[0], rtol=1e-12)


@pytest.mark.parametrize("family", ["preconditioner", "gdpp"])
def test_last_layer_loss_samples_is_the_last_column(x64, family):
  cfg, params = _model(family, "looped", 2, seed=4)
  task = tasks.make_task(COV, N_CTX, noise_std=NOISE_STD)
  s = _sample_s(jax.random.key(5), task, 64)
  want = np.asarray(losses.population_loss_samples(params, cfg, task, s, num_loops=3))[:, -1]
  got = losses.last_layer_loss_samples(params, cfg, task, s, num_loops=3)
  assert got.shape == (64,)
  np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("family", ["preconditioner", "gdpp"])
def test_blocked_samples_equal_one_pass(x64, family, monkeypatch):
  """Above ``losses.BLOCK`` samples the loss runs block by block (the last block padded): every
  sample's value and the gradient of the mean equal the one-pass computation (float64 rounding:
  only the order of the sums over samples changes)."""
  cfg, params = _model(family, "layered", 3, seed=6)
  task = tasks.make_task(COV, N_CTX, noise_std=NOISE_STD)
  s = _sample_s(jax.random.key(7), task, 150)

  def value_and_grad(block):
    monkeypatch.setattr(losses, "BLOCK", block)   # read when traced: a fresh jit per block size
    per_sample = lambda p: losses.population_loss_samples(p, cfg, task, s)
    return (jax.jit(jax.value_and_grad(lambda p: jnp.mean(per_sample(p))))(params),
            jax.jit(per_sample)(params))

  (value, grads), per_sample = value_and_grad(10**6)        # one pass
  (b_value, b_grads), b_per_sample = value_and_grad(64)     # 3 blocks, 42 padded samples
  assert per_sample.shape == b_per_sample.shape == (150, 3)
  np.testing.assert_allclose(b_per_sample, per_sample, rtol=1e-13)
  np.testing.assert_allclose(b_value, value, rtol=1e-13)
  for name in grads:
    np.testing.assert_allclose(b_grads[name], grads[name], rtol=1e-11, atol=1e-15)


def test_gradient_estimate_is_the_gradient_of_the_estimate_with_stratified_errors(x64):
  """losses.gradient_estimate of per_sample_gradients: its mean is the gradient of the weighted
  mean loss (jax.grad of the estimate, another code path), and its standard errors are the
  stratified ones of the per-sample gradients (here from jacrev of the per-sample loss vector,
  in NumPy)."""
  cfg, params = _model("preconditioner", "layered", 2, seed=5)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
  task = tasks.make_task(COV, N_CTX)
  samples = estimators.sample(jax.random.key(7), task, 300, estimators.default_proposal(task))
  est = losses.gradient_estimate(losses.per_sample_gradients(params, cfg, task, samples.s),
                                 samples)
  weight = jnp.asarray(samples.weight)

  def weighted_per_sample(p):
    return weight * losses.population_loss_samples(p, cfg, task, samples.s)[:, -1]

  # Jitted: one program each instead of an XLA compile per op of the custom reverse mode.
  expected = jax.jit(jax.grad(lambda p: jnp.mean(weighted_per_sample(p))))(params)
  np.testing.assert_allclose(est["mean"]["a"], expected["a"], rtol=1e-9, atol=1e-12)
  jac = np.asarray(jax.jit(jax.jacrev(weighted_per_sample))(params)["a"]).reshape(300, -1)
  component = np.asarray(samples.component)
  var = sum((np.sum(component == j) / 300) ** 2 * jac[component == j].var(axis=0, ddof=1)
            / np.sum(component == j) for j in np.unique(component))
  np.testing.assert_allclose(est["stderr"]["a"].ravel(), np.sqrt(var), rtol=1e-9)
  z = np.abs(np.asarray(expected["a"]).ravel()) / np.sqrt(var)
  assert est["max_abs_z"] == pytest.approx(z.max(), rel=1e-9)
  assert est["norm"] == pytest.approx(np.linalg.norm(np.asarray(expected["a"])), rel=1e-9)
