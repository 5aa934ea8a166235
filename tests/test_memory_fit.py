"""model.remat='auto': the step is rematerialised exactly when it would not fit its budget."""

import jax.numpy as jnp
import pytest

from configs import test as test_config
from msrnn_jax.training import memory_fit
from msrnn_jax.training import step as step_lib

# Compiled memory as users get it (conftest turns XLA's heavy passes off).
pytestmark = pytest.mark.usefixtures("full_compiles_module")


def _build_and_args():
  config = test_config.get_config()
  tx = step_lib.create_optimizer(config)
  shape = (4, config.data.in_len + config.data.out_len, 16, 16, 1)
  state = step_lib.create_train_state(step_lib.create_model(config), tx, shape, seed=0)
  built = []

  def build(remat):
    built.append(remat)
    return step_lib.make_train_step(step_lib.create_model(config, remat=remat), tx,
                                    config.data.in_len, config.train.decouple_weight)

  args = (state, jnp.zeros(shape), jnp.float32(0.5), jnp.float32(1.0))
  return build, args, built


def test_auto_keeps_the_fast_step_when_it_fits_and_remats_when_not():
  build, args, built = _build_and_args()
  need = memory_fit.compiled_bytes(build("none").lower(*args).compile())
  need_step = memory_fit.compiled_bytes(build("step").lower(*args).compile())
  assert need_step < need  # what makes 'step' the fallback
  built.clear()
  remat, step = memory_fit.fitted_train_step("auto", build, args,
                                             budget=need / memory_fit.FRACTION * 1.01)
  assert remat == "none" and built == ["none"]
  assert memory_fit.compiled_bytes(step.lower(*args).compile()) == need
  remat, step = memory_fit.fitted_train_step("auto", build, args,
                                             budget=need / memory_fit.FRACTION * 0.99)
  assert remat == "step"
  assert memory_fit.compiled_bytes(step.lower(*args).compile()) == need_step
  # (That the remat modes compute the same update: test_models.)


def test_auto_tries_the_rolled_time_loop_before_remat():
  """Where the time loop is unrolled, the same step rolled is tried next; the
  first that fits is used, remat last. Stand-in steps whose compiled memory is
  their output: n x n float32."""
  import jax

  def stand_in(n):
    return jax.jit(lambda x: jnp.zeros((n, n)) + x.sum())

  built = []

  def build(remat):
    built.append(remat)
    return stand_in({"none": 300, "step": 100}[remat])

  def rolled():
    built.append("rolled")
    return stand_in(200)

  args = (jnp.ones(8),)
  need = {n: memory_fit.compiled_bytes(stand_in(n).lower(*args).compile()) for n in (300, 200, 100)}
  for budget_need, want, want_built in ((need[300], 300, ["none"]),
                                        (need[200], 200, ["none", "rolled"]),
                                        (need[100], 100, ["none", "rolled", "step"])):
    built.clear()
    remat, step = memory_fit.fitted_train_step(
        "auto", build, args, budget=budget_need / memory_fit.FRACTION * 1.01, rolled=rolled)
    assert remat == ("step" if want == 100 else "none") and built == want_built
    assert step(*args).shape == (want, want)
  # Without a rolled fallback (a rolled loop already), remat follows at once.
  built.clear()
  assert memory_fit.fitted_train_step("auto", build, args, budget=need[200])[0] == "step"
  assert built == ["none", "step"]


@pytest.mark.parametrize("remat", ["none", "step", "cell"])
def test_an_explicit_remat_is_kept_without_compiling(remat):
  build, args, built = _build_and_args()
  assert memory_fit.fitted_train_step(remat, build, args, budget=1.0)[0] == remat
  assert built == [remat]


def test_budget_is_positive_and_within_the_host():
  import os
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert 0 < memory_fit.budget_bytes() <= host
