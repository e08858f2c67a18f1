"""Every invalid input raises ValueError with a message that names the offending field.

Each case is (callable, regex): the regex starts with the field name as the message spells it
(``<field> must ...``), so a check that fires for the wrong field, or a different exception
(TypeError, chex's AssertionError, a NaN result), fails the test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import attention
from looped_icl import bartlett
from looped_icl import constructions
from looped_icl import covariance
from looped_icl import losses
from looped_icl import models
from looped_icl import tasks
from looped_icl import validation

NAN, INF = float("nan"), float("inf")
D, N = 3, 6
EYE = np.eye(D)


def _task(**kwargs):
  return tasks.make_task(EYE, N, noise_std=0.1, **kwargs)


def _batch():
  """A fixed token batch (B=4, n=N, d=D) built without sampling (no sampler compile needed)."""
  rng = np.random.default_rng(0)
  return tasks.Tasks(x=jnp.asarray(rng.standard_normal((4, N, D)), jnp.float32),
                     y=jnp.asarray(rng.standard_normal((4, N)), jnp.float32),
                     x_query=jnp.asarray(rng.standard_normal((4, D)), jnp.float32),
                     y_query=jnp.asarray(rng.standard_normal(4), jnp.float32),
                     w=jnp.asarray(rng.standard_normal((4, D)), jnp.float32))


def _model(**kwargs):
  cfg = models.ModelConfig(**{"d": D, "num_layers": 2, **kwargs})
  return cfg, models.init_params(jax.random.key(1), cfg)


def _bad_tasks(field):
  """A token batch (B=4, n=N, d=D) with ``field`` given a wrong shape."""
  good = _batch()
  wrong = {"y": jnp.zeros((4, N + 1)), "x_query": jnp.zeros((4, D + 1)),
           "y_query": jnp.zeros((5,)), "x": jnp.zeros((4, N))}[field]
  return good.replace(**{field: wrong})


CASES = {
    # --- validation helpers -------------------------------------------------------------------
    "positive_int zero": (lambda: validation.positive_int("n", 0), r"^n must be an integer >= 1"),
    "positive_int negative": (lambda: validation.positive_int("n", -3), r"^n must be"),
    "positive_int float": (lambda: validation.positive_int("n", 2.0), r"^n must be an integer"),
    "positive_int bool": (lambda: validation.positive_int("n", True), r"^n must be an integer"),
    "positive_int str": (lambda: validation.positive_int("n", "3"), r"^n must be an integer"),
    "nonnegative negative": (lambda: validation.nonnegative("s", -0.1), r"^s must be a finite"),
    "nonnegative nan": (lambda: validation.nonnegative("s", NAN), r"^s must be a finite"),
    "nonnegative inf": (lambda: validation.nonnegative("s", INF), r"^s must be a finite"),
    "nonnegative str": (lambda: validation.nonnegative("s", "a"), r"^s must be a finite"),
    "nonnegative array": (lambda: validation.nonnegative("s", np.array([0.1, -1.0])), r"^s must"),
    "positive zero": (lambda: validation.positive("eta", 0.0), r"^eta must be a finite number > 0"),
    "positive nan": (lambda: validation.positive("eta", NAN), r"^eta must be a finite number > 0"),
    "in_range open high": (
        lambda: validation.in_range("rho", 1.0, -1.0, 1.0, high_open=True),
        r"^rho must be in \[-1.0, 1.0\), got 1.0"),
    "in_range open low": (
        lambda: validation.in_range("rho", -1.0, -1.0, 1.0, low_open=True),
        r"^rho must be in \(-1.0, 1.0\], got -1.0"),
    "in_range str": (lambda: validation.in_range("rho", "a", -1.0, 1.0), r"^rho must be in"),
    "in_range bool": (lambda: validation.in_range("rho", True, -1.0, 1.0), r"^rho must be in"),
    "in_range nan": (lambda: validation.in_range("rho", NAN, -1.0, 1.0), r"^rho must be in"),
    "in_range vector": (lambda: validation.in_range("rho", [0.1], -1.0, 1.0), r"^rho must be in"),
    "choice": (lambda: validation.choice("kind", "loop", ("looped", "layered")),
               r"^kind must be one of \['layered', 'looped'\], got 'loop'"),
    "shape": (lambda: validation.shape("a", np.zeros((2, 3)), (2, None, None)),
              r"^a must have shape \(2, \*, \*\), got \(2, 3\)"),
    "covariance d": (lambda: validation.covariance("cov", EYE, d=4),
                     r"^cov must have shape \(4, 4\), got \(3, 3\)"),
    # --- covariance ---------------------------------------------------------------------------
    "family unknown": (lambda: covariance.make_covariance("toeplitz", D), r"^covariance must be"),
    "d zero": (lambda: covariance.make_covariance("identity", 0), r"^d must be an integer >= 1"),
    "d float": (lambda: covariance.make_covariance("identity", 2.0), r"^d must be an integer"),
    "kappa below one": (lambda: covariance.make_covariance("condition", D, kappa=0.5),
                        r"^kappa must be in \[1.0, inf\)"),
    "kappa nan": (lambda: covariance.make_covariance("condition", D, kappa=NAN), r"^kappa must"),
    "kappa inf": (lambda: covariance.make_covariance("condition", D, kappa=INF), r"^kappa must"),
    "kappa str": (lambda: covariance.make_covariance("condition", D, kappa="10"), r"^kappa must"),
    "rho one": (lambda: covariance.make_covariance("ar1", D, rho=1.0),
                r"^rho must be in \(-1.0, 1.0\)"),
    "rho minus one": (lambda: covariance.make_covariance("ar1", D, rho=-1.0), r"^rho must be"),
    "rho large": (lambda: covariance.make_covariance("ar1", D, rho=1.5), r"^rho must be"),
    "rho nan": (lambda: covariance.make_covariance("ar1", D, rho=NAN), r"^rho must be"),
    "alpha negative": (lambda: covariance.make_covariance("power_law", D, alpha=-0.1),
                       r"^alpha must be in \[0.0, inf\)"),
    "alpha nan": (lambda: covariance.make_covariance("power_law", D, alpha=NAN), r"^alpha must"),
    "spectrum missing": (lambda: covariance.make_covariance("diagonal", D),
                         r"^spectrum must be given"),
    "spectrum short": (lambda: covariance.make_covariance("diagonal", D, spectrum=(1.0, 2.0)),
                       r"^spectrum must have shape \(3,\)"),
    "spectrum long rotated": (
        lambda: covariance.make_covariance("rotated", D, spectrum=(1.0,) * 4),
        r"^spectrum must have shape \(3,\)"),
    "spectrum 2d": (lambda: covariance.make_covariance("diagonal", 2, spectrum=[[1, 2], [3, 4]]),
                    r"^spectrum must have shape \(2,\)"),
    "spectrum zero": (lambda: covariance.make_covariance("diagonal", D, spectrum=(1.0, 0.0, 1.0)),
                      r"^spectrum must be finite and > 0"),
    "spectrum negative": (
        lambda: covariance.make_covariance("rotated", D, spectrum=(1.0, -0.5, 1.0)),
        r"^spectrum must be finite and > 0"),
    "spectrum nan": (lambda: covariance.make_covariance("diagonal", D, spectrum=(1.0, NAN, 1.0)),
                     r"^spectrum must be finite and > 0"),
    "spectrum strings": (
        lambda: covariance.make_covariance("diagonal", D, spectrum=("a", "b", "c")),
        r"^spectrum must be a sequence of 3 numbers"),
    "random_covariance kappa": (
        lambda: covariance.random_covariance(jax.random.key(0), D, 0.5), r"^kappa must be in"),
    "random_covariance d": (
        lambda: covariance.random_covariance(jax.random.key(0), 0, 2.0), r"^d must be"),
    "random_orthogonal d": (
        lambda: covariance.random_orthogonal(jax.random.key(0), 0), r"^d must be"),
    # --- tasks --------------------------------------------------------------------------------
    "n zero": (lambda: tasks.make_task(EYE, 0), r"^n must be an integer >= 1, got 0"),
    "n float": (lambda: tasks.make_task(EYE, 4.0), r"^n must be an integer"),
    "noise_std negative": (lambda: tasks.make_task(EYE, N, noise_std=-0.1),
                           r"^noise_std must be a finite number >= 0"),
    "noise_std nan": (lambda: tasks.make_task(EYE, N, noise_std=NAN), r"^noise_std must be"),
    "noise_std inf": (lambda: tasks.make_task(EYE, N, noise_std=INF), r"^noise_std must be"),
    "cov not psd": (lambda: tasks.make_task(np.array([[1.0, 2.0], [2.0, 1.0]]), N),
                    r"^cov must be positive definite"),
    "cov singular": (lambda: tasks.make_task(np.ones((2, 2)), N),
                     r"^cov must be positive definite"),
    "cov not symmetric": (lambda: tasks.make_task(np.array([[1.0, 0.5], [0.0, 1.0]]), N),
                          r"^cov must be symmetric"),
    "cov not square": (lambda: tasks.make_task(np.ones((3, 4)), N),
                       r"^cov must have shape \(d, d\), got \(3, 4\)"),
    "cov vector": (lambda: tasks.make_task(np.ones(3), N), r"^cov must have shape"),
    "cov batched": (lambda: tasks.make_task(np.stack([EYE, EYE]), N), r"^cov must have shape"),
    "cov nan": (lambda: tasks.make_task(np.diag([1.0, NAN]), N), r"^cov must be finite"),
    "weight_prior unknown": (lambda: tasks.make_task(EYE, N, weight_prior="isotropic"),
                             r"^weight_prior must be one of"),
    "design unknown": (lambda: tasks.make_task(EYE, N, design="laplace"),
                       r"^design must be one of"),
    "random_cov_kappa below one": (lambda: tasks.make_task(EYE, N, random_cov_kappa=0.5),
                                   r"^random_cov_kappa must be in \[1.0, inf\)"),
    "random_cov_kappa nan": (lambda: tasks.make_task(EYE, N, random_cov_kappa=NAN),
                             r"^random_cov_kappa must be"),
    "sample_tasks batch_size": (lambda: tasks.sample_tasks(jax.random.key(0), _task(), 0),
                                r"^batch_size must be an integer >= 1"),
    "sample_gram batch_size": (lambda: tasks.sample_gram(jax.random.key(0), _task(), -1),
                               r"^batch_size must be an integer >= 1"),
    "sample_gram batch_size float": (lambda: tasks.sample_gram(jax.random.key(0), _task(), 8.0),
                                     r"^batch_size must be an integer"),
    "sample_empirical_covariance num": (
        lambda: tasks.sample_empirical_covariance(jax.random.key(0), _task(), 0),
        r"^num must be an integer >= 1"),
    "bartlett n below d": (
        lambda: bartlett.bartlett_factor(jax.random.key(0), 2, D, 4, jnp.float32),
        r"^n must be >= d=3"),
    "to_prompt y shape": (lambda: tasks.to_prompt(_bad_tasks("y")), r"^tasks.y must have shape"),
    "to_prompt x_query shape": (lambda: tasks.to_prompt(_bad_tasks("x_query")),
                                r"^tasks.x_query must have shape"),
    "to_gram y_query shape": (lambda: tasks.to_gram(_bad_tasks("y_query")),
                              r"^tasks.y_query must have shape"),
    "to_gram x rank": (lambda: tasks.to_gram(_bad_tasks("x")), r"^tasks.x must have shape"),
    # --- models -------------------------------------------------------------------------------
    "model d": (lambda: models.ModelConfig(d=0, num_layers=2), r"^d must be an integer >= 1"),
    "model num_layers": (lambda: models.ModelConfig(d=D, num_layers=0),
                         r"^num_layers must be an integer >= 1"),
    "model kind": (lambda: models.ModelConfig(d=D, num_layers=2, kind="recurrent"),
                   r"^kind must be one of"),
    "model parametrization": (
        lambda: models.ModelConfig(d=D, num_layers=2, parametrization="diagonal"),
        r"^parametrization must be one of"),
    "model activation": (lambda: models.ModelConfig(d=D, num_layers=2, activation="gelu"),
                         r"^activation must be one of"),
    "model eta zero": (lambda: models.ModelConfig(d=D, num_layers=2, eta=0.0),
                       r"^eta must be a finite number > 0"),
    "model eta negative": (lambda: models.ModelConfig(d=D, num_layers=2, eta=-0.5),
                           r"^eta must be a finite number > 0"),
    "model eta nan": (lambda: models.ModelConfig(d=D, num_layers=2, eta=NAN), r"^eta must be"),
    "model init_scale": (lambda: models.ModelConfig(d=D, num_layers=2, init_scale=-1.0),
                         r"^init_scale must be a finite number >= 0"),
    "per_loop_eta not fixed": (
        lambda: models.ModelConfig(d=D, num_layers=2, parametrization="preconditioner",
                                   per_loop_eta=True),
        r"^per_loop_eta must be False unless parametrization='fixed'"),
    "per_loop_eta full": (
        lambda: models.ModelConfig(d=D, num_layers=2, parametrization="full", per_loop_eta=True),
        r"^per_loop_eta must be False"),
    "predict forward unknown": (lambda: models.predict(*_model()[::-1], _batch(), forward="fast"),
                                r"^forward must be one of"),
    "predict gram with relu": (
        lambda: models.predict(*_model(activation="relu")[::-1], _batch(), forward="gram"),
        r"^forward must be 'tokens' for activation='relu'"),
    "predict tokens with GramTasks": (
        lambda: models.predict(*_model()[::-1], tasks.to_gram(_batch()), forward="tokens"),
        r"^batch must be token-level Tasks"),
    "predict batch d mismatch gram": (
        lambda: models.predict(*_model(d=D + 1)[::-1], _batch(), forward="gram"),
        r"^batch dimension d=3 must equal model d=4"),
    "predict batch d mismatch gram sufficient stats": (
        lambda: models.predict(*_model(d=D - 1)[::-1], tasks.to_gram(_batch())),
        r"^batch dimension d=3 must equal model d=2"),
    "predict batch d mismatch tokens": (
        lambda: models.predict(*_model(d=D + 1)[::-1], _batch(), forward="tokens"),
        r"^batch dimension d=3 must equal model d=4"),
    "layered more loops than layers": (
        lambda: models.predict(*_model(kind="layered")[::-1], _batch(), num_loops=3),
        r"^num_loops must be <= num_layers=2 for a layered model, got 3"),
    "num_loops zero": (lambda: models.predict(*_model()[::-1], _batch(), num_loops=0),
                       r"^num_loops must be an integer >= 1"),
    "layer_weights layered extension": (
        lambda: models.layer_weights(*_model(kind="layered", parametrization="full")[::-1], 5),
        r"^num_loops must be <= num_layers=2"),
    # --- constructions ------------------------------------------------------------------------
    "pgd a not square": (lambda: constructions.preconditioned_gd(np.ones((3, 4)), 2),
                         r"^a must have shape \(3, 3\), got \(3, 4\)"),
    "pgd a vector": (lambda: constructions.preconditioned_gd(np.ones(3), 2), r"^a must have shape"),
    "pgd a wrong num_layers": (
        lambda: constructions.preconditioned_gd(np.ones((3, D, D)), 2, kind="layered"),
        r"^a must have shape \(2, \*, \*\), got \(3, 3, 3\)"),
    "pgd a per-layer not square": (
        lambda: constructions.preconditioned_gd(np.ones((2, D, D + 1)), 2, kind="layered"),
        r"^a must have shape \(2, 3, 3\)"),
    "pgd a stacked for looped": (
        lambda: constructions.preconditioned_gd(np.ones((2, D, D)), 2, kind="looped"),
        r"^a must be one \(d, d\) matrix for kind='looped'"),
    "pgd num_layers": (lambda: constructions.preconditioned_gd(EYE, 0),
                       r"^num_layers must be an integer >= 1"),
    "pgd kind": (lambda: constructions.preconditioned_gd(EYE, 2, kind="stacked"),
                 r"^kind must be one of"),
    "pgd looped eta": (lambda: constructions.preconditioned_gd(EYE, 2, eta=0.0),
                       r"^eta must be a finite number > 0"),
    "gd d": (lambda: constructions.gd(0, 2, 0.1), r"^d must be an integer >= 1"),
    "gd eta": (lambda: constructions.gd(D, 2, -0.1), r"^eta must be a finite number > 0"),
    "gd eta layered": (lambda: constructions.gd(D, 2, 0.0, kind="layered"), r"^eta must be"),
    "gdpp b shape": (lambda: constructions.gdpp(EYE, np.eye(2), 2),
                     r"^b must have the shape of a"),
    "gdpp a shape": (lambda: constructions.gdpp(np.ones((2, 2, 3)), EYE, 2),
                     r"^a must have shape"),
    "chen eta zero": (lambda: constructions.chen_fixed(D, 4, 0.0),
                      r"^eta must be a finite number > 0"),
    "chen eta negative per loop": (
        lambda: constructions.chen_fixed(D, 3, np.array([0.1, -0.1, 0.2]), per_loop_eta=True),
        r"^eta must be a finite number > 0"),
    "chen eta per-loop shape": (
        lambda: constructions.chen_fixed(D, 3, np.array([0.1, 0.2]), per_loop_eta=True),
        r"^eta must have shape"),
    "chen eta vector not per loop": (
        lambda: constructions.chen_fixed(D, 3, np.array([0.1, 0.2, 0.3])),
        r"^eta must have shape \(\)"),
    "chen num_loops": (lambda: constructions.chen_fixed(D, 0, 0.1),
                       r"^num_loops must be an integer >= 1"),
    "to_full per_loop_eta": (
        lambda: constructions.to_full(
            *constructions.chen_fixed(D, 3, np.full(3, 0.1), per_loop_eta=True)[::-1]),
        r"^cfg.per_loop_eta must be False"),
    # --- losses and attention -----------------------------------------------------------------
    "population loss parametrization": (
        lambda: losses.population_loss(*_model(parametrization="full")[::-1], _task(),
                                       jnp.broadcast_to(jnp.eye(D), (2, D, D))),
        r"^parametrization must be one of"),
    "population loss random covariance": (
        lambda: losses.population_loss(*_model()[::-1], _task(random_cov_kappa=2.0),
                                       jnp.broadcast_to(jnp.eye(D), (2, D, D))),
        r"^task.random_cov_kappa must be None"),
    "mc_loss forward": (lambda: losses.mc_loss(*_model()[::-1], _batch(), forward="fast"),
                        r"^forward must be one of"),
    "mc_loss layered more loops": (
        lambda: losses.mc_loss(*_model(kind="layered")[::-1], _batch(), num_loops=4),
        r"^num_loops must be <= num_layers=2"),
    "forward_tokens activation": (
        lambda: attention.forward_tokens(jnp.zeros((1, D + 1, D + 1)), jnp.zeros((1, D + 1, D + 1)),
                                         jnp.ones(1), tasks.to_prompt(_batch()), "tanh"),
        r"^activation must be one of"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_input_raises_value_error_naming_the_field(name):
  fn, pattern = CASES[name]
  with pytest.raises(ValueError, match=pattern):
    fn()


def test_valid_boundary_values_are_accepted():
  """The edges of the allowed ranges pass: kappa = 1, alpha = 0, rho near +-1, noise 0, n = 1,
  d = 1, n == d for Bartlett; a 0-d array counts as a number."""
  np.testing.assert_array_equal(covariance.make_covariance("condition", D, kappa=1.0), EYE)
  np.testing.assert_array_equal(covariance.make_covariance("power_law", D, alpha=0.0), EYE)
  for rho in (0.999, -0.999, np.float32(0.5), np.array(0.5)):
    sigma = np.asarray(covariance.make_covariance("ar1", D, rho=rho), np.float64)
    np.testing.assert_allclose(sigma[0, 1], float(rho), rtol=1e-6)
  assert validation.in_range("rho", np.array(0.25), -1.0, 1.0) == 0.25
  task = tasks.make_task(np.eye(1), 1, noise_std=0.0)
  assert task.n == 1 and task.d == 1 and float(task.noise_std) == 0.0
  assert tasks.make_task(EYE, N, random_cov_kappa=1.0).random_cov_kappa == 1.0
  # n == d (batch shape of tests/test_tasks.py, so the gamma sampler compiles once).
  a = np.asarray(bartlett.bartlett_factor(jax.random.key(0), D, D, 50_000, jnp.float32))
  assert np.all(np.isfinite(a)) and np.all(np.diagonal(a, axis1=1, axis2=2) > 0)
  assert validation.positive_int("n", np.int64(3)) == 3


def test_checks_are_no_ops_on_traced_values():
  """Checks run on concrete values before tracing; under jit they must not raise (the values are
  unknown), so a jitted caller with e.g. a traced noise level still compiles."""
  @jax.jit
  def f(noise, cov):
    validation.nonnegative("noise_std", noise)
    validation.positive("eta", noise)
    validation.covariance("cov", cov)
    return noise * 2.0

  assert float(f(-1.0, -jnp.eye(2))) == -2.0
