"""The backend's hand-written gradients, each against autodiff of its plain expression."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax import backend
from msrnn_jax.backend import packing

RNG = np.random.default_rng(7)


def _normal(shape, dtype=jnp.float32, scale=1.0):
  return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32).astype(dtype)


def _close(got, want, tol):
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=tol, atol=tol)


def _vjps(fn, plain, args, cot_dtype=jnp.float32):
  """Values and input cotangents of ``fn`` and of ``plain`` for one random cotangent."""
  out, vjp = jax.vjp(fn, *args)
  ref, vjp_ref = jax.vjp(plain, *args)
  cot = jax.tree.map(lambda a: _normal(a.shape, a.dtype), out)
  return out, ref, vjp(cot), vjp_ref(cot)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_gradient_is_the_float32_sum_of_autodiffs_terms(dtype):
  y, bias = _normal((2, 3, 4, 5), dtype), _normal((5,))
  out, vjp = jax.vjp(backend.add_bias, y, bias)
  ref, vjp_ref = jax.vjp(lambda y, b: y + b.astype(y.dtype), y, bias)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))
  cot = _normal(out.shape, dtype)
  (dy, db), (dy_ref, _) = vjp(cot), vjp_ref(cot)
  np.testing.assert_array_equal(np.asarray(dy, np.float32), np.asarray(dy_ref, np.float32))
  assert db.dtype == jnp.float32
  _close(db, np.asarray(cot, np.float64).sum(axis=(0, 1, 2)), 1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_split_and_concatenate_gradients_equal_autodiffs(dtype):
  y = _normal((2, 3, 12), dtype)
  out, ref, grad, grad_ref = _vjps(lambda v: backend.split(v, 3),
                                   lambda v: tuple(jnp.split(v, 3, axis=-1)), (y,))
  for a, b in zip(out, ref, strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert grad[0].dtype == dtype
  np.testing.assert_array_equal(np.asarray(grad[0], np.float32), np.asarray(grad_ref[0],
                                                                              np.float32))
  parts = [_normal((2, 3, k)) for k in (2, 3)]
  out, ref, grads, grads_ref = _vjps(
      lambda a, b: backend.concatenate([a, b], dtype),
      lambda a, b: jnp.concatenate([a.astype(dtype), b.astype(dtype)], axis=-1), parts)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))
  for g, r in zip(grads, grads_ref, strict=True):
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))


def test_pack_round_trip_and_its_gradient_are_identities():
  x = _normal((4, 6), jnp.bfloat16)
  y, vjp = jax.vjp(lambda v: backend.unpack(backend.pack(v, jnp.bfloat16), jnp.bfloat16), x)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
  cot = _normal((4, 6), jnp.bfloat16)
  (dx,) = vjp(cot)
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(cot, np.float32))


def _toy_step(p, c, x):
  h = jnp.tanh(c["h"] @ p["w"] + x * p["b"])
  return {"h": h, "n": c["n"] + jnp.sum(h)}, jnp.sum(h * h, axis=-1)


def _scan_inputs():
  """Parameters, an initial carry and 7 steps of inputs for the toy steps."""
  return ({"w": _normal((6, 6), scale=0.5), "b": _normal((6,))},
          {"h": _normal((3, 6)), "n": jnp.float32(0.5)}, _normal((7, 3, 6)))


def _scan_loss(scan):
  """``value_and_grad`` of a loss of everything ``scan(p, c, xs)`` returns."""
  def f(p, c, xs):
    c, ys = scan(p, c, xs)
    return jnp.sum(ys ** 2) + jnp.sum(c["h"] ** 2) + c["n"]
  return jax.value_and_grad(f, argnums=(0, 1, 2))


def _bf16_step(p, c, x):
  """A step whose residuals are bfloat16 maps, float32 carries and a fused kernel."""
  w = jnp.concatenate([p["w"], p["w"][::-1]], axis=0)  # depends on the parameters alone
  a = (jnp.concatenate([c["h"], x], axis=-1) @ w).astype(jnp.bfloat16)
  h = jnp.tanh(a) * jax.nn.sigmoid(a + p["b"].astype(jnp.bfloat16))
  h = h.astype(jnp.float32)
  return {"h": h, "n": c["n"] + jnp.sum(h)}, h


def test_packed_residual_scan_gradients_are_autodiffs_and_its_stacks_are_packed():
  p, c0, xs = _scan_inputs()
  packed = _scan_loss(
      lambda p, c, xs: backend.packed_residual_scan(_bf16_step, p, c, xs, jnp.bfloat16))
  plain = _scan_loss(lambda p, c, xs: jax.lax.scan(lambda c, x: _bf16_step(p, c, x), c, xs))
  value, grads = jax.jit(packed)(p, c0, xs)
  value_ref, grads_ref = jax.jit(plain)(p, c0, xs)
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  # The same VJPs on the same values: equal up to float32 reassociation.
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(r))))
  program = str(jax.make_jaxpr(packed)(p, c0, xs))
  # The per-step stacks are float16 containers of bfloat16 bits; the fused
  # kernel (parameters only) is computed outside the loop, not stacked per step.
  assert re.search(r"\bf16\[7,3,6\]", program) and "bf16[7,3,6]" not in program
  assert "f32[7,12,6]" not in program


def _rounding_step(rounds):
  """A step whose float32 carry feeds two bfloat16 products, rounded ``rounds`` times."""
  def step(p, c, x):
    hs = [c["h"].astype(jnp.bfloat16) for _ in range(rounds)] * (3 - rounds)
    a = hs[0] @ p["w"].astype(jnp.bfloat16)
    b = hs[1] @ p["w"][::-1].astype(jnp.bfloat16)
    h = jnp.tanh(a.astype(jnp.float32) * b.astype(jnp.float32) + x)
    return {"h": h, "n": c["n"] + jnp.sum(h)}, h
  return step


@jax.custom_vjp
def _products(v, ws):
  """``[v @ w for w in ws]`` for a bfloat16 ``v``, which the gradient keeps packed."""
  return [v @ w for w in ws]


def _products_fwd(v, ws):
  return _products(v, ws), (packing.stash((v,)), ws)


def _products_bwd(res, dys):
  (v,), ws = packing.unstash(res[0]), res[1]
  return sum(dy @ w.T for dy, w in zip(dys, ws, strict=True)), [v.T @ dy for dy in dys]


_products.defvjp(_products_fwd, _products_bwd)


def _packing_step(calls):
  """A step whose rounded carry two products keep packed, in ``calls`` custom_vjp calls."""
  def step(p, c, x):
    h16 = c["h"].astype(jnp.bfloat16)
    ws = [p["w"].astype(jnp.bfloat16), p["w"][::-1].astype(jnp.bfloat16)]
    a, b = _products(h16, ws) if calls == 1 else (_products(h16, ws[:1])[0],
                                                  _products(h16, ws[1:])[0])
    h = jnp.tanh(a.astype(jnp.float32) * b.astype(jnp.float32) + x)
    return {"h": h, "n": c["n"] + jnp.sum(h)}, h
  return step


def test_packed_residual_scan_stores_a_value_rounded_twice_once():
  """Two roundings of one carry (two operations that each keep it in bfloat16) are one
  stack, as one rounding read twice is; so are two packings of one value; gradients stay
  autodiff's."""
  p, c0, xs = _scan_inputs()
  stacks = {}
  steps = {"rounded once": _rounding_step(1), "rounded twice": _rounding_step(2),
           "packed once": _packing_step(1), "packed twice": _packing_step(2)}
  for rounds, step in steps.items():
    ours = _scan_loss(lambda p, c, xs, step=step: backend.packed_residual_scan(
        step, p, c, xs, jnp.bfloat16))
    plain = _scan_loss(lambda p, c, xs, step=step: jax.lax.scan(
        lambda c, x: step(p, c, x), c, xs))
    (value, grads), (value_ref, grads_ref) = jax.jit(ours)(p, c0, xs), jax.jit(plain)(p, c0, xs)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(r))))
    forward = jax.make_jaxpr(lambda p, c, xs, step=step: jax.vjp(
        lambda p: backend.packed_residual_scan(step, p, c, xs, jnp.bfloat16), p))(p, c0, xs)
    stacks[rounds] = str(forward).count("f16[7,3,6]")
  assert stacks["rounded twice"] == stacks["rounded once"], stacks
  assert stacks["packed twice"] == stacks["packed once"], stacks


def test_packed_residual_scan_is_autodiffs_scan_when_nothing_needs_packing():
  p, c0, xs = _scan_inputs()
  for step, dtype in ((_toy_step, jnp.bfloat16), (_bf16_step, jnp.float32)):
    program = str(jax.make_jaxpr(
        lambda p, c, xs, step=step, dtype=dtype: backend.packed_residual_scan(step, p, c, xs, dtype))(
            p, c0, xs))
    assert "custom_vjp" not in program


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stored_carry_scan_gradients_equal_autodiff_of_the_scan(dtype):
  """float32 storage rounds nothing: autodiff's gradients to float32 rounding; bfloat16
  storage: within a rounding of the stored carries, which does not compound."""
  p, c0, xs = _scan_inputs()

  def loss(scan):
    return jax.jit(_scan_loss(scan))(p, c0, xs)

  value, grads = loss(lambda p, c, xs: backend.stored_carry_scan(_toy_step, p, c, xs, dtype))
  value_ref, grads_ref = loss(
      lambda p, c, xs: jax.lax.scan(lambda c, x: _toy_step(p, c, x), c, xs))
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
    np.testing.assert_allclose(g, r, rtol=tol, atol=tol * float(jnp.max(jnp.abs(r))))
