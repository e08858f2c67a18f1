r"""What Ahn et al.'s loss curves (Figs 6-7) share: a sweep of layered models and their baselines.

A sweep is a list of points (N, L): N in-context examples, L layers / steps. At each point the
reproductions compare, on ONE shared sample of S = X^T X / N (so every difference is paired):

* ``transformer``: the L-layer linear transformer (layered preconditioner family, general A_l)
  trained by Adam on the exact population objective (the ahn_loss_curves config), one run of
  the trainer per point (:func:`train_points`; ``runs/n=N,L=L``, resumable and reused);
* ``optimum``: the family's population optimum in Ahn's form A_l = c_l Sigma^{-1} (Ahn et al.
  §4.3: Sigma^{1/2} A_l Sigma^{1/2} ~ c_l I), the steps c_l found by the solver
  (:func:`optimal_steps`). L free numbers instead of 25 L: fitted to a few thousand draws of the
  heavy-tailed S it barely overfits, while a general-A fit lands 1% (L = 3) to 12% (L = 4) above
  it on fresh draws when fitted to 2000 (measured), so this is the sharp reference. ``general``
  (optional: the library solver over general A_l) checks that no general A_l beats it;
* ``pgd`` / ``gd``: L steps of preconditioned GD (A = Sigma^{-1}) and of GD (A = I) with one
  population-optimal step (:func:`looped_icl.baselines.best_gd_eta`). The family contains both,
  and ``optimum`` contains ``pgd``, so optimum <= pgd exactly.

The evaluation is cheap (one compilation for all the points instead of one per point): with no
label noise the population loss depends on N only through the law of S (the noise terms of
:mod:`looped_icl.losses` vanish), so every point shares one task distribution for the loss and S
is drawn at each point's own N (:func:`sample_s`, N a traced argument); an L-layer model is
evaluated as an L_max-layer one padded with A = 0 layers (the identity map).

Evaluation runs in float64. Losses are the in-context loss E[(y_hat - y_q)^2] (SPEC section 4).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import baselines
from looped_icl import config_lib
from looped_icl import covariance as cov_lib
from looped_icl import estimators
from looped_icl import losses
from looped_icl import models
from looped_icl import solver
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import train_step
from looped_icl.reproduce import common

FAMILIES = ("transformer", "optimum", "pgd", "gd")
# Pairs (worse, better) whose per-sample loss difference is reported with its standard error.
PAIRS = (("transformer", "optimum"), ("pgd", "transformer"), ("gd", "pgd"), ("pgd", "optimum"),
         ("gd", "transformer"))
# Ahn et al. §4.3 (3 layers, n = 20, rotated Sigma): Sigma^{1/2} A_l Sigma^{1/2} ~ c_l I, sorted.
PAPER_STEPS_L3 = (0.42, 0.69, 1.71)


def family_labels(depth: str) -> dict[str, str]:
  """The legend label of each family of :func:`evaluate_sweep` (its keys are the families' names
  in the rows and in results.json) at ``depth`` ("3", or "L" for a sweep over depth)."""
  return {"paper_model": "paper model (B, A free)", "transformer": "A only, trained",
          "optimum": "A only, optimum", "general": "general A, solver",
          "pgd": f"{depth}-step PGD (Sigma^-1)", "gd": f"{depth}-step GD"}


def experiment(ctx: common.Context) -> config_lib.Experiment:
  """The ahn_loss_curves config (quick if ``ctx.quick``), checked to have no label noise."""
  exp = config_lib.from_config(common.load_config("ahn_loss_curves", ctx))
  if float(exp.task.noise_std) != 0.0:
    raise ValueError("task.noise_std must be 0 for the Ahn loss curves (one task serves every N)")
  if exp.task.weight_prior != "inverse_covariance":
    raise ValueError("task.weight_prior must be 'inverse_covariance' (optimal_steps whitens)")
  return exp


def task64(exp: config_lib.Experiment, n: int | None = None) -> tasks_lib.TaskDistribution:
  """The experiment's task with n examples (default: the config's), in float64.

  Call under ``jax.enable_x64(True)``.
  """
  task = exp.task
  return tasks_lib.make_task(np.asarray(task.cov, np.float64), task.n if n is None else n,
                             noise_std=float(task.noise_std), weight_prior=task.weight_prior)


def _masked_x(key, chol_DxD, n, n_max: int, num: int) -> jax.Array:
  """(num, n_max, d) covariates x ~ N(0, chol chol^T); rows n, n+1, ... are zero (n traced)."""
  z_SxMxD = jax.random.normal(key, (num, n_max, chol_DxD.shape[0]), chol_DxD.dtype)
  keep_M = (jnp.arange(n_max) < n).astype(chol_DxD.dtype)
  return jnp.einsum("smi,ji->smj", z_SxMxD, chol_DxD) * keep_M[None, :, None]


@functools.partial(jax.jit, static_argnames=("n_max", "num"))
def _sample_s(key, chol_DxD, n, n_max: int, num: int):
  """``num`` draws of S = X^T X / n, X with n rows x ~ N(0, chol chol^T), n <= n_max traced."""
  x_SxMxD = _masked_x(key, chol_DxD, n, n_max, num)
  return jnp.einsum("smi,smj->sij", x_SxMxD, x_SxMxD) / n


@functools.partial(jax.jit, static_argnames=("n_max", "num"))
def _sample_gram(key, chol_DxD, w_chol_DxD, n, n_max: int, num: int):
  """``num`` noiseless tasks as GramTasks arrays (gram, query, y_query, w), n <= n_max traced."""
  k_x, k_w, k_q = jax.random.split(key, 3)
  d, dtype = chol_DxD.shape[0], chol_DxD.dtype
  x_SxMxD = _masked_x(k_x, chol_DxD, n, n_max, num)
  w_SxD = jnp.einsum("si,ji->sj", jax.random.normal(k_w, (num, d), dtype), w_chol_DxD)
  xy_SxMxD1 = jnp.concatenate([x_SxMxD, jnp.einsum("smi,si->sm", x_SxMxD, w_SxD)[:, :, None]],
                              axis=2)
  x_query_SxD = jnp.einsum("si,ji->sj", jax.random.normal(k_q, (num, d), dtype), chol_DxD)
  query_SxD1 = jnp.concatenate([x_query_SxD, jnp.zeros((num, 1), dtype)], axis=1)
  return (jnp.einsum("smi,smj->sij", xy_SxMxD1, xy_SxMxD1), query_SxD1,
          jnp.einsum("si,si->s", x_query_SxD, w_SxD), w_SxD)


def sample_s(key: jax.Array, cov, ns: Sequence[int], num: int) -> jax.Array:
  """(K, num, d, d): ``num`` samples of S at each N in ``ns``, drawn from fold_in(key, N).

  Points with the same N get the same draws (a depth sweep's differences across L are paired).
  Exact Gaussian draws with the rows past N masked, so one compilation serves every N.
  """
  chol_DxD = jnp.linalg.cholesky(jnp.asarray(cov))
  n_max = max(ns)
  return jnp.stack([_sample_s(jax.random.fold_in(key, n), chol_DxD, n, n_max, num) for n in ns])


def train_points(ctx: common.Context, ns: Sequence[int], depths: Sequence[int]):
  """Trains the layered preconditioner model of each point (ns[k], depths[k]) with the trainer,
  in ``runs/n=N,L=L`` (the ahn_loss_curves config with task.n and model.num_layers set).

  Returns:
    (a, curve): ``a[k]`` the trained (depths[k], d, d) preconditioners (float64 NumPy), and
    ``curve`` (steps // log_every, K + 1): the logged step, then each point's chunk-mean
    training loss.
  """
  trained, histories = [], []
  for n, depth in zip(ns, depths):
    config = common.load_config("ahn_loss_curves", ctx)
    config.task.n, config.model.num_layers = n, depth
    # No per-point evaluation: evaluate_sweep measures every family on shared samples of S.
    _, history, params = common.train_run(ctx, f"n={n},L={depth}", config, evaluate=False)
    trained.append(np.asarray(params["a"], np.float64))
    histories.append(history)
  steps = [row["step"] for row in histories[0]]
  losses_TxK = np.asarray([[row["loss"] for row in h] for h in histories], np.float64).T
  return trained, np.column_stack([steps, losses_TxK])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_layer_losses(a_FxLxDxD, cfg: models.ModelConfig, task, s_SxDxD):
  """Per-sample population loss after the last layer of each of F models, (F, S)."""
  return jax.vmap(lambda a: losses.population_loss_samples({"a": a}, cfg, task, s_SxDxD)[:, -1])(
      a_FxLxDxD)


def _pad_layers(a_LxDxD, num_layers: int) -> jax.Array:
  """A_l = 0 (identity) layers appended up to ``num_layers``: same predictor, shared shapes."""
  return jnp.concatenate([a_LxDxD, jnp.zeros((num_layers - a_LxDxD.shape[0],)
                                             + a_LxDxD.shape[1:], a_LxDxD.dtype)])


def _off_ray(g_SxLxDxD: jax.Array, root_DxD: jax.Array) -> jax.Array:
  """The traceless part of each whitened gradient root G root (root = Sigma^-1/2), the same
  shape: the directions off the ray A = c Sigma^-1."""
  white = jnp.einsum("ij,sljk,km->slim", root_DxD, g_SxLxDxD, root_DxD)
  trace = jnp.trace(white, axis1=-2, axis2=-1)[..., None, None] / white.shape[-1]
  return white - trace * jnp.eye(white.shape[-1], dtype=white.dtype)[None, None]


def z_score(row: dict, name: str) -> float:
  """A row's ``name`` (e.g. a paired difference) over its standard error ``name_stderr``."""
  return row[name] / max(row[f"{name}_stderr"], 1e-300)


def _eval_samples(exp: config_lib.Experiment, task, ns: Sequence[int]) -> jax.Array:
  """The sweep's shared evaluation draws of S, (K, eval_population_samples, d, d)."""
  key = jax.random.fold_in(train_step.root_keys(exp.seed)["eval"], 1)
  return sample_s(key, task.cov, ns, exp.train.eval_population_samples)


def optimal_steps(exp: config_lib.Experiment, depth: int, s_fit: estimators.WeightedS, *,
                  restart_seed: int = 0) -> np.ndarray:
  """The population-optimal per-layer steps c_l of A_l = c_l Sigma^{-1}, (L,) (float64).

  With w* ~ N(0, Sigma^{-1}), A_l = c_l Sigma^{-1} on Sigma is A~_l = c_l I on the whitened
  problem (Sigma = I, w* ~ N(0, I), S~ = Sigma^{-1/2} S Sigma^{-1/2}; see
  :func:`looped_icl.theory.ahn_theorem1`), i.e. the layered ``fixed`` family with one step per
  layer, which the solver minimises. Call under ``jax.enable_x64(True)``.
  """
  task = task64(exp)
  root_DxD = cov_lib.inv_sqrtm_pd(task.cov)
  white = tasks_lib.make_task(np.eye(task.d), task.n)
  cfg = models.ModelConfig(d=task.d, num_layers=depth, kind="layered", parametrization="fixed")
  whitened = estimators.WeightedS(
      s=jnp.einsum("ij,sjk,kl->sil", root_DxD, s_fit.s, root_DxD), weight=s_fit.weight,
      component=s_fit.component)   # the weights depend on tr(Sigma^-1 S) = tr(S~) only
  params, _ = solver.minimize_population_loss(
      cfg, white, whitened,
      restarts=exp.solver.restarts, max_iters=exp.solver.max_iters, restart_seed=restart_seed)
  return np.asarray(params["eta"], np.float64)


def _steps_text(values) -> str:
  return " ".join(f"{v:.4f}" for v in values)


def evaluate_sweep(exp: config_lib.Experiment, ns: Sequence[int], depths: Sequence[int],
                   trained: Sequence[np.ndarray], *, general_solver: bool = False,
                   paper: Sequence[dict] | None = None) -> list[dict]:
  """One row per point: every family's loss on the shared sample of S, and paired differences.

  The optimum's steps c_l, GD's and PGD's steps (and the general solver) are fitted on
  ``exp.solver.samples`` draws of S; every family is then measured on
  ``exp.train.eval_population_samples`` independent draws (the same for every family), so
  ``X_minus_Y`` is the mean per-sample difference with its standard error.

  Args:
    exp: the experiment (configs/ahn_loss_curves.py).
    ns, depths: the points (N, L).
    trained: each point's trained preconditioners, (L, d, d).
    general_solver: also minimise over general A_l (the library solver, 25 L free entries, from
      random restarts): ``general``. Fitted to a finite sample of heavy-tailed S it overfits, so
      on fresh samples it lands above ``optimum``; it checks that no general A_l beats Ahn's form.
    paper: each point's paper model ({"a", "b"}; :func:`ahn_paper_model.train_points`):
      ``paper_model``, paired with the A-only ``transformer`` and with ``optimum``.
  """
  keys = train_step.root_keys(exp.seed)
  families = FAMILIES + (("general",) if general_solver else ())
  pairs = PAIRS + ((("general", "optimum"),) if general_solver else ())
  if paper is not None:
    families += ("paper_model",)
    pairs += (("transformer", "paper_model"), ("optimum", "paper_model"))
  rows = []
  # Every point is evaluated as an L_max-layer model padded with identity layers: one compile.
  cfg_max = dataclasses.replace(exp.model, num_layers=max(depths))
  with jax.enable_x64(True):
    task = task64(exp)  # n is never read: no label noise (module docstring).
    inv_cov = np.linalg.inv(np.asarray(task.cov))
    inv_cov = (inv_cov + inv_cov.T) / 2
    inv_root = jnp.asarray(cov_lib.inv_sqrtm_pd(task.cov))   # Sigma^-1/2
    s_fit = sample_s(jax.random.fold_in(keys["eval"], 0), task.cov, ns, exp.solver.samples)
    s_eval = _eval_samples(exp, task, ns)
    for k, (n, depth) in enumerate(zip(ns, depths)):
      # Importance-weighted (defensive proposal for this n; looped_icl/estimators.py).
      task_n = dataclasses.replace(task, n=n)
      proposal = estimators.default_proposal(task_n)
      fit_k = estimators.reweight(s_fit[k], task_n, proposal)
      eval_k = estimators.reweight(s_eval[k], task_n, proposal)
      steps = optimal_steps(exp, depth, fit_k, restart_seed=k)
      gd_eta, _ = baselines.best_gd_eta(task, depth, fit_k)
      pgd_eta, _ = baselines.best_gd_eta(task, depth, fit_k, preconditioner=inv_cov)
      a = {"transformer": jnp.asarray(trained[k]),
           "optimum": jnp.asarray(steps[:, None, None] * inv_cov[None]),
           "pgd": jnp.asarray(pgd_eta * np.broadcast_to(inv_cov, (depth,) + inv_cov.shape)),
           "gd": jnp.asarray(gd_eta * np.broadcast_to(np.eye(task.d), (depth, task.d, task.d)))}
      if general_solver:
        params, _ = solver.minimize_population_loss(
            dataclasses.replace(exp.model, num_layers=depth), task, fit_k,
            restarts=exp.solver.restarts, max_iters=exp.solver.max_iters, restart_seed=k)
        a["general"] = params["a"]
      a_only = [name for name in families if name != "paper_model"]
      per_sample = dict(zip(a_only, np.asarray(_last_layer_losses(
          jnp.stack([_pad_layers(a[name], cfg_max.num_layers) for name in a_only]), cfg_max,
          task, eval_k.s))))
      if paper is not None:   # padded with A = B = 0 layers (the identity), like the others
        gdpp_max = dataclasses.replace(cfg_max, parametrization="gdpp")
        padded = {name: _pad_layers(jnp.asarray(value), cfg_max.num_layers)
                  for name, value in paper[k].items()}
        per_sample["paper_model"] = np.asarray(losses.last_layer_loss_samples(
            padded, gdpp_max, task, eval_k.s))
      row = {"n": n, "layers": depth}
      for name in families:
        est = estimators.estimate(per_sample[name], eval_k)
        row[name], row[f"{name}_stderr"] = est["value"], est["stderr"]
        row[f"{name}_tail_index"] = est["tail_index"]
      for worse, better in pairs:
        est = estimators.estimate(per_sample[worse] - per_sample[better], eval_k)
        row[f"{worse}_minus_{better}"], row[f"{worse}_minus_{better}_stderr"] = (
            est["value"], est["stderr"])
      # Ahn et al. Thm 3/4: A_l = c_l Sigma^-1 is a critical point of the loss over general A_l.
      # The population gradient over all 25 L entries, on the independent evaluation draws, at
      # the c_l and 5% off them (the check's power). Along Sigma^-1 itself the c_l carry their
      # fit error, which those draws can resolve; the theorem's content is the rest: in whitened
      # coordinates (A~ = Sigma^1/2 A Sigma^1/2, gradient Sigma^-1/2 G Sigma^-1/2) the
      # gradient's traceless part ("off_ray").
      cfg_depth = dataclasses.replace(exp.model, num_layers=depth)
      for label, scale in (("optimum", 1.0), ("perturbed", 1.05)):
        grads_S = losses.per_sample_gradients({"a": scale * a["optimum"]}, cfg_depth, task,
                                              eval_k.s)
        grad = losses.gradient_estimate(grads_S, eval_k)
        off = losses.gradient_estimate(_off_ray(grads_S["a"], inv_root), eval_k)
        row.update({f"{label}_grad_max_abs_z": grad["max_abs_z"],
                    f"{label}_grad_norm": grad["norm"],
                    f"{label}_grad_off_ray_max_abs_z": off["max_abs_z"]})
      row.update(transformer_over_optimum=row["transformer"] / row["optimum"],
                 optimum_steps=_steps_text(steps),
                 transformer_steps=_steps_text(theory.whitened_scales(trained[k], task.cov)),
                 transformer_dist_whitened=float(np.max(np.asarray(theory.dist_to_identity(
                     theory.whiten_preconditioner(jnp.asarray(trained[k]), task.cov))))),
                 gd_eta=gd_eta, pgd_eta=pgd_eta)
      rows.append(row)
  return rows


@jax.jit
def _ols_loss_samples(s_SxDxD, cov_DxD, weight_cov_DxD):
  """Noiseless least-squares loss given S: tr(Sigma R Sigma_w R), R = I - S^+ S, (S,).

  Without label noise the minimum-norm solution is X^+ y = P w* with P = S^+ S the projection
  onto the row space of X, so w - w* = -R w* and E[(<w - w*, x_q>)^2 | S] = tr(Sigma R Sigma_w R).
  R = 0 (loss 0) once S has full rank (N >= d); eigenvalues <= 10 d eps lambda_max count as 0.
  """
  evals_SxD, evecs_SxDxD = jnp.linalg.eigh(s_SxDxD)
  d = s_SxDxD.shape[-1]
  cutoff_Sx1 = 10.0 * d * jnp.finfo(s_SxDxD.dtype).eps * evals_SxD[:, -1:]
  null_SxD = (evals_SxD <= cutoff_Sx1).astype(s_SxDxD.dtype)
  resid_SxDxD = jnp.einsum("sik,sk,sjk->sij", evecs_SxDxD, null_SxD, evecs_SxDxD)
  return jnp.einsum("ij,sjk,kl,sli->s", cov_DxD, resid_SxDxD, weight_cov_DxD, resid_SxDxD)


def ols_losses(exp: config_lib.Experiment, ns: Sequence[int]) -> list[dict]:
  """Least squares (minimum norm) at each N: exact given S, and Monte Carlo over tasks.

  ``ols_exact``: the mean of :func:`_ols_loss_samples` over the sweep's evaluation draws of S.
  ``ols_mc``: mean squared error of :func:`looped_icl.baselines.ols_predict` on
  ``exp.train.eval_tasks`` fresh noiseless tasks at each N (drawn like :func:`sample_s`, one
  compilation for every N). Both carry standard errors; both are 0 for N >= d (exact
  interpolation of noiseless labels).
  """
  key = jax.random.fold_in(train_step.root_keys(exp.seed)["eval"], 2)
  rows = []
  with jax.enable_x64(True):
    task = task64(exp)
    s_eval = _eval_samples(exp, task, ns)
    chol_DxD = jnp.linalg.cholesky(task.cov)
    w_chol_DxD = jnp.linalg.cholesky(task.weight_cov)
    for k, n in enumerate(ns):
      exact = _ols_loss_samples(s_eval[k], task.cov, task.weight_cov)
      gram, query, y_query, w = _sample_gram(jax.random.fold_in(key, n), chol_DxD, w_chol_DxD,
                                             n, max(ns), exp.train.eval_tasks)
      batch = tasks_lib.GramTasks(gram=gram, query=query, y_query=y_query, w=w, n=n)
      mc = (baselines.ols_predict(batch) - y_query) ** 2
      row = {}
      row["ols_exact"], row["ols_exact_stderr"] = estimators.mean_and_stderr(exact)
      row["ols_mc"], row["ols_mc_stderr"] = estimators.mean_and_stderr(mc)
      row["ols_note"] = ("0: noiseless labels are interpolated exactly (N >= d)" if n >= exp.task.d
                         else "min-norm solution, N < d")
      rows.append(row)
  return rows
