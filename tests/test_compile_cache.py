"""The command line's persistent compilation cache: the user's JAX setting wins, else a user
cache dir; 'none' turns it off; a CLI run writes its programs there."""

import os
import subprocess
import sys

import jax
import pytest

from looped_icl import compile_cache


@pytest.fixture
def restore_cache_dir():
  previous = jax.config.jax_compilation_cache_dir
  threshold = jax.config.jax_persistent_cache_min_compile_time_secs
  yield
  jax.config.update("jax_compilation_cache_dir", previous)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.default_dir() == str(tmp_path / "looped_icl" / "jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compile_cache.default_dir() == os.path.expanduser("~/.cache/looped_icl/jax")


def test_auto_keeps_the_users_setting_else_uses_the_default(restore_cache_dir, monkeypatch,
                                                            tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert compile_cache.configure("auto") == str(tmp_path / "mine")
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.configure("auto") == str(tmp_path / "looped_icl" / "jax")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "looped_icl" / "jax")
  assert compile_cache.configure("none") is None
  assert jax.config.jax_compilation_cache_dir is None
  assert compile_cache.configure(str(tmp_path / "x")) == str(tmp_path / "x")


LAUNCHER = """
import sys
import jax
from looped_icl.cli import common

def main(argv):
  jax.jit(lambda x: x + 1)(1.0).block_until_ready()
  print("CACHE", jax.config.jax_compilation_cache_dir)

common.run(main, ["looped-icl test", *sys.argv[1:]], "test launcher")
"""


@pytest.mark.parametrize("flag, expected", [(None, "xdg/looped_icl/jax"), ("none", None)])
def test_every_subcommand_configures_the_cache(tmp_path, flag, expected):
  """The launcher every subcommand runs through sets the cache before ``main`` (and a program
  lands in the default dir), unless JAX's own setting exists (tests/conftest.py's is removed)."""
  # Without the tests' own threshold too: the launcher keeps even this tiny program.
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"))
  args = [] if flag is None else [f"--compile_cache_dir={flag}"]
  out = subprocess.run([sys.executable, "-c", LAUNCHER, *args], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith("CACHE "))
  assert line == f"CACHE {tmp_path / expected if expected else None}", line
  if expected:
    assert list((tmp_path / expected).iterdir())   # the program was written there


def test_every_program_is_kept_unless_the_user_set_the_threshold(restore_cache_dir, monkeypatch,
                                                                 tmp_path):
  # JAX keeps only programs that took >= 1 s to compile by default; a command-line run keeps all
  # of them (the small ones are most of a warm run's compiling), unless the user chose.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  compile_cache.configure(str(tmp_path / "a"))
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2.5")
  compile_cache.configure(str(tmp_path / "b"))
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
  # Off: nothing is stored, and the threshold is left alone.
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  compile_cache.configure("none")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
