"""JAX's persistent compilation cache for command-line runs (on by default, in a user cache dir).

A run compiles a few dozen XLA programs (the training chunk, the samplers, the evaluation and
solver objectives; ~1-3 s each on a CPU) and many more small ones (0.05-1 s). The persistent
cache stores them keyed by the program and the compiler options, so a later run of the same
shapes (a rerun, another seed or learning rate of the same config, ``looped-icl solve`` after
``train`` where programs coincide) loads them instead. A cache hit runs the same executable, so
it changes no number. Command-line runs store every program, however quick to compile (JAX's
``jax_persistent_cache_min_compile_time_secs`` is 1 s by default, which left the small ones to
compile again on every run: the README job's second run compiled 18.0 s with it, 5.5 s without,
BUILD_NOTES.md), unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise.

``looped-icl --compile_cache_dir=...``: ``auto`` (the default) uses JAX's own setting when the
user made one (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), else :func:`default_dir`;
``none`` turns it off; any other value is the directory. Library calls (the notebook, tests)
are left to JAX's own configuration.
"""

from __future__ import annotations

import os

import jax

AUTO, NONE = "auto", "none"


def default_dir() -> str:
  """``$XDG_CACHE_HOME/looped_icl/jax`` (``~/.cache/looped_icl/jax`` without XDG_CACHE_HOME)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "looped_icl", "jax")


def configure(spec: str = AUTO) -> str | None:
  """Sets JAX's persistent compilation cache for this process from ``spec`` (module doc);
  returns the directory in use, or None when it is off. Call before the first compilation."""
  if spec == NONE:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  if spec == AUTO:
    if jax.config.jax_compilation_cache_dir:   # the user's (or JAX_COMPILATION_CACHE_DIR)
      return jax.config.jax_compilation_cache_dir
    spec = default_dir()
  jax.config.update("jax_compilation_cache_dir", spec)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return spec
