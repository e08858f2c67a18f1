"""Config validation: every field's bad value fails fast with a message naming the field."""

import dataclasses
import pathlib
import re

import pytest

from looped_icl import config_lib
from looped_icl import fields
from looped_icl import models
from looped_icl import train_step

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "looped_icl" / "configs"
CONFIG_NAMES = config_lib.config_names()


def load_config(name: str, arg: str = ""):
  return config_lib.load(f"{name}:{arg}" if arg else name)


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("arg", ["", "quick"])
def test_every_config_validates(name, arg):
  exp = config_lib.from_config(load_config(name, arg))
  assert exp.model.d == exp.task.d


def test_configs_have_run_command_and_expectation():
  for name in CONFIG_NAMES:
    doc = (CONFIG_DIR / f"{name}.py").read_text()
    assert f"--config={name}" in doc, name
    assert "Expected" in doc, name


BAD_FIELDS = [
    ("seed", -1, "seed"),
    ("task.d", 0, "task.d"),
    ("task.n", 0, "task.n"),
    ("task.covariance", "banana", "task.covariance"),
    ("task.spectrum", (1.0, 2.0), "task.spectrum"),
    ("task.kappa", 0.5, "task.kappa"),
    ("task.rho", 1.0, "task.rho"),
    ("task.alpha", -1.0, "task.alpha"),
    ("task.cov_seed", -3, "task.cov_seed"),
    ("task.weight_prior", "flat", "task.weight_prior"),
    ("task.noise_std", -0.1, "task.noise_std"),
    ("task.design", "cauchy", "task.design"),
    ("task.random_cov_kappa", 0.5, "task.random_cov_kappa"),
    ("model.kind", "recurrent", "model.kind"),
    ("model.num_layers", 0, "model.num_layers"),
    ("model.parametrization", "lora", "model.parametrization"),
    ("model.eta", 0.0, "model.eta"),
    ("model.activation", "gelu", "model.activation"),
    ("model.per_loop_eta", True, "model.per_loop_eta"),
    ("model.init_scale", -1.0, "model.init_scale"),
    ("train.steps", 0, "train.steps"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.optimizer", "lion", "train.optimizer"),
    ("train.learning_rate", 0.0, "train.learning_rate"),
    ("train.b1", 1.0, "train.b1"),
    ("train.b2", -0.1, "train.b2"),
    ("train.weight_decay", -1.0, "train.weight_decay"),
    ("train.momentum", 1.5, "train.momentum"),
    ("train.schedule", "linear", "train.schedule"),
    ("train.decay_every", 0, "train.decay_every"),
    ("train.decay_factor", 0.0, "train.decay_factor"),
    ("train.clip_per_matrix", -1.0, "train.clip_per_matrix"),
    ("train.clip_global_norm", -1.0, "train.clip_global_norm"),
    ("train.objective", "hinge", "train.objective"),
    ("train.forward", "fft", "train.forward"),
    ("train.resample_every", -1, "train.resample_every"),
    ("train.mode", "langevin", "train.mode"),
    ("train.log_every", 0, "train.log_every"),
    ("train.checkpoint_every", 150, "train.checkpoint_every"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints"),
    ("train.eval_tasks", 0, "train.eval_tasks"),
    ("train.eval_population_samples", 0, "train.eval_population_samples"),
    ("train.population_proposal", "inflated", "train.population_proposal"),
    ("solver.samples", 0, "solver.samples"),
    ("solver.test_samples", 0, "solver.test_samples"),
    ("solver.restarts", 0, "solver.restarts"),
    ("solver.max_iters", 0, "solver.max_iters"),
]


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


def _wrong_type(default):
  """A value of another type than the field's default."""
  if isinstance(default, bool):
    return "yes"
  if isinstance(default, (int, float)):
    return "1" if isinstance(default, float) else 1.5
  return 3 if isinstance(default, str) else "abc"


@pytest.mark.parametrize("path", sorted(config_lib.field_docs()))
def test_every_field_rejects_a_wrong_type_naming_it(path):
  """Generated from the schema, so a new field is covered with no edit here."""
  config = config_lib.base_config()
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  _set(config, path, _wrong_type(node[leaf]))
  with pytest.raises(ValueError, match=rf"^{re.escape(path)} must"):
    config_lib.from_config(config)


@pytest.mark.parametrize("path,value,field", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_field_names_the_field(path, value, field):
  config = config_lib.base_config()
  if path == "task.spectrum":
    config.task.covariance = "rotated"
  _set(config, path, value)
  with pytest.raises(ValueError) as err:
    config_lib.from_config(config)
  message = str(err.value)
  assert message.startswith(field) or f" {field}" in message, message
  assert "\n" not in message


def test_non_psd_spectrum_and_cross_field_checks():
  config = config_lib.base_config()
  config.task.covariance = "diagonal"
  config.task.spectrum = (1.0, 1.0, -0.5, 1.0, 1.0)
  with pytest.raises(ValueError, match=r"^task\.spectrum"):
    config_lib.from_config(config)

  config = config_lib.base_config()
  config.model.activation = "relu"
  with pytest.raises(ValueError, match=r"^train\.forward"):
    config_lib.from_config(config)

  config = config_lib.base_config()
  config.model.parametrization = "full"
  config.train.objective = "population"
  with pytest.raises(ValueError, match=r"^train\.objective"):
    config_lib.from_config(config)

  config = config_lib.base_config()
  config.train.mode = "gradient_flow"
  with pytest.raises(ValueError, match=r"^train\.optimizer must be 'sgd'"):
    config_lib.from_config(config)


def test_unknown_field_is_named():
  config = config_lib.base_config()
  config.task.unlisted = 3
  with pytest.raises(ValueError, match=r"task\.unlisted is not a config field"):
    config_lib.from_config(config)


def test_load_accepts_paths_and_names():
  by_name = config_lib.load("default:quick")
  by_path = config_lib.load(str(CONFIG_DIR / "default.py") + ":quick")
  assert by_name.to_dict() == by_path.to_dict()
  assert by_name.train.steps < config_lib.load("default").train.steps
  with pytest.raises(ValueError, match="^config 'no_such_config' is neither a config name"):
    config_lib.load("no_such_config")
  with pytest.raises(ValueError, match="^config file 'no/such.py' does not exist"):
    config_lib.load("no/such.py:quick")


def test_schema_is_the_dataclasses():
  """The ConfigDict is generated from the typed sections: same fields, same defaults, a doc each."""
  config = config_lib.base_config()
  for name, cls in config_lib.SECTIONS.items():
    node = config[name] if name else config
    for f in fields.config_fields(cls):
      assert node[f.name] == f.default, (name, f.name)
      assert f.metadata["doc"] and "\n" not in f.metadata["doc"], (name, f.name)
  assert set(config_lib.field_docs()) == {"seed"} | {
      f"{s}.{k}" for s in ("task", "model", "train", "solver") for k in config[s].keys()}
  exp = config_lib.from_config(config)
  assert exp.train == config_lib.TrainConfig() and exp.solver == config_lib.SolverConfig()
  assert exp.model == models.ModelConfig(d=config.task.d)


def test_hyper_metadata_names_the_hyper_leaves():
  """The fields marked ``hyper`` are exactly what train_step.Hyper carries, and nothing else
  may differ inside a vmapped group."""
  leaves = {f.name for f in dataclasses.fields(train_step.Hyper)}
  assert set(config_lib.hyper_fields().values()) == leaves
  assert config_lib.hyper_fields()["train.learning_rate"] == "learning_rate"
  assert config_lib.hyper_fields()["seed"] == "data_key"
  program = config_lib.program_fields(config_lib.from_config(config_lib.base_config()))
  assert not set(program) & set(config_lib.hyper_fields())
  assert set(program) | set(config_lib.hyper_fields()) == set(config_lib.field_docs())


def test_gatmiry_steps_follow_an_overridden_learning_rate():
  """train.steps is a FieldReference on train.learning_rate: the flow time stays 200 (60 quick)."""
  for arg, flow_time in (("", 200.0), ("quick", 60.0)):
    config = config_lib.load(f"gatmiry_looped:{arg}" if arg else "gatmiry_looped")
    assert config.train.steps * config.train.learning_rate == pytest.approx(flow_time)
    config.train.learning_rate = 0.025
    assert config.train.steps == round(flow_time / 0.025)
    assert config_lib.from_config(config).train.steps == round(flow_time / 0.025)
