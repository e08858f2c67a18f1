"""The closed-form loss of k-step GD that line_search minimises equals the model's population loss.

:func:`looped_icl.baselines.best_gd_eta`'s own tests (test_baselines.py) check its minimiser
against the one-step closed form and the model's loss on both sides of it; here the spectral
formula itself is compared with :func:`looped_icl.losses.population_loss` of the looped
preconditioner model (an independent computation: products of d x d matrices per layer) at
many steps, with noise, a Sigma^-1 prior, importance weights and singular S (n < d).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import constructions
from looped_icl import covariance as cov_lib
from looped_icl import estimators
from looped_icl import line_search
from looped_icl import losses
from looped_icl import tasks as tasks_lib

D = 4


def _task(n, weight_prior):
  cov = cov_lib.make_covariance("rotated", D, spectrum=(1.0, 0.5, 0.25, 0.1), cov_seed=3)
  return tasks_lib.make_task(np.asarray(cov, np.float64), n, noise_std=0.4,
                             weight_prior=weight_prior)


@pytest.mark.parametrize("n, steps, weight_prior, preconditioned, weighted", [
    (6, 1, "identity", False, False),
    (6, 3, "inverse_covariance", True, False),
    (3, 5, "inverse_covariance", False, False),      # n < d: S is singular
    (8, 12, "identity", True, True),                 # importance-weighted samples
])
def test_spectral_loss_equals_the_model_population_loss(x64, n, steps, weight_prior,
                                                        preconditioned, weighted):
  task = _task(n, weight_prior)
  key = jax.random.PRNGKey(n + steps)
  if weighted:
    samples = estimators.sample(key, task, 300, estimators.default_proposal(task))
    s, weight = samples.s, np.asarray(samples.weight)
  else:
    samples = s = tasks_lib.sample_empirical_covariance(key, task, 300)
    weight = None
  inv = np.linalg.inv(np.asarray(task.cov))
  a = (inv + inv.T) / 2 if preconditioned else np.eye(D)
  f = line_search._SpectralLoss(task, steps, np.asarray(s), weight, a)
  scale = np.linalg.norm(a @ np.mean(np.asarray(s), axis=0), ord=2)
  etas = np.geomspace(0.01, 2.5, 9) / scale        # up to a diverging step
  model = []
  for eta in etas:
    cfg, params = constructions.preconditioned_gd(jnp.asarray(a), steps, eta=eta)
    model.append(float(losses.population_loss(params, cfg, task, samples)))
  np.testing.assert_allclose(f(etas), model, rtol=1e-9)


def test_non_spd_preconditioner_is_refused():
  task = _task(6, "identity")
  s = tasks_lib.sample_empirical_covariance(jax.random.PRNGKey(0), task, 10)
  for a, what in ((np.triu(np.ones((D, D))), "asymmetry"), (-np.eye(D), "smallest eigenvalue")):
    with pytest.raises(ValueError, match="^preconditioner must be symmetric positive definite.*"
                       + what):
      line_search.best_gd_eta(task, 2, s, preconditioner=a)
