"""Executes notebooks/colab.ipynb top to bottom, as on Colab, and checks the numbers it reports.

The notebook runs in a fresh ipykernel started with this interpreter (``sys.executable``, via a
kernelspec written into tmp_path, so no installed ``python3`` kernelspec of another environment
can be picked up), with its working directory and TMPDIR in tmp_path. Its last cell prints one
JSON line of results, which the tests read.
"""

import json
import os
import sys

import jupyter_client
import nbclient
import nbformat
import numpy as np
import pytest

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks",
                        "colab.ipynb")
KERNEL_NAME = "looped-icl-notebook-test"
CELL_TIMEOUT_S = 600


def _kernel_manager(kernels_dir: str) -> jupyter_client.AsyncKernelManager:
  """A kernel manager whose kernel is ipykernel on this interpreter."""
  spec_dir = os.path.join(kernels_dir, KERNEL_NAME)
  os.makedirs(spec_dir)
  with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "looped_icl test", "language": "python"}, f)
  specs = jupyter_client.kernelspec.KernelSpecManager(kernel_dirs=[kernels_dir])
  return jupyter_client.AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """(executed notebook, the results dict of its last cell); the notebook runs once."""
  tmp = tmp_path_factory.mktemp("notebook")
  run_dir = tmp / "cwd"
  run_dir.mkdir()
  with open(NOTEBOOK) as f:
    nb = nbformat.read(f, as_version=4)
  client = nbclient.NotebookClient(
      nb, km=_kernel_manager(str(tmp / "kernels")), timeout=CELL_TIMEOUT_S,
      resources={"metadata": {"path": str(run_dir)}})
  # Same JAX setting as tests/conftest.py (implicit rank promotion raises) inside the kernel.
  env = dict(os.environ, TMPDIR=str(tmp), JAX_NUMPY_RANK_PROMOTION="raise")
  client.execute(env=env)
  last = [c for c in nb.cells if c.cell_type == "code"][-1]
  text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
  lines = [line for line in text.splitlines() if line.startswith("{")]
  assert lines, f"the last cell printed no JSON line: {text!r}"
  return nb, json.loads(lines[-1])


def test_committed_without_outputs():
  with open(NOTEBOOK) as f:
    nb = nbformat.read(f, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None


def test_runs_and_shows_figures(executed):
  nb, _ = executed
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  # Training curve + Dist panel, heatmaps, loss vs loops: one inline PNG each.
  assert len(images) >= 3


def test_alignment_numbers(executed):
  _, r = executed
  # Dist(M, I) and the residual of the best multiple of Sigma^-1 are projection residuals
  # divided by ||M||_F, so they lie in [0, 1] whenever they are finite.
  for key in ("dist_to_identity", "dist_to_identity_whitened", "alignment_relative_residual",
              "optimum_dist_to_identity_whitened"):
    assert np.isfinite(r[key]) and 0.0 <= r[key] <= 1.0, (key, r[key])
  # The learned A leans towards Sigma^-1: whitened it is closer to a multiple of I than raw
  # (measured 0.48 vs 0.56; Sigma^-1 itself has raw Dist 0.78 and whitened Dist 0).
  assert r["dist_to_identity_whitened"] < r["dist_to_identity"]
  assert np.isfinite(r["alignment_scale"]) and r["alignment_scale"] > 0


def test_loss_vs_loops(executed):
  _, r = executed
  model = np.asarray(r["loss_vs_loops"])
  gd, pgd = np.asarray(r["gd_loss_vs_loops"]), np.asarray(r["pgd_loss_vs_loops"])
  num_layers = model.shape[0] // 2
  assert model.shape == gd.shape == pgd.shape == (2 * num_layers,)
  assert np.all(np.isfinite(model)) and np.all(np.isfinite(gd)) and np.all(np.isfinite(pgd))
  # Exact population losses (MC error of the sample mean over S: ~2%): each loop up to the
  # trained depth lowers the loss by far more than that (measured 1.07, 0.37, 0.19, 0.085).
  assert np.all(np.diff(model[:num_layers]) < 0)
  # At the trained depth the model beats plain GD with its best step by a factor ~2 (measured
  # 0.085 vs 0.19) and PGD(Sigma^-1) with its best step by ~25% (0.085 vs 0.11), margins many
  # times the ~2% MC error: with n = 20 the optimal preconditioner is not a multiple of Sigma^-1.
  assert model[num_layers - 1] < 0.7 * gd[num_layers - 1]
  assert model[num_layers - 1] < 0.95 * pgd[num_layers - 1]


def test_trained_model_near_population_optimum(executed):
  _, r = executed
  assert np.isfinite(r["trained_loss"]) and np.isfinite(r["optimum_loss"])
  assert r["ratio"] == pytest.approx(r["trained_loss"] / r["optimum_loss"])
  # The optimum minimises the loss of the same family on the fit sample; on the independent
  # test sample the trained model can beat it only by MC noise (paired stderr ~3% of the loss).
  assert r["ratio"] > 1 - 4 * r["ratio_stderr"]
  # The notebook's 1500 Adam steps reach 1.027 +- 0.019 (measured; 1000 steps: 1.07, the full
  # 4000-step config: 0.995). 1.15 is 6 paired stderrs above the measured value, room for
  # another platform's floating point changing the training trajectory, not for a broken fit.
  assert r["ratio"] < 1.15
