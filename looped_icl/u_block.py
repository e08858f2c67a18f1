r"""Gatmiry et al.'s u block: the looped model with P's last row trainable, and why u_opt = 0.

The model (docs/gatmiry_2024_statements.md, Section 1.1; the paper's text was not readable here,
the form is inferred from a secondary summary): one shared layer with
Q = [[A, 0], [0, 0]] and P = [[0, 0], [u^T, 1]], looped L times in the toolkit's convention
Z <- Z - eta P Z M Z^T Q Z / n. At u = 0 it is the looped ``preconditioner`` family.

Why u_opt = 0 (our derivation). P's top rows are 0, so the covariate rows of Z never change, and
Q Z sees only them: with X_all = [X^T, x_q] the covariate rows (d, n + 1), the label row r
follows r <- r - (eta / n) (u^T X_all + r) M X_all^T A X_all, which is affine in (r, u). So the
prediction is affine in u, f(u) = f_0 + g^T u, where g does not depend on the labels, and the
per-task squared error is a quadratic in u:

  L(A, u) = L(A, 0) + 2 b^T u + u^T H u,   b = E[(f_0 - y_q) g],   H = E[g g^T].

Under w* -> -w* (a symmetric prior, any noise symmetric too) every label flips sign, so f_0 - y_q
flips and g does not: b = 0, and L(A, u) = L(A, 0) + u^T H u >= L(A, 0). So u = 0 minimises
L(A, .) for every A, min L = min_A L(A, 0), and every global minimiser has u_opt in the null
space of H(A_opt): u_opt = 0 exactly when H(A_opt) is positive definite, which
:func:`u_optimum` measures (Theorem 3.2's u claim), with the other pieces: the affine fit's
residual, b with its standard errors, and the sample's own minimiser -H^-1 b.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import estimators
from looped_icl import models
from looped_icl import tasks as tasks_lib


def weights(a_DxD: jax.Array, u_D: jax.Array) -> dict[str, jax.Array]:
  """The ``full`` looped params: P = [[0, 0], [u^T, 1]], Q = [[A, 0], [0, 0]]."""
  d = a_DxD.shape[-1]
  zeros = jnp.zeros((d + 1, d + 1), a_DxD.dtype)
  return {"p": zeros.at[d, :d].set(u_D).at[d, d].set(1.0), "q": zeros.at[:d, :d].set(a_DxD)}


def model_config(d: int, num_loops: int, eta: float = 1.0) -> models.ModelConfig:
  """The looped ``full`` model that :func:`weights` fills."""
  return models.ModelConfig(d=d, num_layers=num_loops, kind="looped", parametrization="full",
                            eta=eta)


def predictions(a_DxD, u_D, batch: tasks_lib.GramTasks, num_loops: int, eta: float = 1.0):
  """f(A, u) per task, (B,), by the exact Gram forward."""
  cfg = model_config(a_DxD.shape[-1], num_loops, eta)
  return models.predict(weights(jnp.asarray(a_DxD), jnp.asarray(u_D)), cfg, batch)


def flip_labels(batch: tasks_lib.GramTasks) -> tasks_lib.GramTasks:
  """The same tasks with w* -> -w* (and the noise negated): every label flips sign, so X^T y and
  y_q flip and y^T y does not."""
  d = batch.gram.shape[-1] - 1
  gram = batch.gram.at[:, :d, d].multiply(-1).at[:, d, :d].multiply(-1)
  return tasks_lib.GramTasks(gram=gram, query=batch.query, y_query=-batch.y_query, w=-batch.w,
                             n=batch.n)


def affine_parts(a_DxD, batch: tasks_lib.GramTasks, num_loops: int, eta: float = 1.0):
  """(f_0, g): the prediction at u = 0, (B,), and its gradient in u, (B, d).

  f is affine in u, so g_i = f(e_i) - f(0) exactly up to rounding (d + 1 forward passes; the Gram
  forward has a custom reverse mode, and per-task reverse passes would cost B of them).
  :func:`u_optimum` checks the affine form at a random u.
  """
  a_DxD = jnp.asarray(a_DxD)
  d = a_DxD.shape[-1]
  basis = jnp.concatenate([jnp.zeros((1, d), a_DxD.dtype), jnp.eye(d, dtype=a_DxD.dtype)])
  f_KxB = jax.vmap(lambda u: predictions(a_DxD, u, batch, num_loops, eta))(basis)
  return f_KxB[0], (f_KxB[1:] - f_KxB[:1]).T


def u_optimum(a_DxD, batch: tasks_lib.GramTasks, num_loops: int, *, eta: float = 1.0,
              probe_seed: int = 0) -> dict:
  """The quadratic L(A, u) = L(A, 0) + 2 b^T u + u^T H u measured on ``batch`` (JSON-ready).

  Returns:
    affine_residual: max |f(u) - f_0 - g^T u| / max |f(u) - f_0| at a random unit-scale u (0 up
      to rounding: f is affine in u);
    b, b_stderr, b_max_abs_z, b_tail_index: b's entries, their standard errors, the largest
      |b_i| / SE_i (0 in expectation by the w* -> -w* symmetry), and the largest tail index of the
      per-task terms (f_0 - y_q) g_i (the standard errors are reliable below 0.5);
    b_scale: the mean of |f_0 - y_q| |g| (what b is small against);
    h_eigenvalues: H's eigenvalues, ascending (H = mean g g^T, positive semidefinite by
      construction); h_min_eig_stderr and h_min_eig_tail_index: the standard error and tail index
      of the smallest one, as the mean of (v^T g)^2 along its eigenvector v;
    u_opt, u_opt_norm, u_opt_max_abs_z: the sample's minimiser -H^-1 b and its largest |entry| /
      SE (the standard error of -H^-1 times a mean, with H held fixed);
    loss_at_zero, loss_gain_at_u_opt: L(A, 0) and L(A, 0) - L(A, u_opt) = b^T H^-1 b on this
      sample (what a nonzero u could gain here, sampling noise only if b = 0).

  Raises ValueError if H is singular (e.g. A = 0, where f does not depend on u).
  """
  a_DxD = jnp.asarray(a_DxD)
  f0_B, g_BxD = affine_parts(a_DxD, batch, num_loops, eta)
  f0_B, g_BxD = np.asarray(f0_B, np.float64), np.asarray(g_BxD, np.float64)
  probe_D = np.random.default_rng(probe_seed).standard_normal(g_BxD.shape[1])
  shift_B = np.asarray(predictions(a_DxD, jnp.asarray(probe_D, a_DxD.dtype), batch, num_loops,
                                   eta), np.float64) - f0_B
  residual_B = f0_B - np.asarray(batch.y_query, np.float64)
  b_terms_BxD = residual_B[:, None] * g_BxD
  b_D, b_se_D = estimators.mean_and_stderr(b_terms_BxD)
  h_DxD = g_BxD.T @ g_BxD / g_BxD.shape[0]
  eig_D, eigvec_DxD = np.linalg.eigh(h_DxD)
  if not eig_D[0] > 1e-12 * max(eig_D[-1], 1e-300):
    raise ValueError(f"H = E[g g^T] must be positive definite to solve for u_opt, got smallest "
                     f"eigenvalue {eig_D[0]:.3g} (largest {eig_D[-1]:.3g})")
  u_terms_BxD = -np.linalg.solve(h_DxD, b_terms_BxD.T).T
  u_opt_D, u_se_D = estimators.mean_and_stderr(u_terms_BxD)
  along_min = estimators.estimate((g_BxD @ eigvec_DxD[:, 0]) ** 2)
  return {
      "affine_residual": float(np.max(np.abs(shift_B - g_BxD @ probe_D))
                               / max(np.max(np.abs(shift_B)), 1e-300)),
      "b": np.asarray(b_D).tolist(), "b_stderr": np.asarray(b_se_D).tolist(),
      "b_max_abs_z": float(np.max(np.abs(b_D) / np.maximum(b_se_D, 1e-300))),
      "b_tail_index": max(estimators.pareto_tail_index(np.abs(t)) for t in b_terms_BxD.T),
      "b_scale": float(np.mean(np.abs(residual_B) * np.linalg.norm(g_BxD, axis=1))),
      "h_eigenvalues": eig_D.tolist(),
      "h_min_eig_stderr": along_min["stderr"],
      "h_min_eig_tail_index": along_min["tail_index"],
      "u_opt": np.asarray(u_opt_D).tolist(),
      "u_opt_norm": float(np.linalg.norm(u_opt_D)),
      "u_opt_max_abs_z": float(np.max(np.abs(u_opt_D) / np.maximum(u_se_D, 1e-300))),
      "loss_at_zero": float(np.mean(residual_B**2)),
      "loss_gain_at_u_opt": float(b_D @ np.linalg.solve(h_DxD, b_D)),
  }


__all__ = ["weights", "model_config", "predictions", "flip_labels", "affine_parts", "u_optimum"]
