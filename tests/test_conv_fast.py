"""The custom-gradient convolutions vs ``jax.lax.conv_general_dilated``.

Every implementation, values and both gradients, over the stride / padding /
input-dilation combinations ``conv2d`` accepts; inside a rolled scan; and the
config switch reaching the cells of a model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from msrnn_jax import models, onednn, train
from msrnn_jax.conv import CONV_IMPLS, conv2d, input_grad, kernel_grad, resolve_impl

RNG = np.random.default_rng(5)
_DN = ("NHWC", "HWIO", "NHWC")
# Relative tolerance of the bfloat16 kernel gradient (8-bit mantissa
# operands, float32 sums); measured ~2e-3, see docs/performance.md.
BF16_RTOL = 1e-2


def _rand(*shape):
  return jnp.asarray(RNG.normal(size=shape), jnp.float32)


CASES = [
    # x shape, kernel shape, stride, padding, lhs_dilation
    ((1, 7, 9, 1), (3, 3, 1, 5), 1, "SAME", 1),  # batch 1, one channel, odd sizes
    ((2, 5, 11, 64), (3, 3, 64, 8), 1, "SAME", 1),
    ((1, 6, 7, 64), (3, 3, 64, 1), 1, "SAME", 1),
    ((2, 9, 7, 3), (3, 3, 3, 4), 2, "SAME", 1),  # stride 2, asymmetric SAME padding
    ((2, 8, 6, 4), (2, 2, 4, 6), 2, "VALID", 1),  # MotionGRU encoder
    ((1, 9, 7, 4), (2, 2, 4, 6), 2, "VALID", 1),  # stride with a remainder
    ((2, 5, 3, 4), (4, 4, 4, 3), 1, ((2, 2), (2, 2)), 2),  # transposed conv (MotionGRU decoder)
    ((1, 6, 5, 2), (1, 1, 2, 3), 1, ((1, 1), (1, 1)), 1),  # padding wider than the kernel
    ((1, 7, 7, 2), (3, 3, 2, 2), 1, ((-1, 0), (0, -1)), 1),  # negative padding (cropping)
    ((1, 4, 5, 3), (3, 3, 3, 2), 3, ((1, 2), (0, 1)), 2),  # stride 3 with input dilation 2
]


def _ref_conv(x, k, stride, pad, dil):
  return jax.lax.conv_general_dilated(x, k, (stride,) * 2, pad, lhs_dilation=(dil, dil),
                                      dimension_numbers=_DN, precision=jax.lax.Precision.HIGHEST)


def _close(actual, desired, rtol):
  # Relative to the largest entry: sums of random terms have near-zero entries.
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * float(np.abs(desired).max()))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-{c[3]}-d{c[4]}")
def test_values_and_gradients_match_lax(case):
  xs, ks, stride, pad, dil = case
  x, k = _rand(*xs), _rand(*ks)
  y_ref = _ref_conv(x, k, stride, pad, dil)
  cot = _rand(*y_ref.shape)

  def loss(fn):
    return lambda x, k: jnp.sum(fn(x, k) * cot)

  v0, (dx0, dk0) = jax.jit(jax.value_and_grad(
      loss(lambda x, k: _ref_conv(x, k, stride, pad, dil)), (0, 1)))(x, k)
  # 'auto' is one of the others (test_config_switch_reaches_the_cells).
  for impl in [i for i in CONV_IMPLS if i != "auto"]:
    if impl == "onednn" and not onednn.available():
      continue  # test_onednn_is_available_on_linux_x86 says where it must be
    def ours(x, k, impl=impl):
      return conv2d(x, k, stride=stride, padding=pad, lhs_dilation=dil, impl=impl)

    y1, (v1, (dx1, dk1)) = jax.jit(lambda x, k, f=ours: (f(x, k), jax.value_and_grad(
        loss(f), (0, 1))(x, k)))(x, k)
    _close(y1, y_ref, 1e-5)
    # The scalar sums terms of both signs: compare to the size of its terms.
    np.testing.assert_allclose(v1, v0, atol=1e-5 * float(jnp.sum(jnp.abs(y_ref * cot))))
    _close(dx1, dx0, 1e-5)
    _close(dk1, dk0, BF16_RTOL if impl == "matmul_bf16" else 1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_gradient_helpers_directly(bf16):
  """``input_grad`` / ``kernel_grad`` alone, on a case with every option set."""
  x, k = _rand(2, 7, 6, 5), _rand(3, 2, 5, 4)
  stride, pad, dil = (2, 1), ((1, 0), (2, 1)), (1, 2)

  def f(x, k):
    return jax.lax.conv_general_dilated(x, k, stride, pad, lhs_dilation=dil, dimension_numbers=_DN,
                                        precision=jax.lax.Precision.HIGHEST)

  y, vjp = jax.vjp(f, x, k)
  dy = _rand(*y.shape)
  dx0, dk0 = vjp(dy)
  _close(jax.jit(input_grad, static_argnums=(2, 3, 4, 5))(dy, k, x.shape[1:3], stride, pad, dil),
         dx0, 1e-5)
  dk = jax.jit(kernel_grad, static_argnums=(2, 3, 4, 5, 6))(x, dy, k.shape, stride, pad, dil, bf16)
  assert dk.dtype == jnp.float32
  _close(dk, dk0, BF16_RTOL if bf16 else 1e-5)


def test_bf16_kernel_gradient_error_is_bounded_but_nonzero():
  """bfloat16 operands: a real, small error (the switch does something)."""
  x, dy = _rand(2, 12, 12, 32), _rand(2, 12, 12, 16)
  pad = ((1, 1), (1, 1))
  grad = jax.jit(kernel_grad, static_argnums=(2, 3, 4, 5, 6))
  f32 = grad(x, dy, (3, 3, 32, 16), (1, 1), pad, (1, 1), False)
  b16 = grad(x, dy, (3, 3, 32, 16), (1, 1), pad, (1, 1), True)
  rel = float(jnp.max(jnp.abs(b16 - f32)) / jnp.max(jnp.abs(f32)))
  assert 1e-5 < rel < 5e-3


@pytest.mark.parametrize("impl", ["matmul", "matmul_bf16", "onednn"])
def test_gradients_inside_rolled_scan(impl):
  """A rolled ``lax.scan`` (a while loop, where XLA:CPU lays things out differently)."""
  xs, k = _rand(3, 2, 9, 7, 6), _rand(3, 3, 6, 8)

  def loss(k, xs, impl):
    def body(carry, x):
      return carry + jnp.sum(jnp.tanh(conv2d(x, k, impl=impl)) ** 2), None
    return jax.lax.scan(body, 0.0, xs)[0]

  g0 = jax.grad(loss, (0, 1))(k, xs, "xla")
  g1 = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(k, xs, impl)
  _close(g1[1], g0[1], 1e-5)
  _close(g1[0], g0[0], BF16_RTOL if impl == "matmul_bf16" else 1e-5)


_ONEDNN = "target_name=msrnn_onednn_conv_bwd"


@pytest.mark.parametrize("impl,marker", [
    ("xla", None),
    ("matmul", "name=conv_dk_matmul "),
    ("matmul_bf16", "name=conv_dk_matmul_bf16 "),
    ("onednn", _ONEDNN),
    # Four simulated devices (conftest.py): 'auto' keeps the partitionable path.
    ("auto", "name=conv_dk_matmul " if jax.default_backend() == "cpu" else None),
])
def test_config_switch_reaches_the_cells(impl, marker):
  """``config.model.conv_impl`` decides which kernel gradient the training step uses."""
  config = test_config.get_config()
  config.model.conv_impl = impl
  model = train.create_model(config)
  frames = jnp.zeros((1, 4, 16, 16, config.data.channels))
  params = jax.eval_shape(model.init, jax.random.key(0), frames)["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)

  def loss(p):
    return jnp.sum(model.apply({"params": p}, frames)[0] ** 2)

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  names = ("name=conv_dk_matmul ", "name=conv_dk_matmul_bf16 ", _ONEDNN)
  assert [n for n in names if n in jaxpr] == ([marker] if marker else [])
  if impl == "onednn":  # the forward pass too
    assert "target_name=msrnn_onednn_conv_fwd" in jaxpr
  if impl == "auto":
    assert resolve_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")


def test_onednn_is_available_on_linux_x86():
  """The requirements install oneDNN there; a silent fallback would hide a broken build."""
  import platform
  import sys
  if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
    pytest.skip("oneDNN wheels are installed on Linux x86-64 only")
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.version().startswith("3.")


def test_auto_picks_onednn_on_one_cpu_device(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  monkeypatch.setattr(onednn, "available", lambda: True)
  assert resolve_impl("auto") == ("onednn" if jax.default_backend() == "cpu" else "xla")
  monkeypatch.setattr(onednn, "available", lambda: False)
  assert resolve_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")


def test_onednn_unavailable_error_names_the_fix(monkeypatch):
  monkeypatch.setitem(onednn._state, "ok", False)
  monkeypatch.setitem(onednn._state, "reason", "the oneDNN wheels are not installed: pip install x")
  with pytest.raises(RuntimeError, match="conv_impl='onednn' is unavailable.*pip install.*'matmul'"):
    resolve_impl("onednn")


def test_onednn_falls_back_where_it_does_not_apply():
  """Input dilation (transposed convolutions) and bfloat16 take the matmul path."""
  x, k = _rand(1, 5, 4, 3), _rand(3, 3, 3, 2)
  pad = ((2, 2), (2, 2))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(
      conv2d(x, k, padding=pad, lhs_dilation=2, impl="onednn") ** 2)))(k))
  assert "conv_dk_matmul" in jaxpr and "msrnn_onednn" not in jaxpr
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(conv2d(
      x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), impl="onednn").astype(jnp.float32))))(k))
  assert "conv_dk_matmul" in jaxpr and "msrnn_onednn" not in jaxpr


def test_onednn_under_batch_sharding_equals_reference():
  """Under a 4-device jit XLA replicates the custom calls' operands: still exact."""
  mesh = jax.make_mesh((4,), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x, k = _rand(4, 6, 5, 8), _rand(3, 3, 8, 4)
  cot = _rand(4, 6, 5, 4)
  pad = ((1, 1), (1, 1))

  def grads(impl):
    def loss(x, k):
      return jnp.sum(conv2d(x, k, impl=impl) * cot)
    return jax.jit(jax.grad(loss, (0, 1)))(jax.device_put(x, batch), k)

  ref = jax.grad(lambda x, k: jnp.sum(_ref_conv(x, k, 1, pad, 1) * cot), (0, 1))(x, k)
  for got, want in zip(grads("onednn"), ref, strict=True):
    _close(got, want, 1e-5)


@pytest.mark.parametrize("name,remat,layers,t", [("ms_predrnn", "step", 4, 4)])
def test_onednn_model_gradients_equal_matmul(name, remat, layers, t):
  """A whole model: the pyramid, the zig-zag memory across levels, remat.

  (Strided and transposed convolutions are covered one by one in CASES;
  MotionRNN, which has both, costs ~35 s to compile twice here.)
  """
  if not onednn.available():
    pytest.skip(onednn.unavailable_reason())
  frames = jnp.asarray(RNG.uniform(size=(2, t, 16, 16, 1)), jnp.float32)
  out = {}
  for impl in ("matmul", "onednn"):
    model = models.create(name, hidden=8, num_layers=layers, in_len=2, remat=remat,
                          conv_impl=impl)
    params = model.init(jax.random.key(0), frames)["params"]

    def loss(p, model=model):
      return jnp.sum((model.apply({"params": p}, frames)[0] - frames[:, 1:]) ** 2)

    out[impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(out["onednn"][0], out["matmul"][0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(out["onednn"][1]), jax.tree.leaves(out["matmul"][1]),
                       strict=True):
    _close(got, want, 1e-4)
