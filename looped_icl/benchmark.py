"""Training-step benchmarks: full steps (sampling + forward + backward + optimizer) per second.

Each workload is an :class:`~looped_icl.config_lib.Experiment` built from the base config; it is
timed through the trainer's own jitted chunk (``train_step.make_train_chunk``), after compilation and
a warm-up, as the median over repeats. FLOP counts come from XLA's cost analysis of one step of
the compiled program; the matmul peak is measured on this machine (a large float32 GEMM).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from looped_icl import config_lib
from looped_icl import train_step

# name -> list of (label, overrides of the base config)
WORKLOADS = {
    "ahn_demo": [("L3 d5 n20 B4000", {
        "model.kind": "layered", "model.num_layers": 3, "model.parametrization": "full",
        "train.batch_size": 4000, "train.objective": "mc"})],
    "looped_L8": [("L8 d5 n20 B4096", {
        "model.kind": "looped", "model.num_layers": 8, "model.parametrization": "full",
        "train.batch_size": 4096, "train.objective": "mc"})],
    "n_scaling": [(f"L3 d5 n{n} B4000", {
        "task.n": n, "model.kind": "layered", "model.num_layers": 3,
        "model.parametrization": "full", "train.batch_size": 4000, "train.objective": "mc"})
                  for n in (20, 200, 2000)],
    "wide": [("L3 d20 n40 B4096", {
        "task.d": 20, "task.n": 40, "model.kind": "layered", "model.num_layers": 3,
        "model.parametrization": "full", "train.batch_size": 4096, "train.objective": "mc"})],
    "population": [("L3 d5 n20 S4096", {
        "model.kind": "layered", "model.num_layers": 3, "model.parametrization": "preconditioner",
        "train.batch_size": 4096, "train.objective": "population"})],
    # A sweep's seeds as one vmapped program (train.train_runs): cost of 8 runs vs 1.
    # Cheaper than 8x only while one run leaves the machine idle (small batches).
    "seeds_vmap": [(f"looped L4 d5 n20 B{batch} x{runs}", {
        "runs": runs, "model.kind": "looped", "model.num_layers": 4,
        "model.parametrization": "preconditioner", "train.batch_size": batch,
        "train.objective": "population"}) for batch in (64, 256, 1024) for runs in (1, 8)],
}


# The token path materialises (B, n+1, n+1) attention scores: 64 GB at n = 2000, B = 4000.
TOKENS_MAX_N = 200


@dataclasses.dataclass
class Result:
  workload: str
  label: str
  forward: str
  steps_per_s: float
  tasks_per_s: float
  gflop_per_step: float
  gflops: float
  percent_of_peak: float


def _experiment(overrides: dict, forward: str) -> config_lib.Experiment:
  config = config_lib.base_config()
  for path, value in overrides.items():
    if path == "runs":
      continue
    section, field = path.split(".")
    config[section][field] = value
  config.train.forward = forward
  config.train.steps = 10**6
  return config_lib.from_config(config)


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
  """Float32 GEMM throughput of this machine's default JAX device (median of repeats)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * size**3 / statistics.median(times) / 1e9


def time_steps(exp: config_lib.Experiment, steps_per_call: int = 10, repeats: int = 5,
               runs: int | None = None):
  """(median seconds per step, XLA GFLOP of one step); ``runs``: a vmapped group of that many
  runs (seeds 0..runs-1), timed per step of the whole group."""
  chunk = train_step.make_train_chunk(exp, num_runs=runs)
  exps = [exp] if runs is None else [dataclasses.replace(exp, seed=s) for s in range(runs)]
  states = [train_step.initial_state(e) for e in exps]
  hypers = [train_step.make_hyper(e) for e in exps]
  if runs is None:
    state, hyper = states[0], hypers[0]
  else:
    state, hyper = train_step.stack(states), train_step.stack(hypers)
  params, opt_state = state["params"], state["opt_state"]
  one_step = chunk.lower(params, opt_state, hyper, jnp.arange(1)).compile()
  cost = one_step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  step = 0
  params, opt_state, *_ = chunk(params, opt_state, hyper, jnp.arange(step, step + steps_per_call))
  jax.block_until_ready(params)
  times = []
  for _ in range(repeats):
    step += steps_per_call
    t0 = time.perf_counter()
    params, opt_state, losses, *_ = chunk(params, opt_state, hyper,
                                          jnp.arange(step, step + steps_per_call))
    jax.block_until_ready(losses)
    times.append((time.perf_counter() - t0) / steps_per_call)
  return statistics.median(times), flops / 1e9


def run(names=None, forwards=("gram",), steps_per_call: int = 10, repeats: int = 5):
  """Benchmarks the named workloads (default: all); returns (peak GFLOP/s, [Result])."""
  names = list(names or WORKLOADS)
  for name in names:
    if name not in WORKLOADS:
      raise ValueError(f"workload must be one of {sorted(WORKLOADS)}, got {name!r}")
  peak = matmul_peak_gflops()
  results = []
  for name in names:
    for label, overrides in WORKLOADS[name]:
      for forward in forwards:
        if forward == "tokens" and (overrides.get("train.objective") == "population"
                                    or overrides.get("task.n", 20) > TOKENS_MAX_N):
          continue  # no token path for the population objective; (n+1)^2 scores too large
        exp = _experiment(overrides, forward)
        runs = overrides.get("runs")
        seconds, gflop = time_steps(exp, steps_per_call, repeats,
                                    runs=None if runs in (None, 1) else runs)
        gflops = gflop / seconds
        results.append(Result(name, label, forward, 1 / seconds,
                              exp.train.batch_size * (runs or 1) / seconds, gflop, gflops,
                              100 * gflops / peak))
  return peak, results


def format_table(peak: float, results) -> str:
  lines = [f"float32 matmul peak: {peak:.1f} GFLOP/s ({jax.devices()[0].platform}, "
           f"{jax.device_count()} device(s))",
           f"{'workload':<11} {'config':<18} {'path':<6} {'steps/s':>9} {'tasks/s':>11} "
           f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'% peak':>7}"]
  for r in results:
    lines.append(f"{r.workload:<11} {r.label:<18} {r.forward:<6} {r.steps_per_s:>9.1f} "
                 f"{r.tasks_per_s:>11.0f} {r.gflop_per_step:>10.4f} {r.gflops:>8.2f} "
                 f"{r.percent_of_peak:>6.1f}%")
  return "\n".join(lines)


def to_json(peak: float, results) -> dict:
  return {"matmul_peak_gflops": peak, "platform": jax.devices()[0].platform,
          "device_count": jax.device_count(),
          "results": [dataclasses.asdict(r) for r in results], "numpy": np.__version__,
          "jax": jax.__version__}
