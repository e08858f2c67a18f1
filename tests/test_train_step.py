"""The pure training step: a golden test of its numbers, and the traced per-run values (Hyper).

Golden test (nanodo style): three steps of three small programs from their step-0 state, with
the losses, gradient norms and first parameter entries they gave when the numbers were last
established (float32, CPU; the values were produced by the code before the "one schema" refactor
and are unchanged by it, bit for bit). Update GOLDEN only for an intended change of the numbers
(a new sampler, objective, initialisation or optimizer), in the commit that makes it and says
why, after checking the new numbers independently (tests/test_losses.py, test_optim.py, ...);
never to make a refactor pass. A jax/XLA upgrade may move them by float32 rounding (rtol 1e-5
of the entries' scale), and so does the CPU: XLA vectorises for the host's ISA, and the same code
gave three sets of values on the recording machine, on an AVX2 machine and with
--xla_cpu_max_isa=SSE4_2 (the largest move: 4.4e-7 on an entry of -0.0051, parameters of ~0.25).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looped_icl import config_lib
from looped_icl import optim
from looped_icl import sweep
from looped_icl import train_step

CASES = {
    "population": ("default:quick", {}),
    "mc_gdpp_layered": ("default:quick", {
        "model.parametrization": "gdpp", "model.kind": "layered", "train.objective": "mc",
        "train.optimizer": "adamw", "train.weight_decay": 0.01, "train.clip_per_matrix": 0.01}),
    "fixed_per_loop": ("chen_fixed:quick", {}),
}
GOLDEN = {
    "population": {
        "losses": [3.5930349826812744, 1.081195592880249, 0.829859733581543],
        "grad_norms": [15.251399040222168, 3.1374614238739014, 1.5094298124313354],
        "params": {"a": [0.25306984782218933, 0.16325271129608154, -0.005106181371957064,
                         0.19974499940872192, -0.232150137424469, 0.18772779405117035]}},
    "mc_gdpp_layered": {
        "losses": [3.53513240814209, 1.281074047088623, 0.79207843542099],
        "grad_norms": [7.9475789070129395, 3.1938087940216064, 0.9389324188232422],
        "params": {"a": [0.2961747944355011, 0.24130970239639282, -0.2047283947467804,
                         0.11153466254472733, 0.1226421371102333, 0.03957805410027504],
                   "b": [-0.008361217565834522, 0.2531639635562897, -0.07049893587827682,
                         -0.23400208353996277, -0.11736718565225601, -0.008348463103175163]}},
    "fixed_per_loop": {
        "losses": [1.0280585289001465, 0.8153818845748901, 0.7607439160346985],
        "grad_norms": [4.031171798706055, 3.119295597076416, 2.7405974864959717],
        "params": {"eta": [0.19478470087051392, 0.09314941614866257, 0.09837977588176727,
                           0.08526130020618439, 0.0942748412489891, 0.1638183295726776]}},
}


def _experiment(spec, overrides, batch_size=64):
  config = sweep.apply(config_lib.load(spec), overrides)
  config.train.batch_size = batch_size
  return config_lib.from_config(config)


def _three_steps(exp, hyper=None):
  state = train_step.initial_state(exp)
  chunk = train_step.make_train_chunk(exp)
  hyper = train_step.make_hyper(exp) if hyper is None else hyper
  return chunk(state["params"], state["opt_state"], hyper, jnp.arange(0, 3))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_three_steps(name):
  params, _, losses_K, grad_norms_K, _ = _three_steps(_experiment(*CASES[name]))
  golden = GOLDEN[name]
  np.testing.assert_allclose(losses_K, golden["losses"], rtol=1e-5)
  np.testing.assert_allclose(grad_norms_K, golden["grad_norms"], rtol=1e-5)
  for key, values in golden["params"].items():
    # Float32 rounding is relative to the entries' scale, not to each entry: a cancelled entry
    # (-0.0051 among entries of 0.25) moves by 4.4e-7 between CPUs (below).
    np.testing.assert_allclose(np.ravel(params[key])[:6], values, rtol=1e-5,
                               atol=1e-5 * np.max(np.abs(values)))


def test_traced_eta_and_learning_rate_equal_the_configured_ones():
  """A program compiled for one config, fed another run's Hyper (eta, learning rate, noise,
  Sigma), computes exactly what that run's own program computes: the vmapped sweep's premise."""
  base = _experiment("default:quick", {})
  other = _experiment("default:quick", {"model.eta": 0.5, "train.learning_rate": 0.03,
                                        "task.noise_std": 0.2, "task.spectrum": (1.0,) * 5})
  assert config_lib.program_fields(base) == config_lib.program_fields(other)
  own = _three_steps(other)
  shared = _three_steps(dataclasses.replace(other, model=base.model, train=base.train),
                        train_step.make_hyper(other))
  for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(shared)):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(own[2], _three_steps(base)[2])


def test_runs_of_another_program_are_refused():
  base = _experiment("default:quick", {})
  with pytest.raises(ValueError, match="^task.n differs between runs of one vmapped group"):
    train_step.check_same_program([base, _experiment("default:quick", {"task.n": 40})])
  train_step.check_same_program([base, _experiment("default:quick", {"seed": 4})])


@pytest.mark.parametrize("objective, resample_every", [("mc", 3), ("mc", 0), ("population", 4)])
def test_reused_data_is_drawn_once_per_key_with_the_same_steps(objective, resample_every):
  """The chunk draws reused data (resample_every 0 or > 1) once per data key and carries it;
  the steps must be those of drawing every step's data from its documented key, bit for bit,
  including a chunk that starts between two redraws."""
  config = config_lib.load("ahn_paper_model:quick")
  config.train.objective = objective
  config.model.parametrization = "gdpp" if objective == "mc" else "preconditioner"
  config.train.batch_size = 64
  config.train.resample_every = resample_every
  exp = config_lib.from_config(config)
  draw, loss = train_step.make_data(exp), train_step.make_loss(exp)
  direction = optim.make_direction(exp.train)

  def per_step_chunk(params, opt_state, hyper, steps_K):   # the plain formulation
    data_key = jax.random.wrap_key_data(hyper.data_key)

    def step_fn(carry, step):
      params, opt_state = carry
      batch = draw(train_step.step_data_key(data_key, step, resample_every), hyper)
      (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, hyper)
      updates, opt_state = direction.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - hyper.learning_rate * u, params, updates)
      return (params, opt_state), value

    return jax.lax.scan(step_fn, (params, opt_state), steps_K)

  state, hyper = train_step.initial_state(exp), train_step.make_hyper(exp)
  chunk = jax.jit(train_step.make_chunk_fn(exp))
  reference = jax.jit(per_step_chunk)
  params, opt_state = state["params"], state["opt_state"]
  ref_params, ref_opt_state = params, opt_state
  # The second chunk starts mid-way between redraws and crosses one (equal lengths: one program
  # per formulation).
  for start, length in ((0, 5), (5, 5)):
    steps = jnp.arange(start, start + length)
    params, opt_state, losses_K, _, _ = chunk(params, opt_state, hyper, steps)
    (ref_params, ref_opt_state), ref_losses_K = reference(ref_params, ref_opt_state, hyper, steps)
    np.testing.assert_array_equal(losses_K, ref_losses_K)
  for name in params:
    np.testing.assert_array_equal(params[name], ref_params[name])
