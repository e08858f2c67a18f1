"""The config schema's building block: a typed field with its default, doc and validation.

A config section is a frozen dataclass deriving from :class:`Section` whose fields come from
:func:`field`. That one definition gives the field's type (from its default), its default, its
one-line doc, its validation (``check``, ``choices``; run in ``__post_init__``, with
cross-field rules in :meth:`Section.check`) and, through ``hyper``, whether runs of one vmapped
group may differ in it: ``hyper`` names the leaf of :class:`looped_icl.train.Hyper` that carries
the value as a traced number. The ConfigDict schema (:func:`defaults`), the typed conversion
(:func:`build`), the sweep grouping and the trainer's one-program check all read these fields.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from looped_icl import validation

Check = Callable[[str, Any], Any]
FLOAT32_MAX = float(np.finfo(np.float32).max)


def field(default, doc: str, *, check: Check | None = None, choices: Sequence[str] | None = None,
          hyper: str | None = None, in_config: bool = True):
  """A config field. ``default`` also fixes its type (bool, int, float, str or a tuple of floats).

  Args:
    default: the default value (None: required, no default; only for ``in_config=False``).
    doc: one line: what the field means.
    check: ``check(name, value)`` raising ValueError with a one-line message naming ``name``.
    choices: the allowed strings.
    hyper: the :class:`looped_icl.train.Hyper` leaf that carries it (runs of one vmapped group
      may differ in it); None: it is part of the compiled program.
    in_config: False for a value derived from other fields (not in the ConfigDict).
  """
  metadata = {"doc": doc, "check": check, "choices": tuple(choices) if choices else None,
              "hyper": hyper, "in_config": in_config}
  if default is None:
    return dataclasses.field(metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def _typed(name: str, default, value):
  """``value`` converted to the type of ``default``, or a one-line ValueError."""
  if isinstance(default, bool):
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
  if isinstance(default, int):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)
  if isinstance(default, float):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
      raise ValueError(f"{name} must be a number, got {value!r}")
    if np.isfinite(value) and abs(value) > FLOAT32_MAX:   # would become inf in float32 arrays
      raise ValueError(f"{name} must be at most {FLOAT32_MAX:.3g} in magnitude, got {value!r}")
    return float(value)
  if isinstance(default, str):
    if not isinstance(value, str):
      raise ValueError(f"{name} must be a string, got {value!r}")
    return value
  if isinstance(default, tuple):
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
      raise ValueError(f"{name} must be a sequence of numbers, got {value!r}")
    return tuple(_typed(name, 0.0, v) for v in value)
  return value


class Section:
  """Base of a config section (a frozen dataclass of :func:`field` s): validates on creation."""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.default is not dataclasses.MISSING:
        value = _typed(f.name, f.default, value)
      if f.metadata.get("choices"):
        validation.choice(f.name, value, f.metadata["choices"])
      if f.metadata.get("check"):
        f.metadata["check"](f.name, value)
      object.__setattr__(self, f.name, value)
    self.check()

  def check(self) -> None:
    """Cross-field rules (a subclass overrides); raises ValueError naming the field."""


def config_fields(cls) -> list[dataclasses.Field]:
  """The fields of section ``cls`` that are in the ConfigDict (not derived)."""
  return [f for f in dataclasses.fields(cls) if f.metadata.get("in_config", True)]


def defaults(cls) -> dict[str, Any]:
  """{name: default} of the section's config fields: its part of the ConfigDict schema."""
  return {f.name: f.default for f in config_fields(cls)}


def docs(cls) -> dict[str, str]:
  """{name: one-line doc} of the section's config fields."""
  return {f.name: f.metadata["doc"] for f in config_fields(cls)}


def hyper_fields(cls) -> dict[str, str]:
  """{name: Hyper leaf} of the fields runs of one vmapped group may differ in."""
  return {f.name: f.metadata["hyper"] for f in config_fields(cls) if f.metadata.get("hyper")}


def static_values(section: Section) -> dict[str, Any]:
  """{name: value} of the config fields that are part of the compiled program (not ``hyper``)."""
  return {f.name: getattr(section, f.name) for f in config_fields(type(section))
          if not f.metadata.get("hyper")}


def build(cls, values: Mapping[str, Any], prefix: str, **derived):
  """The section ``cls`` from ``values`` (a ConfigDict section), validated; a ValueError's
  message starts with ``prefix.field``. ``derived``: the values of its derived fields."""
  names = [f.name for f in config_fields(cls)]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ValueError(f"{prefix}{unknown[0]} is not a config field; fields are {names}")
  try:
    return cls(**{name: values[name] for name in names if name in values}, **derived)
  except ValueError as e:
    raise ValueError(f"{prefix}{e}") from None


def _in_range(low, high, low_open, high_open, name, value):
  return validation.in_range(name, value, low, high, low_open=low_open, high_open=high_open)


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
  """A check that the value lies in the interval (see :func:`validation.in_range`)."""
  return functools.partial(_in_range, low, high, low_open, high_open)


def _int_in(low, high, name, value):
  if not low <= value <= high:
    raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
  return value


def int_in(low: int, high: int) -> Check:
  """A check that an integer lies in [low, high]."""
  return functools.partial(_int_in, low, high)


def nonnegative_int(name: str, value) -> int:
  if value < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  return value


positive_int = validation.positive_int
positive = validation.positive
nonnegative = validation.nonnegative
