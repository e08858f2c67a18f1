"""In-context linear-regression tasks and their samplers (SPEC sections 1-3).

Two samplers draw the same distribution:

* :func:`sample_tasks` draws covariates X (n x d), labels y, the query (x_q, y_q) and w*;
  :func:`to_prompt` packs them into the prompt Z_0 in R^{(d+1) x (n+1)}.
* :func:`sample_gram` draws only the sufficient statistic G_0 = Z_0 M Z_0^T and the query column,
  exactly, without X: X^T X ~ Wishart via the Bartlett decomposition, X^T eps | X ~ N(0, s^2 X^T X)
  and eps^T (I - P_X) eps ~ s^2 chi^2_{n-d}. Its cost does not depend on n. It falls back to
  drawing X for non-Gaussian designs, per-task random covariances, or n < d.

Batches are drawn with batched random calls (one draw of shape (B, ...)), not a vmap over keys.
The samplers are jitted (batch size static), so they cost one compile per shape, not op-by-op
dispatch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from looped_icl import bartlett
from looped_icl import covariance as cov_lib
from looped_icl import linalg
from looped_icl import validation

WEIGHT_PRIORS = ("identity", "inverse_covariance")
DESIGNS = ("gaussian", "uniform", "student_t", "sphere", "gamma")
STUDENT_T_DOF = 5.0
GAMMA_SHAPE = 2.0


@struct.dataclass
class TaskDistribution:
  """The law of one in-context regression task.

  Attributes:
    cov: Sigma, (d, d).
    noise_std: label-noise standard deviation sigma >= 0 (a traced leaf: sweeps may vmap it).
    n: number of in-context examples.
    weight_prior: ``identity`` (w* ~ N(0, I)) or ``inverse_covariance`` (w* ~ N(0, Sigma^-1)).
    design: covariate law with covariance Sigma: x = L z with L the Cholesky factor of Sigma and
      z i.i.d. vectors of mean 0 and identity covariance: ``gaussian``, ``uniform`` (independent
      U(-sqrt 3, sqrt 3) coordinates), ``student_t`` (independent, 5 dof, rescaled), ``sphere``
      (z uniform on the sphere of radius sqrt(d)), ``gamma`` (Gaussian scale mixture
      z = g sqrt(s), s ~ Gamma(2) / 2).
    random_cov_kappa: if set, every task draws its own Sigma = :func:`random_covariance` with this
      condition number (``cov`` is then only the evaluation default).
  """
  cov: jax.Array
  noise_std: jax.Array
  n: int = struct.field(pytree_node=False)
  weight_prior: str = struct.field(pytree_node=False, default="identity")
  design: str = struct.field(pytree_node=False, default="gaussian")
  random_cov_kappa: float | None = struct.field(pytree_node=False, default=None)

  @property
  def d(self) -> int:
    return self.cov.shape[-1]

  @property
  def weight_cov(self) -> jax.Array:
    """Covariance of w*: I or Sigma^-1."""
    if self.weight_prior == "identity":
      return jnp.eye(self.d, dtype=self.cov.dtype)
    return jnp.linalg.inv(self.cov)


def make_task(cov, n: int, *, noise_std: float = 0.0, weight_prior: str = "identity",
              design: str = "gaussian", random_cov_kappa: float | None = None
              ) -> TaskDistribution:
  """Validates and builds a :class:`TaskDistribution`."""
  n = validation.positive_int("n", n)
  validation.covariance("cov", cov)
  validation.nonnegative("noise_std", noise_std)
  validation.choice("weight_prior", weight_prior, WEIGHT_PRIORS)
  validation.choice("design", design, DESIGNS)
  if random_cov_kappa is not None:
    random_cov_kappa = validation.in_range("random_cov_kappa", random_cov_kappa, 1.0, np.inf,
                                           high_open=True)
  dtype = linalg.float_dtype()
  return TaskDistribution(cov=jnp.asarray(cov, dtype), noise_std=jnp.asarray(noise_std, dtype),
                          n=n, weight_prior=weight_prior, design=design,
                          random_cov_kappa=random_cov_kappa)


def as_float64(task: TaskDistribution) -> TaskDistribution:
  """``task`` with Sigma and the noise level in float64 (call under ``jax.enable_x64``)."""
  return dataclasses.replace(task, cov=jnp.asarray(np.asarray(task.cov), jnp.float64),
                             noise_std=jnp.asarray(np.asarray(task.noise_std), jnp.float64))


def require_one_covariance(task: TaskDistribution, what: str) -> None:
  """Raises ValueError if ``task`` draws a Sigma per task (``random_cov_kappa`` set): ``what``
  (e.g. "the population loss") needs one fixed Sigma."""
  if task.random_cov_kappa is not None:
    raise ValueError(f"task.random_cov_kappa must be None (0 in a config) for {what} (one fixed "
                     f"Sigma), got {task.random_cov_kappa!r}")


@struct.dataclass
class Tasks:
  """A batch of B token-level tasks.

  x: (B, n, d); y: (B, n); x_query: (B, d); y_query: (B,); w: (B, d).
  """
  x: jax.Array
  y: jax.Array
  x_query: jax.Array
  y_query: jax.Array
  w: jax.Array


@struct.dataclass
class GramTasks:
  """A batch of B tasks as sufficient statistics.

  gram: G_0 = Z_0 M Z_0^T = [[X^T X, X^T y], [y^T X, y^T y]], (B, d+1, d+1).
  query: the query column of Z_0, [x_q; 0], (B, d+1).
  y_query: (B,); w: (B, d); n: the number of examples (static).
  """
  gram: jax.Array
  query: jax.Array
  y_query: jax.Array
  w: jax.Array
  n: int = struct.field(pytree_node=False)


def _standard_design(key: jax.Array, design: str, shape: tuple[int, ...], dtype) -> jax.Array:
  """Draws i.i.d. vectors (last axis) with mean 0 and identity covariance."""
  if design == "gaussian":
    return jax.random.normal(key, shape, dtype)
  if design == "uniform":
    return jax.random.uniform(key, shape, dtype, minval=-np.sqrt(3.0), maxval=np.sqrt(3.0))
  if design == "student_t":
    scale = np.sqrt((STUDENT_T_DOF - 2.0) / STUDENT_T_DOF)
    return scale * jax.random.t(key, STUDENT_T_DOF, shape, dtype)
  if design == "sphere":
    g = jax.random.normal(key, shape, dtype)
    return g * (np.sqrt(shape[-1]) / jnp.linalg.norm(g, axis=-1, keepdims=True))
  if design == "gamma":
    k_g, k_s = jax.random.split(key)
    g = jax.random.normal(k_g, shape, dtype)
    s = jax.random.gamma(k_s, GAMMA_SHAPE, shape[:-1] + (1,), dtype) / GAMMA_SHAPE
    return g * jnp.sqrt(s)
  raise ValueError(f"design must be one of {sorted(DESIGNS)}, got {design!r}")


def _factors(key: jax.Array, task: TaskDistribution, batch_size: int):
  """Cholesky factor L of Sigma and the factor F with w = F g, g ~ N(0, I).

  (d, d) each for one fixed Sigma, (B, d, d) with per-task random covariances; the products in
  :mod:`looped_icl.linalg` broadcast either against the batch.
  """
  d = task.d
  if task.random_cov_kappa is None:
    covs = task.cov
  else:
    keys = jax.random.split(key, batch_size)
    covs = jax.vmap(lambda k: cov_lib.random_covariance(k, d, task.random_cov_kappa))(keys)
  chol = jnp.linalg.cholesky(covs)
  if task.weight_prior == "identity":
    w_factor = jnp.broadcast_to(jnp.eye(d, dtype=covs.dtype), covs.shape)
  else:  # w = L^{-T} g has covariance (L L^T)^{-1} = Sigma^{-1}.
    eye = jnp.broadcast_to(jnp.eye(d, dtype=covs.dtype), covs.shape)
    w_factor = jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), -1, -2)
  return chol, w_factor


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_tasks(key: jax.Array, task: TaskDistribution, batch_size: int) -> Tasks:
  """Draws ``batch_size`` token-level tasks."""
  batch_size = validation.positive_int("batch_size", batch_size)
  d, n = task.d, task.n
  dtype = task.cov.dtype
  k_cov, k_x, k_w, k_eps = jax.random.split(key, 4)
  chol, w_factor = _factors(k_cov, task, batch_size)
  z_all = _standard_design(k_x, task.design, (batch_size, n + 1, d), dtype)
  chol_b = chol if chol.ndim == 3 else chol[None]
  x_all = linalg.mm(z_all, linalg.t(chol_b))                                  # rows L z
  w = linalg.mv(w_factor, jax.random.normal(k_w, (batch_size, d), dtype))
  eps = task.noise_std * jax.random.normal(k_eps, (batch_size, n + 1), dtype)
  y_all = linalg.vdot(x_all, w[:, None, :]) + eps
  return Tasks(x=x_all[:, :n], y=y_all[:, :n], x_query=x_all[:, n], y_query=y_all[:, n], w=w)


def _check_tasks(tasks: Tasks) -> tuple[int, int, int]:
  """(B, n, d) of a token-level batch; raises ValueError if its arrays disagree."""
  validation.shape("tasks.x", tasks.x, (None, None, None))
  b, n, d = tasks.x.shape
  validation.shape("tasks.y", tasks.y, (b, n))
  validation.shape("tasks.x_query", tasks.x_query, (b, d))
  validation.shape("tasks.y_query", tasks.y_query, (b,))
  return b, n, d


def to_prompt(tasks: Tasks) -> jax.Array:
  """Z_0 = [[x_1 .. x_n x_q], [y_1 .. y_n 0]], shape (B, d+1, n+1)."""
  b, n, d = _check_tasks(tasks)
  x_cols = jnp.concatenate([tasks.x, tasks.x_query[:, None, :]], axis=1)          # (B, n+1, d)
  y_row = jnp.concatenate([tasks.y, jnp.zeros_like(tasks.y_query)[:, None]], axis=1)
  return jnp.concatenate([jnp.swapaxes(x_cols, 1, 2), y_row[:, None, :]], axis=1)


def to_gram(tasks: Tasks) -> GramTasks:
  """The sufficient statistics of token-level tasks (exact, no sampling)."""
  b, n, _ = _check_tasks(tasks)
  xy_BxNxD = jnp.concatenate([tasks.x, tasks.y[:, :, None]], axis=2)
  gram = jnp.einsum("bni,bnj->bij", xy_BxNxD, xy_BxNxD)
  query = jnp.concatenate([tasks.x_query, jnp.zeros((b, 1), tasks.x.dtype)], axis=1)
  return GramTasks(gram=gram, query=query, y_query=tasks.y_query, w=tasks.w, n=n)


def as_gram(batch, name: str = "batch") -> GramTasks:
  """``batch`` as :class:`GramTasks`: returned as is, or converted exactly from :class:`Tasks`."""
  if isinstance(batch, Tasks):
    return to_gram(batch)
  if not isinstance(batch, GramTasks):
    raise ValueError(f"{name} must be a tasks.GramTasks or tasks.Tasks batch, got "
                     f"{type(batch).__name__}")
  return batch


def uses_bartlett(task: TaskDistribution) -> bool:
  """Whether :func:`sample_gram` can skip drawing X for this task distribution."""
  return task.design == "gaussian" and task.random_cov_kappa is None and task.n >= task.d


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_gram(key: jax.Array, task: TaskDistribution, batch_size: int) -> GramTasks:
  """Draws ``batch_size`` tasks as exact sufficient statistics.

  Same law as ``to_gram(sample_tasks(...))``; Bartlett (cost independent of n) when
  :func:`uses_bartlett`, otherwise exactly that fallback.
  """
  batch_size = validation.positive_int("batch_size", batch_size)
  if not uses_bartlett(task):
    return to_gram(sample_tasks(key, task, batch_size))
  d, n = task.d, task.n
  dtype = task.cov.dtype
  sigma = task.noise_std
  k_cov, k_chi, k_normal = jax.random.split(key, 3)
  chol, w_factor = _factors(k_cov, task, batch_size)
  chi2_BxK = bartlett.chi_square_columns(k_chi, n, d, batch_size, dtype)
  # Every normal in one draw (each random call is a separate loop on CPU), batch-last:
  # rows = d(d-1)/2 below the Bartlett diagonal, then u, g_w, g_q (d each) and the query noise.
  num_below = d * (d - 1) // 2
  z_ZxB = jax.random.normal(k_normal, (num_below + 3 * d + 1, batch_size), dtype)
  u_DxB, gw_DxB, gq_DxB = (z_ZxB[num_below + i * d:num_below + (i + 1) * d] for i in range(3))
  eps_q_B = z_ZxB[-1]
  one = linalg.opaque_one(dtype)
  c_DxDxB, xtx_DxDxB = bartlett.gram_bl(chol, chi2_BxK[:, :d], z_ZxB[:num_below], one)
  w_DxB = w_factor @ gw_DxB
  xte_DxB = sigma * linalg.mm_bl_unrolled(c_DxDxB, u_DxB[:, None, :], one)[:, 0]  # X^T eps
  xtx_w_DxB = linalg.mm_bl_unrolled(xtx_DxDxB, w_DxB[:, None, :], one)[:, 0]
  xty_DxB = xtx_w_DxB + xte_DxB
  yty_B = (jnp.sum(w_DxB * xtx_w_DxB, axis=0) + 2.0 * jnp.sum(w_DxB * xte_DxB, axis=0)
           + sigma**2 * (jnp.sum(u_DxB * u_DxB, axis=0) + chi2_BxK[:, d]))
  top = jnp.concatenate([xtx_DxDxB, xty_DxB[:, None, :]], axis=1)
  bottom = jnp.concatenate([xty_DxB, yty_B[None, :]], axis=0)[None, :, :]
  gram_DxDxB = jnp.concatenate([top, bottom], axis=0)
  x_query_DxB = chol @ gq_DxB
  y_query_B = jnp.sum(x_query_DxB * w_DxB, axis=0) + sigma * eps_q_B
  query = jnp.concatenate([x_query_DxB.T, jnp.zeros((batch_size, 1), dtype)], axis=1)
  return GramTasks(gram=jnp.moveaxis(gram_DxDxB, -1, 0), query=query, y_query=y_query_B,
                   w=w_DxB.T, n=n)


@functools.partial(jax.jit, static_argnames=("num",))
def sample_empirical_covariance(key: jax.Array, task: TaskDistribution, num: int) -> jax.Array:
  """Draws ``num`` samples of S = X^T X / n, (num, d, d); the only randomness the population loss
  (Rao-Blackwellised over w*, x_q and the noise) needs. Bartlett when possible."""
  num = validation.positive_int("num", num)
  if not uses_bartlett(task):
    x = sample_tasks(key, task, num).x
    return jnp.einsum("bni,bnj->bij", x, x) / task.n
  d, dtype = task.d, task.cov.dtype
  k_cov, k_chi, k_below = jax.random.split(key, 3)
  chol, _ = _factors(k_cov, task, num)
  chi2_BxD = bartlett.chi_square_columns(k_chi, task.n, d, num, dtype, residual=False)
  below_OxB = jax.random.normal(k_below, (d * (d - 1) // 2, num), dtype)
  _, xtx_DxDxB = bartlett.gram_bl(chol, chi2_BxD, below_OxB, linalg.opaque_one(dtype))
  return jnp.moveaxis(xtx_DxDxB, -1, 0) / task.n


def split_gram(gram: GramTasks):
  """(X^T X, X^T y, y^T y, x_q) from a :class:`GramTasks` batch."""
  d = gram.gram.shape[-1] - 1
  return gram.gram[:, :d, :d], gram.gram[:, :d, d], gram.gram[:, d, d], gram.query[:, :d]


__all__ = [
    "TaskDistribution", "Tasks", "GramTasks", "make_task", "sample_tasks", "to_prompt", "to_gram",
    "sample_gram", "sample_empirical_covariance", "uses_bartlett", "split_gram", "as_gram",
    "as_float64", "require_one_covariance",
    "WEIGHT_PRIORS", "DESIGNS",
]
