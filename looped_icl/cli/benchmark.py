r"""``looped-icl benchmark [--workload=NAME] [--json=FILE]``: training-step speed.

``--workload=main_job`` instead times the README's main job end to end (train, evaluate, solve
``--config``, default ``default``, into a fresh ``--workdir``), each phase split into compiling
and the rest (:mod:`looped_icl.job_benchmark`). Run it twice to see a warm compilation cache.

Times full training steps (sampling + forward + backward + Adam) after compilation and warm-up,
median of repeats, and prints steps/s, tasks/s, XLA GFLOP/s and % of this machine's measured
float32 matmul peak. ``--forwards=gram,tokens`` also times the token-space reference path.
``--variance`` instead measures the population-loss estimators' variance reduction at equal cost
(:mod:`looped_icl.variance_benchmark`).
"""

import importlib.util
import json
import tempfile

from absl import flags

from looped_icl import benchmark
from looped_icl import config_lib
from looped_icl import job_benchmark
from looped_icl import torch_anchor
from looped_icl import variance_benchmark
from looped_icl.cli import common as cli

_WORKLOAD = flags.DEFINE_list("workload", None, f"Workloads (default all): "
                              f"{', '.join(benchmark.WORKLOADS)}; or main_job alone.")
_FORWARDS = flags.DEFINE_list("forwards", ["gram"], "Forward paths to time: gram, tokens.")
_JSON = flags.DEFINE_string("json", None, "Write the results as JSON to this file.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (the median is reported).")
_STEPS = flags.DEFINE_integer("steps_per_call", 10, "Steps per timed dispatch (lax.scan).")
_VARIANCE = flags.DEFINE_bool("variance", False, "Measure the estimators' variance reduction.")
_COMPARE = flags.DEFINE_bool(
    "compare", False, "Also time the anchor-style PyTorch step (Ahn et al.'s official code in "
    "ahn_demo's setting) in this process and print our ahn_demo step's speed as a multiple of it "
    "(needs torch: pip install 'looped_icl[bench]').")
_JOB_CONFIG = flags.DEFINE_string("job_config", "default",
                                  "--workload=main_job: the config (NAME[:ARG]) of the job.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "--workload=main_job: a new or empty workdir (default: a temporary "
                               "directory).")


def _write_json(obj) -> None:
  """Writes ``obj`` to ``--json`` if it is set."""
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(obj, f, indent=2)


def main(argv):
  del argv

  def go():
    if _WORKLOAD.value and "main_job" in _WORKLOAD.value and len(_WORKLOAD.value) > 1:
      raise ValueError("workload main_job runs alone, got " + ",".join(_WORKLOAD.value))
    if _WORKLOAD.value == ["main_job"]:
      workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="looped_icl_main_job_")
      result = job_benchmark.main_job(config_lib.load(_JOB_CONFIG.value), workdir)
      print(job_benchmark.format_table(result))
      _write_json(result)
      return
    if _VARIANCE.value:
      rows = variance_benchmark.run()
      print(variance_benchmark.format_table(rows))
      _write_json(rows)
      return
    workloads = _WORKLOAD.value
    if _COMPARE.value:
      if importlib.util.find_spec("torch") is None:
        raise ValueError("--compare needs torch: pip install 'looped_icl[bench]'")
      workloads = list(dict.fromkeys((workloads or list(benchmark.WORKLOADS)) + ["ahn_demo"]))
    peak, results = benchmark.run(workloads, tuple(_FORWARDS.value), _STEPS.value,
                                  _REPEATS.value)
    print(benchmark.format_table(peak, results))
    out = benchmark.to_json(peak, results)
    if _COMPARE.value:
      anchor = torch_anchor.steps_per_s(steps_per_repeat=_STEPS.value, repeats=_REPEATS.value)
      ours = next(r for r in results if r.workload == "ahn_demo" and r.forward == "gram")
      out["compare"] = {"anchor_steps_per_s": anchor, "ours_steps_per_s": ours.steps_per_s,
                        "ratio": ours.steps_per_s / anchor}
      print(f"anchor-style PyTorch step (ahn_demo, {ours.label}): {anchor:.1f} steps/s; ours "
            f"{ours.steps_per_s:.1f} steps/s = {ours.steps_per_s / anchor:.1f}x")
    _write_json(out)

  cli.run_or_exit(go)


def run(argv: list[str]) -> None:
  cli.run(main, argv, __doc__)
