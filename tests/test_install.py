"""The package installs from a built wheel into a fresh virtualenv and runs from any directory.

The wheel is built from a copy of the package's own files (pyproject.toml, README.md,
looped_icl/), installed into a new venv, and the ``looped-icl`` console command of that venv runs
a quick train and a quick reproduction with a temporary directory as its working directory.
To stay fast the venv reuses the test environment's third-party packages (a .pth line; their
.pth hooks, such as this checkout's editable install, are not run), and
:func:`test_declared_dependencies_cover_every_import` checks that the wheel declares every
third-party package the code imports, so nothing works here only because it was lent.
"""

import ast
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """(python of a fresh venv with the wheel installed, the wheel's path)."""
  tmp = tmp_path_factory.mktemp("install")
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / "looped_icl", src / "looped_icl",
                  ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True,
                 cwd=tmp, capture_output=True)
  (wheel,) = (tmp / "dist").glob("looped_icl-*.whl")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
  python = tmp / "venv" / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                  "--no-deps", str(wheel)], check=True, cwd=tmp, capture_output=True)
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True,
                           text=True).stdout.strip()
  lent = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
          if os.path.isdir(p)]
  pathlib.Path(purelib, "lent_test_packages.pth").write_text("\n".join(dict.fromkeys(lent)))
  return python, wheel


def _run(venv_python, *args, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env.update(JAX_PLATFORMS="cpu", PATH=f"{venv_python.parent}:{env['PATH']}")
  return subprocess.run(["looped-icl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600, check=False)


def test_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
  python, _ = venv
  out = subprocess.run([str(python), "-c", "import looped_icl, looped_icl.configs as c; "
                        "print(looped_icl.__file__); print(c.__file__)"], cwd=tmp_path,
                       capture_output=True, text=True, check=True).stdout.split()
  assert all(str(python.parents[1]) in path for path in out), out


def test_console_command_trains_and_reproduces_from_anywhere(venv, tmp_path):
  python, _ = venv
  out = _run(python, "train", "--config=default:quick", f"--workdir={tmp_path / 'W'}",
             cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / "W" / "summary.json").read_text())
  assert summary["population_loss"] < 1.0
  # The cheapest quick reproduction (the README's ahn_loss_vs_L runs the same code path; its
  # numbers are tested in test_reproduce_ahn_curves.py).
  out = _run(python, "reproduce", "--experiment=chen_bound", "--quick",
             f"--workdir={tmp_path / 'W2'}", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / "W2" / "results.json").read_text())
  assert results["experiment"] == "chen_bound" and results["quick"] is True
  assert list((tmp_path / "W2").glob("*.png"))


def _imports(tree) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


def test_declared_dependencies_cover_every_import(venv):
  """Every third-party module imported by looped_icl/ belongs to a Requires-Dist of the wheel:
  a core one, or an optional extra's where it is imported only inside a function (torch, for
  ``looped-icl benchmark --compare``)."""
  _, wheel = venv
  with zipfile.ZipFile(wheel) as z:
    metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
  requires = [line.split(":", 1)[1].strip() for line in metadata.decode().splitlines()
              if line.startswith("Requires-Dist:")]
  name = lambda req: re.split(r"[\s<>=!~;\[(]", req)[0].lower().replace("_", "-")
  core = {name(r) for r in requires if "extra ==" not in r}
  extras = {name(r) for r in requires if "extra ==" in r}
  eager, lazy = set(), set()
  for path in (REPO / "looped_icl").rglob("*.py"):
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                             ast.AsyncFunctionDef))]
    inside = set().union(*(_imports(f) for f in functions)) if functions else set()
    eager |= _imports(ast.Module(body=[n for n in tree.body if not isinstance(
        n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))], type_ignores=[]))
    lazy |= inside
  not_ours = set(sys.stdlib_module_names) | {"looped_icl", "__future__"}
  providers = importlib.metadata.packages_distributions()
  dists = lambda m: {d.lower().replace("_", "-") for d in providers.get(m, [m])}
  missing = {m for m in eager - not_ours if not dists(m) & core}
  missing |= {m for m in lazy - eager - not_ours if not dists(m) & (core | extras)}
  assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
