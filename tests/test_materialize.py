"""backend.materialize: the identity, computed once where XLA:CPU would recompute it per consumer."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax.backend import gates
from msrnn_jax.backend.materialize import available, materialize

pytestmark = pytest.mark.skipif(not available(), reason="materialize's custom call unavailable")

RNG = np.random.default_rng(5)


def _chain(xs, keep):
  """A long elementwise sum read by three consumers, optionally materialized."""
  total = xs[0]
  for x in xs[1:]:
    total = total * 0.5 + x
  total = keep(total)
  return total * xs[0], total * xs[1], total - xs[2]


def _arithmetic(hlo: str) -> int:
  """Additions and multiplications in a compiled program (fused computations included)."""
  return len(re.findall(r"= f32\[[\d,]*\]\S* (?:add|multiply)\(", hlo))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_pass_through(dtype):
  x = jnp.asarray(RNG.normal(size=(2, 3, 4, 5)), dtype)
  out = jax.jit(materialize)(x)
  assert out.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(x, np.float32))
  # Under vmap too (the call broadcasts).
  np.testing.assert_array_equal(jax.vmap(materialize)(x), x)


def test_the_chain_is_computed_once():
  """Without it XLA:CPU fuses the 8-term sum into each of its three consumers."""
  xs = jnp.asarray(RNG.normal(size=(8, 64, 32)), jnp.float32)
  def adds(keep):
    hlo = jax.jit(lambda v: _chain(v, keep)).lower(xs).compile().as_text()
    return len(re.findall(r"= f32\[[\d,]*\]\S* add\(", hlo))

  assert adds(lambda t: t) >= 3 * 7
  assert adds(materialize) == 7
  for ours, ref in zip(jax.jit(lambda v: _chain(v, materialize))(xs), _chain(xs, lambda t: t),
                       strict=True):
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_gate_gradients_read_the_shared_gradient_once(monkeypatch):
  """A memory gradient summed over a chain of layers is written once, not fused into each gate's."""
  shape = (2, 8, 8, 16)
  gate_args = [jnp.asarray(RNG.normal(size=shape), jnp.float32) for _ in range(3 * 6)]

  def loss(args, m):
    for layer in range(6):  # M passes through every layer, as in an ST-LSTM step
      m = gates.memory_update(*args[3 * layer:3 * layer + 3], m)
    return jnp.sum(m * m)

  m0 = jnp.asarray(RNG.normal(size=shape), jnp.float32)

  def compiled():
    jax.clear_caches()
    return jax.jit(jax.grad(loss)).lower(gate_args, m0).compile().as_text()

  ours = compiled()
  assert ours.count('custom_call_target="msrnn_materialize"') == 6
  monkeypatch.setattr(gates, "materialize", lambda x: x)
  # Each layer's three gate gradients recompute the sum over the layers above.
  assert _arithmetic(compiled()) > 3 * _arithmetic(ours)


def test_the_highway_gradient_is_not_recomputed_back_through_time(monkeypatch):
  """PredRNN++'s GHU gradient flows to Z through ``1 - s(s)`` at every step of an unrolled loop.

  Unmaterialized, XLA:CPU fused the whole chain back to the last step into
  each step's gradient (at the paper's shape half a second of a 40 s step,
  growing with the square of the sequence length); written once per step,
  the widest fusion is the kernel gradients' sum over the steps.
  """
  import optax

  from msrnn_jax import model as model_lib
  from msrnn_jax.training import step as train_step

  steps = 12

  def widest_fusion() -> int:
    jax.clear_caches()
    model = model_lib.create("predrnn_pp", hidden=4, num_layers=2, channels=1, in_len=steps // 2,
                             remat="none", conv_impl="auto", scan_unroll=steps)
    tx, frames = optax.adam(1e-3), jax.ShapeDtypeStruct((1, steps, 8, 8, 1), jnp.float32)
    state = jax.eval_shape(lambda: train_step.create_train_state(model, tx, frames.shape, 0))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    hlo = jax.jit(train_step.make_train_step(model, tx, steps // 2, 0.01)).lower(
        state, frames, scalar, scalar).compile().as_text()
    return max(len(re.findall(r"%[\w.-]+", line.split(" fusion(")[1].split("kind=")[0]))
               for line in hlo.splitlines() if " fusion(" in line)

  assert widest_fusion() <= steps + 2
  monkeypatch.setattr(gates, "materialize", lambda x: x)
  assert widest_fusion() > 2 * steps


def test_splits_the_batch_over_devices():
  """Batch-sharded in, batch-sharded out, with no gathering collective."""
  mesh = jax.make_mesh((4,), ("data",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jax.device_put(jnp.asarray(RNG.normal(size=(8, 4, 4, 3)), jnp.float32), split)
  fn = jax.jit(lambda v: materialize(v * 2.0) + 1.0)
  hlo = fn.lower(x).compile().as_text()
  assert "all-gather" not in hlo and "f32[2,4,4,3]" in hlo
  out = fn(x)
  assert out.sharding.is_equivalent_to(split, out.ndim)
  np.testing.assert_allclose(out, np.asarray(x) * 2.0 + 1.0)
