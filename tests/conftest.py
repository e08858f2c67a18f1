"""Test-wide JAX settings: rank promotion raises, so implicit broadcasting is a bug.

Compiled programs go to a persistent cache shared by the xdist workers: every training run builds
fresh jitted closures, so without it identical programs (the same quick config trained by several
tests, in both workers) compile again each time; with it the suite's CPU time halves. The
subprocesses the tests start (CLI runs, the notebook's kernel, the install test's venv) share it.
"""

import os
import pathlib

import jax
import pytest

CACHE = str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
# The CLI runs the tests start (subprocesses) read the same cache: JAX takes its flags from the
# environment too.
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"


@pytest.fixture
def x64():
  """Runs a test under jax_enable_x64 and restores the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)
