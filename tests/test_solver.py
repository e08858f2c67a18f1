"""The population-optimum solver: recovers Ahn Thm 1 at L = 1, independent of its restarts."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from looped_icl import config_lib
from looped_icl import estimators
from looped_icl import losses
from looped_icl import solver
from looped_icl import tasks
from looped_icl import theory


def _single_layer_experiment(samples: int):
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 0.5, 0.25, 2.0)
  config.task.d = 4
  config.task.n = 12
  config.task.noise_std = 0.5
  config.model.kind = "layered"
  config.model.num_layers = 1
  config.solver.samples = samples
  config.solver.restarts = 2
  config.solver.max_iters = 200
  return config_lib.from_config(config)


def _fit_statistics(exp, key, result):
  """(S_bar, K) of the solver's weighted fit sample (fold_in(key, 2) from its proposal):
  S_bar = mean(w S), K = mean(w S S) + sigma^2 / n S_bar."""
  proposal = estimators.Proposal(tuple(result["proposal_scales"]),
                                 tuple(result["proposal_weights"]))
  with jax.enable_x64(True):
    task = tasks.as_float64(exp.task)
    fit = estimators.sample(jax.random.fold_in(key, 2), task, exp.solver.samples, proposal)
  s, w = np.asarray(fit.s), np.asarray(fit.weight)
  s_bar = np.einsum("s,sij->ij", w, s) / s.shape[0]
  k = np.einsum("s,sij,sjk->ik", w, s, s) / s.shape[0] + 0.5**2 / exp.task.n * s_bar
  return s_bar, k


@pytest.fixture(scope="module")
def single_layer():
  exp = _single_layer_experiment(samples=40000)
  key = jax.random.key(7)
  return exp, key, solver.solve_population_optimum(exp, key, restart_seed=0)


def test_solver_equals_exact_sample_minimiser(single_layer):
  """At L = 1 the sample objective is quadratic in A with minimiser K^-1 S_bar Sigma_w,
  K = mean(S Sigma_w S) + sigma^2/n S_bar (Sigma_w = I here); the solver must find it."""
  exp, key, result = single_layer
  s_bar, k = _fit_statistics(exp, key, result)
  a_hat = np.linalg.solve(k, s_bar)
  a = np.asarray(result["preconditioners"][0])
  np.testing.assert_allclose(a, a_hat, rtol=0, atol=1e-6 * np.abs(a_hat).max())


def test_solver_recovers_ahn_theorem1(single_layer):
  """The solver's optimum is Thm 1's closed form up to the Monte Carlo error of 40k samples of S
  (the sample minimiser's relative error is ~ 1/sqrt(samples) x tail factor; 2% is > 4 SE)."""
  exp, _, result = single_layer
  a_star = np.asarray(theory.ahn_theorem1(np.asarray(exp.task.cov, np.float64), exp.task.n,
                                          noise_std=0.5))
  a = np.asarray(result["preconditioners"][0])
  assert np.linalg.norm(a - a_star) / np.linalg.norm(a_star) < 0.02
  assert result["loss_stderr"] > 0


def test_solver_is_invariant_to_restart_seed(single_layer):
  exp, key, result = single_layer
  other = solver.solve_population_optimum(exp, key, restart_seed=123)
  np.testing.assert_allclose(other["preconditioners"], result["preconditioners"], rtol=1e-6,
                             atol=1e-8)
  losses = np.asarray(result["restart_losses"] + other["restart_losses"])
  np.testing.assert_allclose(losses, losses[0], rtol=1e-9)


def test_solver_rejects_full_parametrization():
  config = config_lib.base_config()
  config.model.parametrization = "full"
  with pytest.raises(ValueError, match="model.parametrization"):
    solver.solve_population_optimum(config_lib.from_config(config))


def test_solver_compares_a_trained_model_on_the_same_sample(single_layer):
  """Given the optimum itself as the 'trained' model, the paired difference is exactly 0."""
  exp, key, result = single_layer
  optimum = {k: np.asarray(v) for k, v in result["params"].items()}
  again = solver.solve_population_optimum(exp, key, trained_params=optimum)
  assert abs(again["trained_model"]["loss_minus_optimum"]) < 1e-9 * again["loss"]
  np.testing.assert_allclose(again["trained_model"]["ratio"], 1.0, rtol=1e-9)


@pytest.fixture(scope="module")
def constrained_single_layer():
  """Single-layer optima under each constraint, and the fit samples' statistics (S_bar, K)."""
  exp = _single_layer_experiment(samples=4000)
  key = jax.random.key(11)
  proposal = estimators.defensive(1.4)   # one fit sample for every constraint
  results = {c: solver.solve_population_optimum(exp, key, constraint=c, proposal=proposal)
             for c in solver.CONSTRAINTS}
  s_bar, k = _fit_statistics(exp, key, results["general"])
  return exp, results, s_bar, k


def test_symmetric_constraint_finds_the_exact_constrained_minimiser(constrained_single_layer):
  """At L = 1 the sample loss is tr(Sigma A^T K A) - 2 tr(Sigma A^T S_bar) + const (Sigma_w = I),
  so over symmetric A the minimiser solves sym(K A Sigma - S_bar Sigma) = 0: a linear system in
  the d(d+1)/2 free entries, solved here with numpy."""
  exp, results, s_bar, k = constrained_single_layer
  sigma = np.asarray(exp.task.cov, np.float64)
  d = exp.task.d
  basis = []
  for i in range(d):
    for j in range(i, d):
      e = np.zeros((d, d))
      e[i, j] = e[j, i] = 1.0
      basis.append(e)
  gram = np.array([[np.sum(bi * (k @ bj @ sigma)) for bj in basis] for bi in basis])
  rhs = np.array([np.sum(bi * (s_bar @ sigma)) for bi in basis])
  a_sym = np.einsum("k,kij->ij", np.linalg.solve(gram, rhs), np.array(basis))
  a = np.asarray(results["symmetric"]["preconditioners"][0])
  np.testing.assert_allclose(a, a.T, atol=1e-12)
  np.testing.assert_allclose(a, a_sym, rtol=0, atol=1e-6 * np.abs(a_sym).max())


def test_isotropic_constraint_finds_the_best_multiple_of_identity(constrained_single_layer):
  """Over A = c I the loss is c^2 tr(K Sigma) - 2 c tr(S_bar Sigma) + const: c* = ratio."""
  exp, results, s_bar, k = constrained_single_layer
  sigma = np.asarray(exp.task.cov, np.float64)
  c_star = np.trace(s_bar @ sigma) / np.trace(k @ sigma)
  a = np.asarray(results["isotropic"]["preconditioners"][0])
  np.testing.assert_allclose(a, c_star * np.eye(exp.task.d), rtol=1e-6, atol=1e-12)


def test_constraints_only_cost_loss(constrained_single_layer):
  """Nested families: general <= symmetric <= isotropic on the fit sample (up to L-BFGS tol)."""
  _, results, _, _ = constrained_single_layer
  fit = {c: r["fit_loss"] for c, r in results.items()}
  assert fit["general"] <= fit["symmetric"] * (1 + 1e-9)
  assert fit["symmetric"] <= fit["isotropic"] * (1 + 1e-9)
  with pytest.raises(ValueError, match="^constraint must be one of"):
    solver.solve_population_optimum(_single_layer_experiment(100), constraint="diagonal")


def test_held_out_loss_agrees_with_an_independent_estimate(single_layer):
  """The reported held-out loss and standard error against a fresh 200k-sample estimate of the
  same parameters (3 standard errors of the difference); the fit/held-out gap is reported."""
  exp, _, result = single_layer
  params = {k: np.asarray(v) for k, v in result["params"].items()}
  with jax.enable_x64(True):
    task = tasks.as_float64(exp.task)
    report, _, _ = losses.estimate_population_loss(params, exp.model, task, jax.random.key(99),
                                                   200_000)
  diff = result["loss"] - report["value"]
  assert abs(diff) < 3 * np.hypot(result["loss_stderr"], report["stderr"])
  assert result["loss_estimate"]["trusted"]
  assert result["held_out_minus_fit"] == pytest.approx(result["loss"] - result["fit_loss"])
  assert 0 < result["held_out_minus_fit_stderr"] < 0.05 * result["loss"]


@pytest.mark.parametrize("kind,parametrization", [("layered", "preconditioner"),
                                                  ("looped", "gdpp")])
def test_whitened_coordinates_are_a_change_of_variables(kind, parametrization):
  """L-BFGS's coordinates: A = C A' C with C = Sigma^-1/2 (A' = I is Sigma^-1), B and eta as
  they are; the two maps are inverse, and the gradient map is the adjoint of the parameter map
  (<to_raw(g), v> = <g, to_raw(v)>), so to_raw(grad) is the gradient in A'."""
  config = config_lib.base_config()
  config.task.covariance = "rotated"
  config.task.spectrum = (1.0, 0.5, 0.25, 2.0)
  config.task.d = 4
  config.model.kind = kind
  config.model.num_layers = 3
  config.model.parametrization = parametrization
  exp = config_lib.from_config(config)
  cov = np.asarray(exp.task.cov, np.float64)
  to_raw, to_white = solver._whitening(exp.model, cov)
  with jax.enable_x64(True):
    template = solver._restart_params(jax.random.key(0), exp.model, cov)
    flat, unravel = ravel_pytree(template)
    rng = np.random.default_rng(0)
    x, v = rng.normal(size=(2, flat.size))
    np.testing.assert_allclose(to_white(to_raw(x)), x, rtol=1e-12, atol=1e-12)
    assert np.dot(to_raw(x), v) == pytest.approx(np.dot(x, to_raw(v)), rel=1e-12)
    eye = {name: np.broadcast_to(np.eye(4), np.shape(value)) for name, value in template.items()}
    raw = unravel(to_raw(ravel_pytree(eye)[0]))
  np.testing.assert_allclose(np.asarray(raw["a"]), np.broadcast_to(np.linalg.inv(cov),
                                                                    eye["a"].shape), rtol=1e-10)
  if "b" in raw:
    np.testing.assert_array_equal(np.asarray(raw["b"]), eye["b"])


def test_float32_first_fit_reaches_the_float64_minima():
  """The solver's first fit runs in float32 (it only warm-starts the float64 fit): from the same
  starts on the same samples, each restart ends at the float64 fit's minimum to float32
  resolution (loss within 1e-5 relative, parameters within 1% of their scale, the merge rule of
  solve_population_optimum), and returns float64 params and values."""
  exp = _single_layer_experiment(samples=4000)
  model = dataclasses.replace(exp.model, num_layers=3)
  with jax.enable_x64(True):
    task = tasks.as_float64(exp.task)
    samples = estimators.sample(jax.random.key(3), task, 4000, estimators.default_proposal(task))
    fits = {f32: solver.minimize_population_loss(model, task, samples, restarts=2,
                                                 max_iters=200, float32=f32)[1]
            for f32 in (False, True)}
  for low, high in zip(fits[True], fits[False]):
    assert low.fun == pytest.approx(high.fun, rel=1e-5)
    assert low.fun != high.fun   # float32 values: rounded to 2^-24 relative
    assert np.max(np.abs(low.x - high.x)) <= 1e-2 * np.max(np.abs(high.x))
    assert low.x.dtype == np.float64 and low.params["a"].dtype == np.float64
    assert isinstance(low.fun, float)
