r"""Ahn et al. 2023 §5 GD++ as the official notebook trains it, and whether its point is critical.

Paper claim (the figure of ``rotation demonstration-Adam.ipynb``, docs/ahn_2023_official_recipe.md
Section 4): a 3-layer linear transformer with P_l = [[B_l, 0], [0, 1]], Q_l = [[A_l, 0], [0, 0]]
trained on d = 5, N = 20, rotated Sigma (spectrum 1, 1, 1/4, 1/16, 1), w* ~ N(0, Sigma^{-1}) learns
B_0 ~ 0.90 I, B_1 ~ 0.56 I and whitened A_l ~ 0.38, 2.40, 9.6 I (the paper's sign; the notebook's
read-out flips it), with a log test loss of -7.12 (mean of 3 seeds). Setting and recipe:
configs/ahn_gdpp_rotation.py (100k AdamW steps at lr 0.1 halved every 4000).

Why the isotropic reduction is exact here: with x~ = Sigma^{-1/2} x and w~ = Sigma^{1/2} w*, the
task is Sigma = I, w~ ~ N(0, I), and the model maps to B~_l = Sigma^{-1/2} B_l Sigma^{1/2},
A~_l = Sigma^{1/2} A_l Sigma^{1/2}. So B_l = b_l I, A_l = a_l Sigma^{-1} is the isotropic point
(b_l, a_l) of the whitened problem, whose per-S loss is a polynomial in the eigenvalues of S~
(:func:`looped_icl.theory.gdpp_isotropic_loss_samples`; checked against the library's exact loss on
the rotated task in the tests). The loss is invariant under x~ -> U x~, so its gradient at an
isotropic point is isotropic: the 2L - 1 scale derivatives are the whole gradient.

Measured:
* the trained model: B_l, whitened A_l (tr / d and Dist to the nearest multiple of I), its
  test-batch loss (the notebook's measure) and log;
* at the paper's point, at the trained point's isotropic projection, and at the local minimum of
  the population loss each of them descends to: the **exact** population loss and its gradient
  (:mod:`looped_icl.theory.gdpp_exact`: Wishart moments, no sampling; the minimum by BFGS on them),
  and, beside them, what the Monte Carlo estimators make of the same quantities on importance-
  sampled S (the defensive proposal of :mod:`looped_icl.estimators`) and on plain draws (what
  training sees): value, standard error, tail index, and a z-score per gradient entry. A point is
  critical when its exact gradient's largest entry is below ``CRITICAL_GRAD``.

Full run (2026-12-04, seed 0, 100k steps in 21.7 min; evaluation 67 s, 2M samples of S per kind):
trained B = 0.905 / 0.564 I, whitened A = 0.377 / 2.396 / 9.546 (Dist <= 0.04), log test loss
-7.38, all within 1% of the paper's matrices. The trained point and the paper's are **not**
critical points of the population loss: exact loss 0.0438 / 0.0479, exact gradient
(4.41, 0.12, 0.009, 1.67, 0.35) at the trained point. Both descend to one local minimum,
a = (0.338, 2.091, 8.568), B = (0.878, 0.578) I, exact loss 9.61e-4, 46x lower. The estimators do
not see this: plain draws give the trained point 8.2e-4 +- 1.4e-4 (54x below the exact value) and
a gradient within 1.0 standard error of 0, so it is stationary for what training sees; importance-
sampled S give 0.12 +- 0.10 with one S carrying 85% (tail index 1.75). The typical prompt is what
the clipped plain-sampled training fits, and the population mean is carried by rare S with a
large lambda_max, where the covariate maps expand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import selection
from looped_icl import tasks as tasks_lib
from looped_icl import theory
from looped_icl import train_step
from looped_icl.reproduce import ahn_gdpp
from looped_icl.reproduce import common
from looped_icl.theory import gdpp_exact

RUN = "ahn_gdpp_rotation"
PAPER_B = ahn_gdpp.PAPER_B                   # (0.90, 0.56)
PAPER_A = (0.38, 2.40, 9.6)                  # whitened, seed 0's last iterate (the image)
PAPER_LOG_TEST_LOSS = -7.12                  # cell [6]: mean over seeds 0-2 of log test MSE
TEST_TASKS = 20000                           # the notebook's test batch
# Samples of S for the Monte Carlo estimates (each kind of draw).
QUICK_SAMPLES = 200_000
FULL_SAMPLES = 2_000_000
CRITICAL_GRAD = 1e-6   # the exact minimiser stops at 1e-10


def whitened_task(task: tasks_lib.TaskDistribution) -> tasks_lib.TaskDistribution:
  """The isotropic task the rotated one whitens to (float64): Sigma = I, w* ~ N(0, I), same n."""
  if not (task.weight_prior == "inverse_covariance" and float(task.noise_std) == 0.0
          and tasks_lib.uses_bartlett(task)):
    raise ValueError("the whitened reduction needs w* ~ N(0, Sigma^-1), no noise and a Gaussian "
                     "design")
  return tasks_lib.make_task(jnp.eye(task.d, dtype=jnp.float64), task.n)


def isotropic_gradient(theta, sample: ahn_gdpp.EigenSample, num_layers: int) -> dict:
  """The population loss and its gradient in the scales theta = (a_0..a_{L-1}, b_0..b_{L-2}) at
  theta, each with its standard error and tail diagnostics, from the samples of S."""
  theta = jnp.asarray(theta, jnp.float64)

  def per_sample(th):
    return theory.gdpp_isotropic_loss_samples(th[:num_layers], th[num_layers:], sample.eigs)

  grads_SxK = np.asarray(jax.jacfwd(per_sample)(theta))   # 2L - 1 forward passes over S
  loss = estimators.estimate(np.asarray(per_sample(theta)), sample)
  entries = [estimators.estimate(grads_SxK[:, k], sample) for k in range(theta.shape[0])]
  grad = np.array([e["value"] for e in entries])
  stderr = np.array([e["stderr"] for e in entries])
  z = grad / np.maximum(stderr, 1e-300)
  trusted = loss["trusted"] and all(e["trusted"] for e in entries)
  return {"theta": np.asarray(theta), "loss": loss["value"], "loss_stderr": loss["stderr"],
          "loss_tail_index": loss["tail_index"], "loss_max_share": loss["max_share"],
          "grad": grad, "grad_stderr": stderr, "z": z,
          "grad_tail_index": [e["tail_index"] for e in entries],
          "max_abs_z": float(np.max(np.abs(z))), "grad_norm": float(np.linalg.norm(grad)),
          "trusted": trusted}


def test_batch_loss(exp: config_lib.Experiment, params) -> dict:
  """The notebook's measure: the mean squared error on one batch of fresh prompts, with its
  standard error, tail index and median, and its natural log."""
  key = jax.random.fold_in(train_step.root_keys(exp.seed)["eval"], 3)
  with jax.enable_x64(True):
    task = tasks_lib.as_float64(exp.task)
    batch = tasks_lib.sample_gram(key, task, TEST_TASKS)
    params64 = {k: jnp.asarray(np.asarray(v), jnp.float64) for k, v in params.items()}
    err = np.asarray(selection.squared_errors(params64, exp.model, batch, "gram"))
  est = estimators.estimate(err)
  return {"mean": est["value"], "stderr": est["stderr"], "tail_index": est["tail_index"],
          "median": float(np.median(err)), "log_mean": float(np.log(est["value"]))}


def figure(ctx: common.Context, history, points: dict, trained: dict) -> str:
  layers = list(range(len(PAPER_A)))
  b_series = [common.Series("paper (notebook, seed 0)", layers[:-1], PAPER_B, "x--"),
              common.Series("trained", layers[:-1], trained["b"][:-1], "o-")]
  a_series = [common.Series("paper (notebook, seed 0)", layers, PAPER_A, "x--"),
              common.Series("trained", layers, trained["a"], "o-")]
  for name in ("nearest_minimum_to_paper", "nearest_minimum_to_trained"):
    theta = points[name]["theta"]
    label = name.replace("_", " ")
    b_series.append(common.Series(label, layers[:-1], theta[len(layers):], "s:"))
    a_series.append(common.Series(label, layers, theta[:len(layers)], "s:"))
  names = list(points)
  x = list(range(len(names)))
  loss_series = [common.Series("exact", x, [points[n]["exact_loss"] for n in names], "kx")] + [
      common.Series(f"{kind} draws (+- stderr)", x, [points[n][kind]["loss"] for n in names],
                    style, yerr=[points[n][kind]["loss_stderr"] for n in names])
      for kind, style in (("population", "o"), ("plain", "^"))]
  return common.line_figure(ctx, "ahn_gdpp_rotation.png", [
      common.Panel(b_series, "layer l", "tr(B_l)/d", title="covariate step B_l ~ b_l I"),
      common.Panel(a_series, "layer l", "whitened tr(A_l)/d", logy=True,
                   title="A_l ~ a_l Sigma^-1"),
      common.Panel([common.Series("training loss (chunk mean)", [h["step"] for h in history],
                                  [h["loss"] for h in history], "-")],
                   "training step", "in-context loss", logy=True,
                   hlines={"paper: exp(-7.12)": float(np.exp(PAPER_LOG_TEST_LOSS)),
                           "test batch (mean)": trained["test"]["mean"]}, title="training"),
      common.Panel(loss_series, "point: 0 paper, 1 trained, 2 / 3 their nearest minima",
                   "population loss", logy=True, title="exact vs Monte Carlo estimates"),
  ], suptitle="Ahn et al. §5 GD++, the rotation notebook's recipe: L=3, d=5, N=20, rotated Sigma")


def run(ctx: common.Context) -> dict:
  config = common.load_config(RUN, ctx)
  exp = config_lib.from_config(config)
  num_layers = exp.model.num_layers
  _, history, params = common.train_run(ctx, RUN, config, evaluate=False)
  a_white = theory.whiten_preconditioner(jnp.asarray(params["a"]), exp.task.cov)
  trained = {"a": theory.mean_diagonal(a_white), "b": theory.mean_diagonal(params["b"]),
             "dist_a": np.asarray(theory.dist_to_identity(a_white), np.float64),
             "dist_b": np.asarray(theory.dist_to_identity(params["b"]), np.float64),
             "test": test_batch_loss(exp, params)}
  num_held = QUICK_SAMPLES if ctx.quick else FULL_SAMPLES
  n, d = exp.task.n, exp.task.d
  key = jax.random.fold_in(jax.random.key(exp.seed), 7)
  thetas = {"paper": np.concatenate([PAPER_A, PAPER_B]),
            "trained": np.concatenate([trained["a"], trained["b"][:-1]])}
  minima = {name: gdpp_exact.exact_minimum(thetas[name], n, d) for name in ("paper", "trained")}
  thetas.update({f"nearest_minimum_to_{name}": m["theta"] for name, m in minima.items()})
  with jax.enable_x64(True):
    task = whitened_task(tasks_lib.as_float64(exp.task))
    held = {"population": ahn_gdpp.sample_eigenvalues(jax.random.fold_in(key, 1), task, num_held),
            "plain": ahn_gdpp.sample_eigenvalues(jax.random.fold_in(key, 2), task, num_held,
                                                 estimators.PLAIN)}
    points = {}
    for name, theta in thetas.items():
      grad = gdpp_exact.exact_gradient(theta, n, d)
      points[name] = {"theta": np.asarray(theta), "exact_loss": gdpp_exact.exact_loss(theta, n, d),
                      "exact_grad": grad, "exact_max_abs_grad": float(np.max(np.abs(grad))),
                      "critical": bool(np.max(np.abs(grad)) < CRITICAL_GRAD),
                      **{kind: isotropic_gradient(theta, sample, num_layers)
                         for kind, sample in held.items()}}
  rows = []
  for name, p in points.items():
    row = {"point": name}
    row.update({f"a{l}": p["theta"][l] for l in range(num_layers)})
    row.update({f"b{l}": p["theta"][num_layers + l] for l in range(num_layers - 1)})
    row.update({k: p[k] for k in ("exact_loss", "exact_max_abs_grad", "critical")})
    row.update({f"exact_grad{k}": v for k, v in enumerate(p["exact_grad"])})
    for kind in held:
      row.update({f"{kind}_{k}": p[kind][k] for k in ("loss", "loss_stderr", "loss_tail_index",
                                                       "max_abs_z", "trusted")})
    rows.append(row)
  common.write_csv(ctx, "ahn_gdpp_rotation_points.csv", rows)
  common.write_csv(ctx, "ahn_gdpp_rotation_layers.csv", [
      {"layer": l, "paper_a": PAPER_A[l], "trained_a": trained["a"][l],
       "trained_dist_a": trained["dist_a"][l],
       "paper_b": PAPER_B[l] if l < num_layers - 1 else float("nan"),
       "trained_b": trained["b"][l], "trained_dist_b": trained["dist_b"][l]}
      for l in range(num_layers)])
  figure(ctx, history, points, trained)
  return {
      "paper_b": list(PAPER_B), "paper_a": list(PAPER_A),
      "paper_log_test_loss": PAPER_LOG_TEST_LOSS,
      "trained_b": trained["b"], "trained_dist_b": trained["dist_b"],
      "trained_a": trained["a"], "trained_dist_a": trained["dist_a"],
      "test_batch": trained["test"],
      "points": points,
      "exact_minima": minima,
      "samples": num_held,
  }
