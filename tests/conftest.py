"""Test-wide JAX settings: rank promotion raises, so implicit broadcasting is a bug.

Compiled programs go to a persistent cache shared by the xdist workers: every training run builds
fresh jitted closures, so without it identical programs (the same quick config trained by several
tests, in both workers) compile again each time; with it the suite's CPU time halves. The
subprocesses the tests start (CLI runs, the notebook's kernel, the install test's venv) share it.
"""

import os
import pathlib

CACHE = str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
# JAX reads these when it is imported, here and in the subprocesses (they inherit the environment).
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE
# Every program, however small: the two workers (and the subprocesses) otherwise each compile the
# same few hundred eager ops (-5% CPU on the unit-test modules, measured).
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# The suite compiles ~900 distinct XLA programs and runs most of them once, so compilation is
# most of its CPU time; LLVM at -O1 instead of -O2 compiles them ~25% faster. It changes no
# number: LLVM keeps IEEE semantics at every level (XLA's fast math is off), and the golden
# tests (test_train_step.py, recorded at the default level) stay bit-equal.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1"]))

# One OpenBLAS thread (numpy's and scipy's BLAS read it when loaded, here and in the
# subprocesses): the tests' BLAS calls are on tiny matrices, and an idle OpenBLAS pool spins
# after each call, taking the cores from XLA in this worker and the other (the solver limits its
# own L-BFGS loop with threadpoolctl; this covers every other call; measured on four solver-heavy
# modules: 343 -> 333 s CPU, inside this machine's noise). Numbers are unchanged: a 1-thread GEMM
# of these sizes is the same code path.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

assert jax.config.jax_compilation_cache_dir == CACHE, "JAX was imported before tests/conftest.py"
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
  """Runs a test under jax_enable_x64 and restores the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


# The longest modules (minutes of one worker each, measured on a clean clone) start first, so
# neither xdist worker is left alone with one of them at the end (--dist=loadscope hands out
# whole modules in collection order).
_LONGEST_FIRST = ("test_reproduce_gatmiry.py", "test_reproduce_gatmiry_section5.py",
                  "test_reproduce_ahn_curves.py",
                  "test_reproduce_ahn.py", "test_notebook.py", "test_reproduce_ood_symmetry.py",
                  "test_multihost.py", "test_sharding.py", "test_install.py",
                  "test_reproduce_chen.py", "test_reproduce_gatmiry_minimizer.py",
                  "test_reproduce_ahn_gdpp_rotation.py",
                  "test_configs.py", "test_sweep.py", "test_train.py", "test_workdir.py",
                  "test_solver.py", "test_reproduce_common.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: order kept within
