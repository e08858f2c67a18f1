"""The ``looped-icl`` entry point: huge pages for malloc, set once by restarting the process."""

import os
import subprocess
import sys

import pytest

from looped_icl import cli

GNU = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") if hasattr(
    os, "confstr") else False


@pytest.mark.skipif(not GNU, reason="GLIBC_TUNABLES is read by glibc's loader only")
def test_huge_pages_environment_adds_the_tunable_once_and_respects_the_user():
  added = cli.huge_pages_environment({"PATH": "/bin"})
  assert added == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept, in front.
  assert cli.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})[
      "GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # Already restarted, the user's own hugetlb choice, or opted out: nothing to do.
  assert cli.huge_pages_environment(added) is None
  assert cli.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert cli.huge_pages_environment({"LOOPED_ICL_HUGE_PAGES": "0"}) is None


@pytest.mark.skipif(not GNU, reason="GLIBC_TUNABLES is read by glibc's loader only")
@pytest.mark.parametrize("opt_out", [False, True])
def test_the_command_restarts_once_with_huge_pages(opt_out):
  # The command line runs twice (the restart replaces the first process before its exit
  # handlers run), so the exit handler reports the second process's environment, once.
  code = ("import atexit, os, sys; atexit.register(lambda: print('tunables', "
          "os.environ.get('GLIBC_TUNABLES'))); "
          "sys.argv = ['looped-icl', 'help']; from looped_icl import cli; cli.main()")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if opt_out:
    env["LOOPED_ICL_HUGE_PAGES"] = "0"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
  assert out.returncode == 0, out.stderr[-1000:]
  assert "The ``looped-icl`` console command" in out.stdout
  reports = [line for line in out.stdout.splitlines() if line.startswith("tunables")]
  assert len(reports) == 1, out.stdout
  assert reports[0].split()[1] == ("None" if opt_out else "glibc.malloc.hugetlb=1"), reports
