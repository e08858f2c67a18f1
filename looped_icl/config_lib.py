"""Configs are data: the schema (typed dataclasses), the ConfigDict made from it, and loading.

Each config section is a frozen dataclass of :func:`looped_icl.fields.field` s (:data:`SECTIONS`:
the top level, ``task``, ``model`` (:class:`looped_icl.models.ModelConfig`), ``train``,
``solver``): one place gives every field's default, one-line doc, validation and whether runs of
one vmapped group may differ in it. :func:`base_config` is the ConfigDict generated from them;
every experiment config (``looped_icl/configs/*.py``) starts from it and overrides fields.
:func:`from_config` validates everything and returns an :class:`Experiment`; library code never
reads a ConfigDict. A bad field raises ``ValueError`` whose message starts with the field's
dotted path, e.g. ``task.n must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pkgutil

import ml_collections

from looped_icl import configs as configs_pkg
from looped_icl import covariance
from looped_icl import fields
from looped_icl import models
from looped_icl import tasks

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "cosine")
OBJECTIVES = ("mc", "population")
MODES = ("standard", "gradient_flow")
POPULATION_PROPOSALS = ("defensive", "plain")
MAX_D = 4096
field = fields.field


@dataclasses.dataclass(frozen=True)
class RunConfig(fields.Section):
  """The top-level fields."""
  seed: int = field(0, "Seed of everything random (init, data, evaluation); step keys are "
                    "fold_in(key, step).", check=fields.int_in(0, 2**31 - 1), hyper="data_key")


@dataclasses.dataclass(frozen=True)
class TaskConfig(fields.Section):
  """``config.task``: the law of the in-context regression tasks (built by :meth:`build`)."""
  d: int = field(5, "Covariate dimension d (at most 4096: d x d matrices per task).",
                 check=fields.int_in(1, MAX_D))
  n: int = field(20, "Number n of in-context examples.", check=fields.positive_int)
  covariance: str = field("identity", "Sigma family: identity | diagonal | rotated | condition | "
                          "ar1 | power_law.", choices=covariance.FAMILIES, hyper="task")
  spectrum: tuple = field((), "Eigenvalues of Sigma for diagonal/rotated (length d).",
                          hyper="task")
  # Family parameters are checked even when the family does not use them: a bad value is a
  # mistake either way.
  kappa: float = field(1.0, "Condition number of the condition family.",
                       check=fields.in_range(1.0, float("inf")), hyper="task")
  rho: float = field(0.0, "AR(1) correlation of the ar1 family.",
                     check=fields.in_range(-1.0, 1.0, low_open=True, high_open=True),
                     hyper="task")
  alpha: float = field(1.0, "Decay exponent of the power_law family.",
                       check=fields.in_range(0.0, float("inf")), hyper="task")
  cov_seed: int = field(0, "Seed of the rotation U of the rotated family.",
                        check=fields.nonnegative_int, hyper="task")
  weight_prior: str = field("identity", "Prior of w*: identity (N(0, I)) | inverse_covariance "
                            "(N(0, Sigma^-1)).", choices=tasks.WEIGHT_PRIORS)
  noise_std: float = field(0.0, "Label-noise standard deviation sigma.",
                           check=fields.nonnegative, hyper="task")
  design: str = field("gaussian", "Covariate law with covariance Sigma: gaussian | uniform | "
                      "student_t | sphere | gamma.", choices=tasks.DESIGNS)
  random_cov_kappa: float = field(0.0, "If > 0, each training task draws its own random Sigma "
                                  "with this condition number (OOD).", check=fields.nonnegative)

  def check(self):
    if self.random_cov_kappa != 0 and self.random_cov_kappa < 1:
      raise ValueError(f"random_cov_kappa must be 0 (off) or >= 1, got {self.random_cov_kappa!r}")

  def build(self) -> tasks.TaskDistribution:
    """The task distribution (Sigma built and checked: a bad spectrum raises naming it)."""
    spectrum = self.spectrum if self.covariance in ("diagonal", "rotated") else None
    cov = covariance.make_covariance(self.covariance, self.d, spectrum=spectrum, kappa=self.kappa,
                                     rho=self.rho, alpha=self.alpha, cov_seed=self.cov_seed)
    return tasks.make_task(cov, self.n, noise_std=self.noise_std, weight_prior=self.weight_prior,
                           design=self.design, random_cov_kappa=self.random_cov_kappa or None)


@dataclasses.dataclass(frozen=True)
class TrainConfig(fields.Section):
  """``config.train``: the optimiser, the objective, logging, checkpoints and evaluation."""
  steps: int = field(1000, "Optimisation steps.", check=fields.positive_int)
  batch_size: int = field(1024, "Tasks per step (mc) or samples of S per step (population).",
                          check=fields.positive_int)
  optimizer: str = field("adam", "adam | adamw | sgd.", choices=OPTIMIZERS)
  learning_rate: float = field(1e-2, "Learning rate (the peak of a schedule).",
                               check=fields.positive, hyper="learning_rate")
  b1: float = field(0.9, "Adam/AdamW first-moment decay.",
                    check=fields.in_range(0.0, 1.0, high_open=True))
  b2: float = field(0.999, "Adam/AdamW second-moment decay.",
                    check=fields.in_range(0.0, 1.0, high_open=True))
  weight_decay: float = field(0.0, "AdamW weight decay.", check=fields.nonnegative)
  momentum: float = field(0.0, "SGD momentum (0 = plain GD).",
                          check=fields.in_range(0.0, 1.0, high_open=True))
  schedule: str = field("constant", "constant | step (times decay_factor every decay_every "
                        "steps) | cosine (to 0 at the end).", choices=SCHEDULES)
  decay_every: int = field(1000, "Steps between decays of the step schedule.",
                           check=fields.positive_int)
  decay_factor: float = field(0.5, "Factor of each decay of the step schedule.",
                              check=fields.in_range(0.0, 1.0, low_open=True))
  clip_per_matrix: float = field(0.0, "Clip each weight matrix's gradient to this Frobenius "
                                 "norm (Ahn et al.); 0 = off.", check=fields.nonnegative)
  clip_global_norm: float = field(0.0, "Clip the global gradient norm; 0 = off.",
                                  check=fields.nonnegative)
  objective: str = field("mc", "mc (Monte Carlo over tasks) | population (exact "
                         "Rao-Blackwellised; preconditioner/gdpp/fixed).", choices=OBJECTIVES)
  forward: str = field("gram", "gram (exact fast path, linear attention) | tokens (reference "
                       "path; relu/softmax).", choices=models.FORWARDS)
  resample_every: int = field(1, "Fresh data every k steps; 0 = one fixed sample for the whole "
                              "run.", check=fields.nonnegative_int)
  mode: str = field("standard", "standard | gradient_flow (plain GD on a fixed population "
                    "objective: sgd, momentum 0, population, resample_every 0, constant).",
                    choices=MODES)
  log_every: int = field(100, "Log (and check for NaN) every k steps.",
                         check=fields.positive_int)
  checkpoint_every: int = field(1000, "Checkpoint every k steps (a multiple of log_every).",
                                check=fields.positive_int)
  keep_checkpoints: int = field(3, "Checkpoints kept.", check=fields.positive_int)
  tensorboard: bool = field(True, "Also write the logged scalars as TensorBoard event files in "
                            "workdir/tensorboard.")
  eval_tasks: int = field(10000, "Fresh tasks for the final evaluation (summary's "
                          "final_eval_loss).", check=fields.positive_int)
  eval_population_samples: int = field(10000, "Importance-sampled S for the population loss "
                                       "of the summary and of loss vs loops.",
                                       check=fields.positive_int)
  population_proposal: str = field("defensive", "Law of the population objective's S: "
                                   "defensive (half plain, half inflated Sigma, weighted) | "
                                   "plain.", choices=POPULATION_PROPOSALS)

  def check(self):
    if self.checkpoint_every % self.log_every:
      raise ValueError(f"checkpoint_every must be a multiple of log_every={self.log_every}, "
                       f"got {self.checkpoint_every}")
    if self.mode == "gradient_flow":
      needs = {"optimizer": "sgd", "momentum": 0.0, "objective": "population",
               "resample_every": 0, "schedule": "constant"}
      for name, want in needs.items():
        if getattr(self, name) != want:
          raise ValueError(f"{name} must be {want!r} when mode='gradient_flow', "
                           f"got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class SolverConfig(fields.Section):
  """``config.solver``: the float64 L-BFGS population-optimum solver (:mod:`looped_icl.solver`)."""
  samples: int = field(20000, "Importance-weighted S of each fit, restart choice and pilot.",
                       check=fields.positive_int)
  test_samples: int = field(100000, "Held-out S of the reported optimum loss and its standard "
                            "error.", check=fields.positive_int)
  restarts: int = field(4, "Random restarts.", check=fields.positive_int)
  max_iters: int = field(500, "L-BFGS iterations per restart.", check=fields.positive_int)


# The schema: ConfigDict section -> its typed dataclass ("" is the top level).
SECTIONS = {"": RunConfig, "task": TaskConfig, "model": models.ModelConfig, "train": TrainConfig,
            "solver": SolverConfig}


def base_config() -> ml_collections.ConfigDict:
  """The full schema with its defaults, generated from :data:`SECTIONS`."""
  config = ml_collections.ConfigDict(fields.defaults(RunConfig))
  for name, cls in SECTIONS.items():
    if name:
      config[name] = ml_collections.ConfigDict(fields.defaults(cls))
  return config


def field_docs() -> dict[str, str]:
  """{dotted field: one-line doc} of every config field."""
  return {(f"{name}.{k}" if name else k): doc for name, cls in SECTIONS.items()
          for k, doc in fields.docs(cls).items()}


def hyper_fields() -> dict[str, str]:
  """{dotted field: Hyper leaf} of the fields runs of one vmapped group may differ in."""
  return {(f"{name}.{k}" if name else k): leaf for name, cls in SECTIONS.items()
          for k, leaf in fields.hyper_fields(cls).items()}


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
  steps = config.train.steps   # resolved (steps may be a FieldReference)
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
class Experiment:
  """Everything a run needs, typed and validated (``task_config``: the fields ``task`` is built
  from)."""
  seed: int
  task: tasks.TaskDistribution
  model: models.ModelConfig
  train: TrainConfig
  solver: SolverConfig
  task_config: TaskConfig

  def sections(self) -> dict[str, fields.Section]:
    """The typed config sections, keyed as in :data:`SECTIONS`."""
    return {"": RunConfig(seed=self.seed), "task": self.task_config, "model": self.model,
            "train": self.train, "solver": self.solver}


def program_fields(exp: Experiment) -> dict[str, object]:
  """{dotted field: value} of the fields that define the compiled training program: all but the
  ``hyper`` ones. Runs with equal program fields can train as one vmapped group."""
  return {(f"{name}.{k}" if name else k): v for name, section in exp.sections().items()
          for k, v in fields.static_values(section).items()}


def from_config(config: ml_collections.ConfigDict) -> Experiment:
  """Validates a ConfigDict and converts it into an :class:`Experiment`."""
  sections = [name for name in SECTIONS if name]
  unknown = sorted(set(config.keys()) - set(sections) - set(fields.defaults(RunConfig)))
  if unknown:
    raise ValueError(f"{unknown[0]} is not a config field; fields are "
                     f"{sorted(base_config().keys())}")
  run = fields.build(RunConfig, {k: config[k] for k in fields.defaults(RunConfig) if k in config},
                     "")
  values = {name: config[name] if name in config else {} for name in sections}
  task_config = fields.build(TaskConfig, values["task"], "task.")
  try:
    task = task_config.build()
  except ValueError as e:
    raise ValueError(f"task.{e}") from None
  model = fields.build(models.ModelConfig, values["model"], "model.", d=task.d)
  train = fields.build(TrainConfig, values["train"], "train.")
  solver = fields.build(SolverConfig, values["solver"], "solver.")
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
  return Experiment(seed=run.seed, task=task, model=model, train=train, solver=solver,
                    task_config=task_config)


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
