"""The fused gate functions: values, gradients and residuals against plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from msrnn_jax.backend import gates
from msrnn_jax.model import layers

RNG = np.random.default_rng(3)


def _sig(x):
  return 1.0 / (1.0 + jnp.exp(-x))


# Independent plain expressions (autodiff of these is the reference gradient).
def _lstm_plain(g4, c):
  i, f, g, o = jnp.split(g4, 4, axis=-1)
  c = _sig(f) * c + _sig(i) * jnp.tanh(g)
  return _sig(o) * jnp.tanh(c), c


def _memory_plain(i, f, g, c):
  return _sig(f) * c + _sig(i) * jnp.tanh(g)


def _gated_plain(a, b):
  return _sig(a) * jnp.tanh(b)


def _highway_plain(p, s, z):
  return _sig(s) * jnp.tanh(p) + (1.0 - _sig(s)) * z


def _memory_increment_plain(i, f, g, c):
  increment = _sig(i) * jnp.tanh(g)
  return _sig(f) * c + increment, increment


CASES = [
    (gates.lstm_update, _lstm_plain, [(2, 3, 5, 4 * 6), (2, 3, 5, 6)]),
    (gates.memory_update, _memory_plain, [(2, 3, 5, 6)] * 4),
    (gates.gated_tanh, _gated_plain, [(2, 3, 5, 6)] * 2),
    (gates.memory_update_with_increment, _memory_increment_plain, [(2, 3, 5, 6)] * 4),
    (gates.highway_update, _highway_plain, [(2, 3, 5, 6)] * 3),
]
IDS = ["lstm", "memory", "gated", "memory_increment", "highway"]


def _inputs(shapes, scale=2.0):
  return [jnp.asarray(RNG.normal(size=s) * scale, jnp.float32) for s in shapes]


@pytest.mark.parametrize("fused,plain,shapes", CASES, ids=IDS)
def test_values_and_gradients_match_autodiff(fused, plain, shapes):
  args = _inputs(shapes)
  out, vjp = jax.vjp(fused, *args)
  ref, vjp_ref = jax.vjp(plain, *args)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), out, ref)
  cot = jax.tree.map(lambda a: jnp.asarray(RNG.normal(size=a.shape), jnp.float32), out)
  for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # And against finite differences, at moderate inputs where float32 allows.
  check_grads(fused, tuple(_inputs(shapes, scale=0.7)), order=1, modes=["rev"], atol=2e-2,
              rtol=2e-2)


@pytest.mark.parametrize("fused,plain,shapes", CASES, ids=IDS)
def test_keeps_one_map_per_input_as_residuals(fused, plain, shapes):
  args = _inputs(shapes)

  def residual_floats(fn):
    _, vjp = jax.vjp(fn, *args)
    return sum(x.size for x in jax.tree.leaves(vjp) if hasattr(x, "size"))

  inputs = sum(a.size for a in args)
  assert residual_floats(fused) == inputs
  assert residual_floats(plain) > inputs  # what autodiff keeps instead


def test_saturated_gates_give_finite_gradients():
  g4 = jnp.full((1, 2, 2, 8), 80.0).at[..., :2].set(-80.0)
  c = jnp.ones((1, 2, 2, 2))
  grads = jax.grad(lambda a, b: sum(x.sum() for x in gates.lstm_update(a, b)), (0, 1))(g4, c)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("fused,plain,shapes", CASES, ids=IDS)
def test_bfloat16_gates_round_once(fused, plain, shapes):
  # bfloat16 pre-activations with a float32 state (the last argument, where
  # there is one): the arithmetic runs in float32 and rounds once, so the
  # result equals the plain float32 expression of the same inputs up to the
  # output's own rounding. Rounding after every operation, as bfloat16
  # arithmetic would, misses by ~1e-2.
  args = _inputs(shapes)
  args = [a.astype(jnp.bfloat16) for a in args[:-1]] + [
      args[-1].astype(jnp.float32 if fused is not gates.gated_tanh else jnp.bfloat16)]
  want = plain(*[a.astype(jnp.float32) for a in args])
  out, vjp = jax.vjp(fused, *args)
  # A bfloat16 output (gated_tanh's, the increment) is off by its own rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), b, rtol=1e-5 if a.dtype == jnp.float32 else 2 ** -8,
      atol=1e-5 if a.dtype == jnp.float32 else 2 ** -8), out, want)
  # Activations kept 2-byte: the only 4-byte residual is the float32 state.
  kept = [x for x in jax.tree.leaves(vjp) if hasattr(x, "dtype") and x.size]
  wide = sum(x.size for x in kept if x.dtype.itemsize == 4)
  assert wide == sum(a.size for a in args if a.dtype == jnp.float32)
  assert sum(x.size for x in kept if x.dtype.itemsize == 2) == sum(
      a.size for a in args if a.dtype == jnp.bfloat16)
  for got, a in zip(vjp(jax.tree.map(jnp.ones_like, out)), args, strict=True):
    assert got.dtype == a.dtype and np.all(np.isfinite(np.asarray(got, np.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_split_gates_equals_jnp_split_with_its_gradient(dtype):
  """layers.split_gates: the chunks of jnp.split, and in bfloat16 the chunks'
  gradients reassembled exactly (a concatenation rounds nothing)."""
  y = jax.random.normal(jax.random.key(0), (2, 4, 4, 12)).astype(dtype)
  weights = [jax.random.normal(jax.random.key(k), (2, 4, 4, 4)).astype(dtype) for k in (1, 2, 3)]

  def loss(split, y):
    return sum(jnp.sum((w * c).astype(jnp.float32) ** 2)
               for w, c in zip(weights, split(y), strict=True))

  def plain(y):
    return jnp.split(y, 3, axis=-1)

  for a, b in zip(layers.split_gates(y, 3), plain(y), strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  grad = jax.jit(jax.grad(lambda v: loss(lambda u: layers.split_gates(u, 3), v)))(y)
  ref = jax.jit(jax.grad(lambda v: loss(plain, v)))(y)
  assert grad.dtype == dtype
  np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(ref, np.float32))


def _gru_plain(x_gates, h_gates, h):
  zx, rx, hx = jnp.split(x_gates, 3, axis=-1)
  zh, rh, hh = jnp.split(h_gates, 3, axis=-1)
  z, r = _sig(zx + zh), _sig(rx + rh)
  cand = jax.nn.leaky_relu(hx + r * hh, negative_slope=0.2)
  return (1.0 - z) * cand + z * h


def test_gru_update_matches_autodiff_and_keeps_less():
  shapes = [(2, 3, 5, 3 * 6), (2, 3, 5, 3 * 6), (2, 3, 5, 6)]
  args = _inputs(shapes)
  out, vjp = jax.vjp(gates.gru_update, *args)
  ref, vjp_ref = jax.vjp(_gru_plain, *args)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  cot = jnp.asarray(RNG.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  check_grads(gates.gru_update, tuple(_inputs(shapes, scale=0.7)), order=1, modes=["rev"],
              atol=2e-2, rtol=2e-2)
  # z, r, the candidate, h_h and the state: five maps, against autodiff's more.
  def residual_floats(fn):
    return sum(x.size for x in jax.tree.leaves(jax.vjp(fn, *args)[1]) if hasattr(x, "size"))
  assert residual_floats(gates.gru_update) == 5 * args[2].size < residual_floats(_gru_plain)
  # bfloat16 gate terms with a float32 state: float32 arithmetic, rounded once.
  low = [a.astype(jnp.bfloat16) for a in args[:2]] + [args[2]]
  out, vjp = jax.vjp(gates.gru_update, *low)
  want = _gru_plain(*[a.astype(jnp.float32) for a in low])
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  for got, a in zip(vjp(jnp.ones_like(out)), low, strict=True):
    assert got.dtype == a.dtype
