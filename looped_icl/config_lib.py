"""Configs are data: the ConfigDict schema, and its conversion into typed objects.

Every experiment config (``looped_icl/configs/*.py``) starts from :func:`base_config` and overrides fields.
:func:`from_config` validates everything at once and returns an :class:`Experiment` of typed
dataclasses; library code never reads a ConfigDict. A bad field raises ``ValueError`` whose
message starts with the field's dotted path, e.g. ``task.n must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pkgutil

import ml_collections
import numpy as np

from looped_icl import configs as configs_pkg
from looped_icl import covariance
from looped_icl import models
from looped_icl import tasks
from looped_icl import validation

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "cosine")
OBJECTIVES = ("mc", "population")
MODES = ("standard", "gradient_flow")
POPULATION_PROPOSALS = ("defensive", "plain")


def base_config() -> ml_collections.ConfigDict:
  """The full schema with neutral defaults; one field per line, a comment above each."""
  c = ml_collections.ConfigDict()
  # Seed of everything random (init, data, evaluation); step keys are fold_in(key, step).
  c.seed = 0

  c.task = ml_collections.ConfigDict()
  # Covariate dimension d and number n of in-context examples.
  c.task.d = 5
  c.task.n = 20
  # Sigma family: identity | diagonal | rotated | condition | ar1 | power_law.
  c.task.covariance = "identity"
  # Eigenvalues for diagonal/rotated (length d).
  c.task.spectrum = ()
  # Condition number (condition), AR(1) correlation (ar1), decay exponent (power_law).
  c.task.kappa = 1.0
  c.task.rho = 0.0
  c.task.alpha = 1.0
  # Seed of the rotation U for rotated.
  c.task.cov_seed = 0
  # Prior of w*: identity (N(0, I)) | inverse_covariance (N(0, Sigma^-1)).
  c.task.weight_prior = "identity"
  # Label-noise standard deviation sigma.
  c.task.noise_std = 0.0
  # Covariate law with covariance Sigma: gaussian | uniform | student_t | sphere | gamma.
  c.task.design = "gaussian"
  # If > 0, each training task draws its own random Sigma with this condition number (OOD).
  c.task.random_cov_kappa = 0.0

  c.model = ml_collections.ConfigDict()
  # looped (one block, shared weights) | layered (separate weights per layer).
  c.model.kind = "looped"
  # L: layers, or loops used in training.
  c.model.num_layers = 4
  # full | preconditioner | gdpp | fixed.
  c.model.parametrization = "preconditioner"
  # Looped step: Z <- Z - eta Attn(Z); initial eta of the fixed parametrization.
  c.model.eta = 1.0
  # linear | relu | softmax (relu/softmax need train.forward = tokens).
  c.model.activation = "linear"
  # fixed only: one trainable eta_t per loop.
  c.model.per_loop_eta = False
  # Std of the Gaussian initialisation of the trainable matrices.
  c.model.init_scale = 1e-3

  c.train = ml_collections.ConfigDict()
  # Optimisation steps.
  c.train.steps = 1000
  # Tasks per step (mc) or samples of S per step (population).
  c.train.batch_size = 1024
  # adam | adamw | sgd.
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-2
  # Adam/AdamW moments; AdamW weight decay; SGD momentum (0 = plain GD).
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.weight_decay = 0.0
  c.train.momentum = 0.0
  # constant | step (times decay_factor every decay_every steps) | cosine (to 0 at the end).
  c.train.schedule = "constant"
  c.train.decay_every = 1000
  c.train.decay_factor = 0.5
  # Clip each weight matrix's gradient to this Frobenius norm (Ahn et al.); 0 = off.
  c.train.clip_per_matrix = 0.0
  # Clip the global gradient norm; 0 = off.
  c.train.clip_global_norm = 0.0
  # mc (Monte Carlo over tasks) | population (exact Rao-Blackwellised; preconditioner/gdpp/fixed).
  c.train.objective = "mc"
  # gram (exact fast path, linear attention) | tokens (reference path; relu/softmax).
  c.train.forward = "gram"
  # Fresh data every k steps; 0 = one fixed sample for the whole run.
  c.train.resample_every = 1
  # standard | gradient_flow (needs optimizer=sgd, momentum=0, objective=population,
  # resample_every=0, schedule=constant: plain GD on a fixed population objective).
  c.train.mode = "standard"
  # Log (and check for NaN) every k steps; checkpoint every k steps (a multiple of log_every).
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  # Fresh tasks for the final evaluation (the summary's final_eval_loss).
  c.train.eval_tasks = 10000
  # Samples of S for evaluating the population loss (summary, loss vs loops); importance-sampled
  # from a proposal chosen for the trained model (looped_icl/estimators.py).
  c.train.eval_population_samples = 10000
  # Law of the population objective's samples of S: defensive (half plain, half from an inflated
  # Sigma, importance-weighted: unbiased, lower variance at L >= 4, n/d <= 5) | plain.
  c.train.population_proposal = "defensive"

  c.solver = ml_collections.ConfigDict()
  # Fixed (importance-weighted) samples of S for the float64 L-BFGS population-optimum solver:
  # the fit, the restart choice and the proposal's pilot each draw this many.
  c.solver.samples = 20000
  # Held-out samples of S for the reported optimum loss and its standard error.
  c.solver.test_samples = 100000
  # Random restarts and L-BFGS iterations per restart.
  c.solver.restarts = 4
  c.solver.max_iters = 500
  return c


def make_quick(config: ml_collections.ConfigDict, *, steps: int, batch_size: int,
               learning_rate: float | None = None) -> ml_collections.ConfigDict:
  """Shrinks ``config`` in place to a seconds-long smoke run (every config's ``quick`` arg).

  The experiment-specific knobs (steps, batch, learning rate) are arguments; the rest (log and
  checkpoint cadence, evaluation and solver sample sizes) is shared by all quick variants.
  """
  config.train.steps = steps
  config.train.batch_size = batch_size
  if learning_rate is not None:
    config.train.learning_rate = learning_rate
  config.train.log_every = min(100, steps)
  config.train.checkpoint_every = config.train.log_every * max(1, steps // (2 * 100))
  config.train.eval_tasks = 10000
  config.train.eval_population_samples = 4000
  config.solver.samples = 4000
  config.solver.test_samples = 20000
  config.solver.restarts = 2
  config.solver.max_iters = 200
  return config


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Typed ``config.train`` (see :func:`base_config` for each field's meaning)."""
  steps: int
  batch_size: int
  optimizer: str
  learning_rate: float
  b1: float
  b2: float
  weight_decay: float
  momentum: float
  schedule: str
  decay_every: int
  decay_factor: float
  clip_per_matrix: float
  clip_global_norm: float
  objective: str
  forward: str
  resample_every: int
  mode: str
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  eval_tasks: int
  eval_population_samples: int
  population_proposal: str


@dataclasses.dataclass(frozen=True)
class SolverConfig:
  samples: int
  test_samples: int
  restarts: int
  max_iters: int


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run needs, typed and validated."""
  seed: int
  task: tasks.TaskDistribution
  model: models.ModelConfig
  train: TrainConfig
  solver: SolverConfig


@contextlib.contextmanager
def _field_prefix(prefix: str):
  """Re-raises a ValueError with the dotted section path before the field name."""
  try:
    yield
  except ValueError as e:
    raise ValueError(f"{prefix}.{e}") from None


def _nonneg_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  return int(value)


def _number(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise ValueError(f"{name} must be a number, got {value!r}")
  return float(value)


def build_task(t: ml_collections.ConfigDict) -> tasks.TaskDistribution:
  with _field_prefix("task"):
    d = validation.positive_int("d", t.d)
    n = validation.positive_int("n", t.n)
    validation.choice("covariance", t.covariance, covariance.FAMILIES)
    # Family parameters are checked even when the family does not use them: a bad value is a
    # mistake either way.
    validation.in_range("kappa", _number("kappa", t.kappa), 1.0, float("inf"))
    validation.in_range("rho", _number("rho", t.rho), -1.0, 1.0, low_open=True, high_open=True)
    validation.in_range("alpha", _number("alpha", t.alpha), 0.0, float("inf"))
    spectrum = tuple(t.spectrum) if t.covariance in ("diagonal", "rotated") else None
    cov = covariance.make_covariance(
        t.covariance, d, spectrum=spectrum, kappa=_number("kappa", t.kappa),
        rho=_number("rho", t.rho), alpha=_number("alpha", t.alpha),
        cov_seed=_nonneg_int("cov_seed", t.cov_seed))
    validation.nonnegative("noise_std", _number("noise_std", t.noise_std))
    kappa = _number("random_cov_kappa", t.random_cov_kappa)
    if kappa != 0 and kappa < 1:
      raise ValueError(f"random_cov_kappa must be 0 (off) or >= 1, got {kappa!r}")
    return tasks.make_task(cov, n, noise_std=float(t.noise_std), weight_prior=t.weight_prior,
                           design=t.design, random_cov_kappa=kappa or None)


def build_model(m: ml_collections.ConfigDict, d: int) -> models.ModelConfig:
  with _field_prefix("model"):
    return models.ModelConfig(
        d=d, num_layers=m.num_layers, kind=m.kind, parametrization=m.parametrization,
        eta=_number("eta", m.eta), activation=m.activation, per_loop_eta=bool(m.per_loop_eta),
        init_scale=_number("init_scale", m.init_scale))


def build_train(t: ml_collections.ConfigDict) -> TrainConfig:
  with _field_prefix("train"):
    tc = TrainConfig(
        steps=validation.positive_int("steps", t.steps),
        batch_size=validation.positive_int("batch_size", t.batch_size),
        optimizer=validation.choice("optimizer", t.optimizer, OPTIMIZERS),
        learning_rate=validation.positive("learning_rate", _number("learning_rate",
                                                                   t.learning_rate)),
        b1=validation.in_range("b1", t.b1, 0.0, 1.0, high_open=True),
        b2=validation.in_range("b2", t.b2, 0.0, 1.0, high_open=True),
        weight_decay=validation.nonnegative("weight_decay", _number("weight_decay",
                                                                    t.weight_decay)),
        momentum=validation.in_range("momentum", t.momentum, 0.0, 1.0, high_open=True),
        schedule=validation.choice("schedule", t.schedule, SCHEDULES),
        decay_every=validation.positive_int("decay_every", t.decay_every),
        decay_factor=validation.in_range("decay_factor", t.decay_factor, 0.0, 1.0,
                                         low_open=True),
        clip_per_matrix=validation.nonnegative("clip_per_matrix",
                                               _number("clip_per_matrix", t.clip_per_matrix)),
        clip_global_norm=validation.nonnegative("clip_global_norm",
                                                _number("clip_global_norm", t.clip_global_norm)),
        objective=validation.choice("objective", t.objective, OBJECTIVES),
        forward=validation.choice("forward", t.forward, models.FORWARDS),
        resample_every=_nonneg_int("resample_every", t.resample_every),
        mode=validation.choice("mode", t.mode, MODES),
        log_every=validation.positive_int("log_every", t.log_every),
        checkpoint_every=validation.positive_int("checkpoint_every", t.checkpoint_every),
        keep_checkpoints=validation.positive_int("keep_checkpoints", t.keep_checkpoints),
        eval_tasks=validation.positive_int("eval_tasks", t.eval_tasks),
        eval_population_samples=validation.positive_int("eval_population_samples",
                                                        t.eval_population_samples),
        population_proposal=validation.choice("population_proposal", t.population_proposal,
                                              POPULATION_PROPOSALS),
    )
    if tc.checkpoint_every % tc.log_every:
      raise ValueError(f"checkpoint_every must be a multiple of log_every={tc.log_every}, "
                       f"got {tc.checkpoint_every}")
    if tc.mode == "gradient_flow":
      needs = {"optimizer": "sgd", "momentum": 0.0, "objective": "population",
               "resample_every": 0, "schedule": "constant"}
      for name, want in needs.items():
        if getattr(tc, name) != want:
          raise ValueError(f"{name} must be {want!r} when mode='gradient_flow', "
                           f"got {getattr(tc, name)!r}")
    return tc


def build_solver(s: ml_collections.ConfigDict) -> SolverConfig:
  with _field_prefix("solver"):
    return SolverConfig(samples=validation.positive_int("samples", s.samples),
                        test_samples=validation.positive_int("test_samples", s.test_samples),
                        restarts=validation.positive_int("restarts", s.restarts),
                        max_iters=validation.positive_int("max_iters", s.max_iters))


def from_config(config: ml_collections.ConfigDict) -> Experiment:
  """Validates a ConfigDict and converts it into an :class:`Experiment`."""
  unknown = set(config.keys()) - set(base_config().keys())
  if unknown:
    raise ValueError(f"{sorted(unknown)[0]} is not a config field; fields are "
                     f"{sorted(base_config().keys())}")
  for section in ("task", "model", "train", "solver"):
    extra = set(config[section].keys()) - set(base_config()[section].keys())
    if extra:
      raise ValueError(f"{section}.{sorted(extra)[0]} is not a config field")
  seed = _nonneg_int("seed", config.seed)
  task = build_task(config.task)
  model = build_model(config.model, task.d)
  train = build_train(config.train)
  solver = build_solver(config.solver)
  if train.forward == "gram" and model.activation != "linear":
    raise ValueError(f"train.forward must be 'tokens' for model.activation="
                     f"{model.activation!r}, got 'gram'")
  if train.objective == "population":
    if model.parametrization == "full":
      raise ValueError("train.objective must be 'mc' for model.parametrization='full' (the exact "
                       "population loss covers preconditioner, gdpp and fixed)")
    if model.activation != "linear":
      raise ValueError("train.objective must be 'mc' for a non-linear model.activation")
    if task.random_cov_kappa is not None:
      raise ValueError("train.objective must be 'mc' when task.random_cov_kappa > 0")
  return Experiment(seed=seed, task=task, model=model, train=train, solver=solver)


def config_names() -> list[str]:
  """The names of the configs shipped in :mod:`looped_icl.configs` (``default``, ...)."""
  return sorted(m.name for m in pkgutil.iter_modules(configs_pkg.__path__))


def resolve(spec: str) -> str:
  """``"NAME[:ARG]"`` or ``"path/to/config.py[:ARG]"`` -> ``"/abs/path.py[:ARG]"``.

  A name is a module of :mod:`looped_icl.configs` (found in the installed package, from any
  directory); anything ending in ``.py`` is a path. Raises ValueError naming the spec otherwise.
  """
  path, sep, arg = spec.partition(":")
  if path.endswith(".py"):
    if not os.path.exists(path):
      raise ValueError(f"config file {path!r} does not exist")
    return os.path.abspath(path) + sep + arg
  if path not in config_names():
    raise ValueError(f"config {path!r} is neither a config name ({', '.join(config_names())}) "
                     f"nor a .py file")
  return os.path.join(os.path.dirname(configs_pkg.__file__), f"{path}.py") + sep + arg


def load_module(spec: str):
  """(module, arg) of ``"NAME[:ARG]"`` or ``"path/to/config.py[:ARG]"`` (see :func:`resolve`)."""
  path, _, arg = resolve(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location(
      f"looped_icl_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg or None


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads ``"NAME[:ARG]"`` (e.g. ``"default:quick"``) or ``"path/to/config.py[:ARG]"``.

  The same specs the ``looped-icl`` command takes, for notebooks and tests.
  """
  module, arg = load_module(spec)
  return module.get_config(arg)
