"""Data-parallel training over 4 fake CPU devices equals single-device training.

Runs in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX
starts, and the rest of the suite runs on one device.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from looped_icl import config_lib, sharding, tasks, train, train_step

    workdir = sys.argv[1]
    one = sharding.data_mesh(jax.devices()[:1])
    out = {"devices": jax.device_count()}

    def rel(a_tree, b_tree):  # max over leaves of ||a - b|| / ||a||
      return max(float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(a))
                 for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)))

    def quick(name, steps=10):
      config = config_lib.load(name)
      config.train.steps = config.train.log_every = config.train.checkpoint_every = steps
      return config_lib.from_config(config)

    # One run, Monte Carlo Gram tasks (the population objective is covered by the group below).
    exp = quick("ahn_multilayer:quick")
    p1, _ = train.train(exp, f"{workdir}/one", mesh=one)
    p4, _ = train.train(exp, f"{workdir}/four")
    out["single_run"] = rel(p1, p4)

    # The batch really is split: each device holds B / 4 of the tasks.
    exp = quick("ahn_multilayer:quick")
    layout = sharding.layout_for(None)
    batch = jax.jit(lambda k: layout.constrain_batch(tasks.sample_gram(k, exp.task, 64), 64))(
        jax.random.key(0))
    out["gram_shards"] = [list(s.data.shape) for s in batch.gram.addressable_shards]
    out["batch_equal_to_one_device"] = bool(np.array_equal(
        np.asarray(batch.gram), np.asarray(tasks.sample_gram(jax.random.key(0), exp.task, 64).gram)))
    hlo = train_step.make_train_chunk(exp, layout).lower(
        *(lambda s: (s["params"], s["opt_state"]))(train_step.initial_state(exp)),
        train_step.make_hyper(exp), jax.numpy.arange(10)).compile().as_text()  # trained above
    out["chunk_is_partitioned"] = "all-reduce" in hlo

    # A vmapped group of 4 runs (seeds): split over the devices, one run per device.
    exps = []
    for seed in range(4):
      config = config_lib.load("default:quick")
      config.seed = seed
      config.train.steps = config.train.log_every = config.train.checkpoint_every = 10
      exps.append(config_lib.from_config(config))
    out["split_runs"] = sharding.layout_for(4).split_runs
    runs4 = train.train_runs(exps, [f"{workdir}/g4-{i}" for i in range(4)])
    runs1 = train.train_runs(exps, [f"{workdir}/g1-{i}" for i in range(4)], mesh=one)
    out["group"] = max(rel(a.params, b.params) for a, b in zip(runs1, runs4))
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  # conftest's XLA flags (the compile-time ones) are kept; the device count is added.
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path_factory.mktemp("shard"))],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_four_devices(result):
  assert result["devices"] == 4


def test_sharded_training_equals_single_device(result):
  # Same data (partitionable threefry), same math; only the batch mean's summation order differs
  # (per-device partial sums + all-reduce). Measured 5.4e-7 after 10 float32 Adam steps (1.0e-7
  # for the population objective).
  assert result["single_run"] <= 1e-6


def test_batch_is_split_over_devices(result):
  assert result["gram_shards"] == [[16, 6, 6]] * 4
  assert result["batch_equal_to_one_device"]      # the numbers do not depend on the mesh
  assert result["chunk_is_partitioned"]            # the training step reduces across devices


def test_vmapped_group_is_split_by_run_and_equals_one_device(result):
  assert result["split_runs"]
  assert result["group"] <= 1e-6   # measured 0: each device trains whole runs, no collectives
