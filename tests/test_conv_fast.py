"""The custom-gradient convolutions vs ``jax.lax.conv_general_dilated``.

Every implementation, values and both gradients, over the stride / padding /
input-dilation combinations ``conv2d`` accepts; inside a rolled scan; the
config switch reaching the cells of a model; the oneDNN calls split over a
batch-sharded mesh (four simulated devices, conftest.py) and in bfloat16.
"""

import importlib
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from msrnn_jax import backend
from msrnn_jax import model as model_lib
from msrnn_jax.backend import CONV_IMPLS, conv2d, onednn
from msrnn_jax.backend.matmul_grads import input_grad, kernel_grad
from msrnn_jax.training import sharding
from msrnn_jax.training import step as train_step

# Kernel choices and compiled programs as users get them (conftest turns XLA's heavy passes off).
pytestmark = pytest.mark.usefixtures("full_compiles_module")

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
    # Input dilation, which oneDNN computes phase by phase: a phase whose input is cropped
    # (no padding), one without taps (1x1, dilation 2), uneven phases (dilation 3), negative
    # and asymmetric padding.
    ((2, 4, 5, 3), (4, 4, 3, 2), 1, ((0, 0), (0, 0)), 2),
    ((1, 3, 4, 2), (1, 1, 2, 3), 1, ((0, 0), (0, 1)), 2),
    ((1, 4, 3, 2), (4, 2, 2, 3), 1, ((2, 1), (1, 0)), 3),
    ((1, 5, 4, 2), (3, 3, 2, 2), 1, ((-1, 2), (1, -1)), 2),
    ((2, 5, 6, 32), (1, 1, 32, 16), 1, "SAME", 1),  # 1x1: oneDNN, a dot elsewhere
    ((2, 4, 3, 1), (1, 1, 1, 8), 1, "VALID", 1),  # 1x1 from one channel (the embedding)
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
      return conv2d(x, k, stride=stride, padding=pad, lhs_dilation=dil, conv_impl=impl)

    y1, (v1, (dx1, dk1)) = jax.jit(lambda x, k, f=ours: (f(x, k), jax.value_and_grad(
        loss(f), (0, 1))(x, k)))(x, k)
    _close(y1, y_ref, 1e-5)
    # The scalar sums terms of both signs: compare to the size of its terms.
    np.testing.assert_allclose(v1, v0, atol=1e-5 * float(jnp.sum(jnp.abs(y_ref * cot))))
    _close(dx1, dx0, 1e-5)
    _close(dk1, dk0, BF16_RTOL if impl == "matmul_bf16" else 1e-5)


@pytest.mark.parametrize("impl,dtype", [("xla", "float32"), ("onednn", "float32"),
                                         ("onednn", "bfloat16"), ("matmul", "float32")])
def test_conv_of_parts_equals_conv_of_concatenation_and_keeps_the_parts(impl, dtype):
  """``conv2d_of_parts``: autodiff's values and gradients of ``conv2d(concatenate(xs))``,
  for parts of mixed dtypes (a bfloat16 input beside a float32 memory), a 3x3 and a
  1x1 kernel; its backward pass keeps the parts, never their concatenation."""
  if impl == "onednn" and not onednn.available():
    pytest.skip("oneDNN unavailable (test_onednn_is_available_on_linux_x86 says where it must be)")
  x = _rand(2, 6, 5, 3).astype(dtype)
  m = _rand(2, 6, 5, 4)  # float32 whatever the compute dtype, as a cell's memory
  for ks in (3, 1):
    k = _rand(ks, ks, 7, 5)
    cot = _rand(2, 6, 5, 5).astype(dtype)

    def loss(f, cot=cot):
      return lambda x, m, kernel: jnp.sum((f([x, m], kernel) * cot).astype(jnp.float32))

    def ours(xs, k):
      return backend.conv2d_of_parts(xs, k, dtype=dtype, conv_impl=impl)

    def plain(xs, k):
      return conv2d(backend.concatenate(xs, dtype), k, dtype=dtype, conv_impl=impl)

    grads = [jax.jit(jax.value_and_grad(loss(f), (0, 1, 2)))(x, m, k) for f in (ours, plain)]
    (v1, g1), (v0, g0) = grads
    np.testing.assert_array_equal(v1, v0)
    for a, b in zip(g1, g0, strict=True):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))

  # What the backward pass keeps: x and m as they are (x packed when bfloat16), no stack.
  _, vjp = jax.vjp(lambda x, m: ours([x, m], k), x, m)
  kept = [v.shape[-1] for v in jax.tree.leaves(vjp) if v.shape[:3] == (2, 6, 5)]
  assert sorted(kept) == [3, 4], kept
  if impl == "onednn":
    # The backward pass re-traces the forward convolution for its vjp; XLA drops it.
    # bfloat16 goes to oneDNN only where it has native kernels (else conv2d routes it away).
    hlo = jax.jit(jax.value_and_grad(loss(ours), (0, 1, 2))).lower(x, m, k).compile().as_text()
    on_onednn = dtype == "float32" or onednn.bf16_supported()
    assert hlo.count('custom_call_target="msrnn_onednn_conv_fwd"') == int(on_onednn)
  # Stacks of the parts: the forward pass's, and in bfloat16 the backward pass's (one
  # call); in float32 each part takes its block of the kernel instead.
  jaxpr = str(jax.make_jaxpr(jax.grad(loss(ours), (0, 1, 2)))(x, m, k))
  stacks = len(re.findall(r"\[2,6,5,7\] = concatenate", jaxpr))
  assert stacks == (1 if dtype == "float32" else 2), jaxpr


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
      return carry + jnp.sum(jnp.tanh(conv2d(x, k, conv_impl=impl)) ** 2), None
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
    # Four simulated devices (conftest.py): the oneDNN calls partition too.
    ("auto", "auto"),
])
def test_config_switch_reaches_the_cells(impl, marker):
  """``config.backend.conv_impl`` decides which kernel gradient the training step uses."""
  if marker == "auto":
    cpu = jax.default_backend() == "cpu"
    marker = (_ONEDNN if onednn.available() else "name=conv_dk_matmul ") if cpu else None
  config = test_config.get_config()
  config.backend.conv_impl = impl
  model = train_step.create_model(config)
  frames = jnp.zeros((1, 4, 16, 16, config.data.channels))
  params = jax.eval_shape(model.init, jax.random.key(0), frames)["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)

  def loss(p):
    return jnp.sum(model.apply({"params": p}, frames)[0] ** 2)

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  names = ("name=conv_dk_matmul ", "name=conv_dk_matmul_bf16 ", _ONEDNN)
  assert [n for n in names if n in jaxpr] == ([marker] if marker else [])
  if marker == _ONEDNN:  # the forward pass too
    assert "target_name=msrnn_onednn_conv_fwd" in jaxpr


def test_onednn_is_available_on_linux_x86():
  """The requirements install oneDNN there; a silent fallback would hide a broken build."""
  import platform
  import sys
  if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
    pytest.skip("oneDNN wheels are installed on Linux x86-64 only")
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.version().startswith("3.")


def test_auto_picks_onednn_on_cpu_where_it_runs(monkeypatch):
  monkeypatch.setattr(onednn, "available", lambda: True)
  assert backend.resolve("auto") == ("onednn" if jax.default_backend() == "cpu" else "xla")
  monkeypatch.setattr(onednn, "available", lambda: False)
  assert backend.resolve("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")


def test_onednn_unavailable_error_names_the_fix(monkeypatch):
  monkeypatch.setitem(onednn._state, "ok", False)
  monkeypatch.setitem(onednn._state, "reason", "the oneDNN wheels are not installed: pip install x")
  with pytest.raises(RuntimeError, match="conv_impl='onednn' is unavailable.*pip install.*'matmul'"):
    backend.resolve("onednn")


def test_onednn_falls_back_where_it_does_not_apply(monkeypatch):
  """Strided input dilation, float16, and bfloat16 on a CPU without native bfloat16
  kernels take the matmul path; a stride-1 input dilation (a transposed convolution) is
  oneDNN's, one convolution per output phase."""
  x, k = _rand(1, 5, 4, 3), _rand(3, 3, 3, 2)
  pad = ((2, 2), (2, 2))

  def dilated_jaxpr(stride):
    return str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(conv2d(
        x, k, stride=stride, padding=pad, lhs_dilation=2, conv_impl="onednn") ** 2)))(k))

  jaxpr = dilated_jaxpr(2)
  assert "conv_dk_matmul" in jaxpr and "msrnn_onednn" not in jaxpr
  if onednn.available():
    jaxpr = dilated_jaxpr(1)
    assert "conv_dk_matmul" not in jaxpr and "conv_general_dilated" not in jaxpr
    assert jaxpr.count("msrnn_onednn_conv_fwd") == 4, jaxpr

  def low_precision_jaxpr(dtype):
    return str(jax.make_jaxpr(jax.grad(lambda k: jnp.sum(conv2d(
        x, k, conv_impl="onednn", dtype=dtype).astype(jnp.float32))))(k))

  jaxpr = low_precision_jaxpr(jnp.float16)
  assert "conv_dk_matmul" in jaxpr and "msrnn_onednn" not in jaxpr
  monkeypatch.setattr(onednn, "bf16_supported", lambda: False)
  jaxpr = low_precision_jaxpr(jnp.bfloat16)
  assert "conv_dk_matmul" in jaxpr and "msrnn_onednn" not in jaxpr
  # Nor does a transposed one split into phases that oneDNN would not take.
  jaxpr = str(jax.make_jaxpr(lambda k: conv2d(x, k, padding=pad, lhs_dilation=2, dtype=jnp.bfloat16,
                                              conv_impl="onednn"))(k))
  assert "lhs_dilation=(2, 2)" in jaxpr and "msrnn_onednn" not in jaxpr


def test_1x1_convolutions_take_onednn_in_both_dtypes():
  """A 1x1 convolution is oneDNN's on ``onednn`` (bfloat16 where oneDNN has native bfloat16
  kernels) and a dot on the portable path."""
  if not onednn.available():
    pytest.skip("oneDNN unavailable (test_onednn_is_available_on_linux_x86 says where it must be)")
  x, k = _rand(1, 4, 4, 8), _rand(1, 1, 8, 4)

  def jaxpr(dtype, impl="onednn"):
    return str(jax.make_jaxpr(lambda k: conv2d(x, k, conv_impl=impl, dtype=dtype))(k))

  assert "msrnn_onednn" in jaxpr(jnp.float32)
  assert "msrnn_onednn" in jaxpr(jnp.bfloat16) or not onednn.bf16_supported()
  assert "dot_general" in jaxpr(jnp.float32, "matmul")


# Gradients of oneDNN convolutions against lax's, in a process whose oneDNN is limited to AVX2:
# there the kernel gradient reads X and dY in 8-channel blocks, copied from NHWC (channel
# counts that fill no whole block, a stride, a 1x1), whatever this machine's own ISA is.
_AVX2_GRADS = """
import jax, jax.numpy as jnp, numpy as np
from msrnn_jax.backend import conv2d, onednn
print(onednn.cpu_isa())
rng = np.random.default_rng(0)
for xs, ks, stride in [((2, 9, 7, 12), (3, 3, 12, 20), 1), ((1, 8, 8, 16), (3, 3, 16, 8), 2),
                       ((2, 5, 6, 32), (1, 1, 32, 16), 1)]:
  x, k = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (xs, ks))
  def loss(impl):
    return lambda x, k: jnp.sum(jnp.sin(conv2d(x, k, stride=stride, conv_impl=impl)))
  got = jax.jit(jax.grad(loss("onednn"), (0, 1)))(x, k)
  with jax.default_matmul_precision("highest"):
    want = jax.jit(jax.grad(loss("xla"), (0, 1)))(x, k)
  print(max(float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) for g, w in zip(got, want)))
"""


def test_onednn_gradients_with_avx2_blocked_layouts():
  if not onednn.available():
    pytest.skip("oneDNN unavailable (test_onednn_is_available_on_linux_x86 says where it must be)")
  if onednn.cpu_isa() in ("sse41", "avx"):
    pytest.skip("this CPU has no AVX2")
  env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
  out = subprocess.run([sys.executable, "-c", _AVX2_GRADS], env=env, check=True,
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))).stdout.split()
  assert out[0] == "avx2"
  assert [float(e) for e in out[1:]] == pytest.approx([0.0] * 3, abs=1e-5)


def test_onednn_under_batch_sharding_equals_reference():
  """Under a 4-device jit (each device on its batch slice): still exact."""
  mesh = jax.make_mesh((4,), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x, k = _rand(4, 6, 5, 8), _rand(3, 3, 8, 4)
  cot = _rand(4, 6, 5, 4)
  pad = ((1, 1), (1, 1))

  def grads(impl):
    def loss(x, k):
      return jnp.sum(conv2d(x, k, conv_impl=impl) * cot)
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
  model = model_lib.create(name, hidden=8, num_layers=layers, in_len=2, remat=remat)
  params = model.init(jax.random.key(0), frames)["params"]

  def loss(p, model):
    return jnp.sum((model.apply({"params": p}, frames)[0] - frames[:, 1:]) ** 2)

  for impl in ("matmul", "onednn"):
    out[impl] = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, model.replace(conv_impl=impl))
  np.testing.assert_allclose(out["onednn"][0], out["matmul"][0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(out["onednn"][1]), jax.tree.leaves(out["matmul"][1]),
                       strict=True):
    _close(got, want, 1e-4)


# --- data parallelism: the custom calls run per device on the batch slice -------------------

def _onednn_calls(hlo: str) -> list[tuple[str, tuple[int, ...]]]:
  """(target, shape of the first operand) of each oneDNN custom call in compiled HLO."""
  calls = re.findall(r'custom_call_target="(msrnn_onednn_conv_\w+)", '
                     r"operand_layout_constraints=\{\w+\[([\d,]+)\]", hlo)
  return [(t, tuple(int(d) for d in dims.split(","))) for t, dims in calls]


@pytest.mark.parametrize("mesh_shape,batch_axes", [
    ((4,), "data"),  # training's mesh (msrnn_jax/training/sharding.py)
    ((2, 2), "data"),  # batch on one axis of two: replicated over 'model'
    ((2, 2), ("data", "model")),  # batch over both axes
])
def test_onednn_runs_on_each_devices_batch_slice(mesh_shape, batch_axes):
  """Values, dX and dK equal one device's; the calls see the slice, nothing is gathered."""
  if not onednn.available():
    pytest.skip(onednn.unavailable_reason())
  names = ("data", "model")[:len(mesh_shape)]
  mesh = jax.make_mesh(mesh_shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))
  spec = jax.sharding.PartitionSpec
  batch = jax.sharding.NamedSharding(mesh, spec(batch_axes))
  x, k = _rand(8, 6, 5, 8), _rand(3, 3, 8, 4)
  cot = _rand(8, 6, 5, 4)
  pad = ((1, 1), (1, 1))

  def fwd_and_grads(x, k, cot):
    y, vjp = jax.vjp(lambda x, k: conv2d(x, k, conv_impl="onednn"), x, k)
    return (y, *vjp(cot))

  step = jax.jit(fwd_and_grads)
  sharded_args = (jax.device_put(x, batch),
                  jax.device_put(k, jax.sharding.NamedSharding(mesh, spec())),
                  jax.device_put(cot, batch))
  got = step(*sharded_args)
  one_device = step(x, k, cot)  # uncommitted: one device, the bare custom calls
  ref_y, ref_vjp = jax.vjp(lambda x, k: _ref_conv(x, k, 1, pad, 1), x, k)
  for g, one, want in zip(got, one_device, (ref_y, *ref_vjp(cot)), strict=True):
    _close(g, one, 1e-5)
    _close(g, want, 1e-5)
  assert got[0].sharding.is_equivalent_to(batch, 4) and got[1].sharding.is_equivalent_to(batch, 4)

  hlo = step.lower(*sharded_args).compile().as_text()
  splits = dict(zip(names, mesh_shape, strict=True))
  per_device = 8 // int(np.prod([splits[a] for a in np.atleast_1d(batch_axes)]))
  calls = _onednn_calls(hlo)
  assert sorted(t for t, _ in calls) == ["msrnn_onednn_conv_bwd", "msrnn_onednn_conv_fwd"]
  assert all(shape == (per_device, 6, 5, 8) for _, shape in calls), calls
  assert "all-gather" not in hlo
  assert "all-reduce" in hlo  # dK: the per-slice sums added up


def test_onednn_indivisible_batch_is_replicated_and_exact():
  """A batch the mesh does not divide: every device computes all of it (still exact)."""
  if not onednn.available():
    pytest.skip(onednn.unavailable_reason())
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec
  x, k, cot = _rand(6, 5, 4, 3), _rand(3, 3, 3, 2), _rand(6, 5, 4, 2)
  pad = ((1, 1), (1, 1))

  def loss(x, k):
    return jnp.sum(conv2d(x, k, conv_impl="onednn") * cot)

  # A batch of 6 cannot be placed on 4 devices: ask for the split inside the jit.
  def sharded_grads(x, k):
    x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec("data")))
    return jax.grad(loss, (0, 1))(x, k)

  got = jax.jit(sharded_grads)(jax.device_put(x, jax.sharding.NamedSharding(mesh, spec())), k)
  want = jax.grad(lambda x, k: jnp.sum(_ref_conv(x, k, 1, pad, 1) * cot), (0, 1))(x, k)
  for g, w in zip(got, want, strict=True):
    _close(g, w, 1e-5)


def test_onednn_model_gradients_sharded_equal_one_device():
  """MS-ConvLSTM's training-loss gradient, batch split over 4 devices vs 1 device."""
  if not onednn.available():
    pytest.skip(onednn.unavailable_reason())
  config = test_config.get_config()
  config.backend.conv_impl = "onednn"
  model = train_step.create_model(config)
  frames = jnp.asarray(RNG.uniform(size=(4, 4, 16, 16, config.data.channels)), jnp.float32)
  mask = jnp.asarray(RNG.uniform(size=(4, 3)) < 0.5, jnp.float32)
  params = model.init(jax.random.key(0), frames)["params"]

  def loss(p, frames, mask):
    preds, _ = model.apply({"params": p}, frames, mask)
    return jnp.mean((preds - frames[:, 1:]) ** 2)

  grad = jax.jit(jax.value_and_grad(loss))
  mesh = sharding.make_mesh()
  assert mesh.size == 4
  args = (jax.device_put(params, sharding.replicated(mesh)),
          jax.device_put(frames, sharding.data_sharded(mesh)),
          jax.device_put(mask, sharding.data_sharded(mesh)))
  one = grad(params, frames, mask)
  four = grad(*args)
  hlo = grad.lower(*args).compile().as_text()
  np.testing.assert_allclose(four[0], one[0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(four[1]), jax.tree.leaves(one[1]), strict=True):
    _close(got, want, 1e-5)
  calls = _onednn_calls(hlo)
  assert calls and all(shape[0] == 1 for _, shape in calls), calls
  assert "all-gather" not in hlo


# --- bfloat16 on the oneDNN path ---------------------------------------------------------------

def _bf16_round(a):
  return a.astype(jnp.bfloat16).astype(jnp.float32)


def test_onednn_isa_is_known_and_bf16_enabled_where_the_cpu_has_it():
  """A CPU with AVX-512 BF16 or AMX must get the native bfloat16 path (no silent fallback)."""
  if not onednn.available():
    pytest.skip(onednn.unavailable_reason())
  assert onednn.cpu_isa() in ("sse41", "avx", "avx2", "avx2_vnni", "avx512_core",
                              "avx512_core_vnni", *onednn._BF16_ISAS)
  try:
    with open("/proc/cpuinfo") as f:
      flags = set(re.search(r"^flags\s*:(.*)$", f.read(), re.M).group(1).split())
  except (OSError, AttributeError):
    pytest.skip("no /proc/cpuinfo flags")
  if {"avx512_bf16", "amx_bf16"} & flags and "ONEDNN_MAX_CPU_ISA" not in os.environ:
    assert onednn.bf16_supported(), onednn._state.get("bf16_impls")


# CASES oneDNN takes (no input dilation, no negative padding).
BF16_CASES = [c for c in CASES if c[4] == 1 and (isinstance(c[3], str) or min(map(min, c[3])) >= 0)]


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-{c[3]}")
def test_onednn_bf16_matches_float32_on_rounded_inputs(case):
  """bfloat16 activations, float32 master kernel: y in bfloat16, dK in float32.

  The reference is the float32 convolution of the same bfloat16-rounded
  numbers. y and dX are rounded to bfloat16 once at the end; dK, summed in
  float32 from exact bfloat16 products and not rounded, is far closer.
  """
  if not (onednn.available() and onednn.bf16_supported()):
    pytest.skip("no native oneDNN bfloat16 kernels here")
  xs, ks, stride, pad, _ = case
  x, k = _bf16_round(_rand(*xs)), _rand(*ks)
  y_ref, vjp_ref = jax.vjp(lambda x, k: _ref_conv(x, k, stride, pad, 1), x, _bf16_round(k))
  cot = _bf16_round(_rand(*y_ref.shape))
  dx_ref, dk_ref = vjp_ref(cot)

  def fwd_and_grads(x, k):
    # As Conv calls it: bfloat16 activations, the float32 kernel as it is.
    y, vjp = jax.vjp(lambda x, k: conv2d(x.astype(jnp.bfloat16), k, stride=stride, padding=pad,
                                         conv_impl="onednn", dtype=jnp.bfloat16), x, k)
    return (y, *vjp(cot.astype(jnp.bfloat16)))

  jaxpr = str(jax.make_jaxpr(fwd_and_grads)(x, k))
  assert "target_name=msrnn_onednn_conv_fwd" in jaxpr and _ONEDNN in jaxpr
  y, dx, dk = jax.jit(fwd_and_grads)(x, k)
  assert (y.dtype, dx.dtype, dk.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
  _close(y.astype(jnp.float32), y_ref, BF16_RTOL)
  _close(dx, dx_ref, BF16_RTOL)
  _close(dk, dk_ref, 1e-4)


def test_onednn_bf16_kernel_in_bf16_and_batch_sharded():
  """A bfloat16 kernel gets a bfloat16 gradient; the bfloat16 calls partition like float32."""
  if not (onednn.available() and onednn.bf16_supported()):
    pytest.skip("no native oneDNN bfloat16 kernels here")
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x, k = _rand(4, 8, 8, 16).astype(jnp.bfloat16), _rand(3, 3, 16, 8).astype(jnp.bfloat16)
  cot = _rand(4, 8, 8, 8)

  def loss(x, k):
    return jnp.sum(conv2d(x, k, conv_impl="onednn").astype(jnp.float32) * cot)

  grads = jax.jit(jax.grad(loss, (0, 1)))
  dx, dk = grads(jax.device_put(x, batch), k)
  assert dx.dtype == dk.dtype == jnp.bfloat16
  ref = jax.grad(lambda x, k: jnp.sum(_ref_conv(x, k, 1, ((1, 1), (1, 1)), 1) * cot), (0, 1))(
      x.astype(jnp.float32), k.astype(jnp.float32))
  _close(dx.astype(jnp.float32), ref[0], BF16_RTOL)
  _close(dk.astype(jnp.float32), ref[1], BF16_RTOL)
  calls = _onednn_calls(grads.lower(jax.device_put(x, batch), k).compile().as_text())
  assert calls and all(shape[0] == 1 for _, shape in calls), calls


def test_bf16_model_routes_to_onednn_with_float32_gradients():
  """``model.dtype='bfloat16'``: the cells' convolutions take the oneDNN calls; the float32
  parameters' gradients stay float32, near the float32 model's."""
  if not (onednn.available() and onednn.bf16_supported()):
    pytest.skip("no native oneDNN bfloat16 kernels here")
  config = test_config.get_config()
  # Its own generator: the frames must not depend on which tests ran before.
  rng = np.random.default_rng(11)
  frames = jnp.asarray(rng.uniform(size=(2, 4, 16, 16, config.data.channels)), jnp.float32)
  grads = {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    model = train_step.create_model(config)
    params = model.init(jax.random.key(0), frames)["params"]

    def loss(p, model=model):
      preds = model.apply({"params": p}, frames)[0].astype(jnp.float32)
      return jnp.mean((preds - frames[:, 1:]) ** 2)

    if dtype == "bfloat16":
      jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
      assert "target_name=msrnn_onednn_conv_fwd" in jaxpr and _ONEDNN in jaxpr
      assert "conv_dk_matmul" not in jaxpr
    grads[dtype] = jax.jit(jax.grad(loss))(params)
  got, want = jax.tree.leaves(grads["bfloat16"]), jax.tree.leaves(grads["float32"])
  assert all(g.dtype == jnp.float32 for g in got)
  # bfloat16 activations through a recurrent stack at 4 channels: ~5% of the
  # gradient's norm overall and up to ~12% in single kernels (their elements
  # can be further off; a wrong gradient is off by ~100%).
  flat = [np.concatenate([np.ravel(x) for x in leaves]) for leaves in (got, want)]
  assert np.linalg.norm(flat[0] - flat[1]) < 0.1 * np.linalg.norm(flat[1])
  for g, w in zip(got, want, strict=True):
    assert np.linalg.norm(g - w) < 0.25 * np.linalg.norm(w)


@pytest.mark.parametrize("impl", ["matmul", "onednn"])
def test_auto_dtype_is_bfloat16_only_where_convolutions_have_native_kernels(impl):
  """``model.dtype='auto'`` (the CPU presets): bfloat16 with native oneDNN bfloat16 kernels,
  float32 on the portable path, where bfloat16 would be slower."""
  if impl == "onednn" and not onednn.available():
    pytest.skip("oneDNN unavailable")
  config = test_config.get_config()
  config.model.dtype = "auto"
  config.backend.conv_impl = impl
  frames = jnp.zeros((1, 3, 16, 16, config.data.channels), jnp.float32)
  # bf16_supported() is held to /proc/cpuinfo's flags by the ISA test above.
  want = "bfloat16" if impl == "onednn" and onednn.bf16_supported() else "float32"
  assert backend.fast_dtype(impl) == want
  model = train_step.create_model(config)
  # Resolved once, when the model is built: the model carries concrete choices.
  assert (model.config.dtype, model.config.conv_impl) == (want, impl)
  jaxpr = str(jax.make_jaxpr(lambda f: model.init(jax.random.key(0), f))(frames))
  assert ("bf16[" in jaxpr) == (want == "bfloat16")
  assert "model.dtype 'auto' = " in backend.summary(impl)


def test_models_with_different_kernels_and_dtypes_run_side_by_side():
  """An ``xla`` float32 ConvLSTM and a ``onednn`` (else ``matmul``) bfloat16 one in one
  process, interleaved: each computes with its own kernel and dtype, and each matches a
  float64 NumPy forward pass of the same parameters (to its dtype's precision)."""
  other = "onednn" if onednn.available() else "matmul"
  rng = np.random.default_rng(5)
  frames = jnp.asarray(rng.uniform(size=(2, 4, 8, 8, 1)), jnp.float32)
  models = {(impl, dtype): model_lib.create("convlstm", hidden=4, num_layers=1, in_len=2,
                                            conv_impl=impl, dtype=dtype)
            for impl, dtype in (("xla", "float32"), (other, "bfloat16"))}
  params = models["xla", "float32"].init(jax.random.key(0), frames)["params"]
  want = _numpy_convlstm(jax.tree.map(np.float64, params), np.asarray(frames, np.float64), 2)
  applies = {k: jax.jit(lambda p, f, m=m: m.apply({"params": p}, f)[0]) for k, m in models.items()}
  outs = {k: [] for k in models}
  for _ in range(2):  # interleaved: neither model's compilation leaks into the other's
    for key, apply in applies.items():
      outs[key].append(np.asarray(apply(params, frames)))
  for (impl, dtype), (first, again) in outs.items():
    np.testing.assert_array_equal(first, again)
    tol = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(first, want, atol=tol, err_msg=f"{impl} {dtype}")
  jaxprs = {k: str(jax.make_jaxpr(a)(params, frames)) for k, a in applies.items()}
  assert "bf16[" not in jaxprs["xla", "float32"] and "conv_general_dilated" in jaxprs[
      "xla", "float32"]
  assert "bf16[" in jaxprs[other, "bfloat16"]
  if other == "onednn" and onednn.bf16_supported():
    assert "target_name=msrnn_onednn_conv_fwd" in jaxprs[other, "bfloat16"]
    assert "msrnn_onednn" not in jaxprs["xla", "float32"]


def _numpy_convlstm(p, frames, in_len):
  """A one-layer ConvLSTM predictor in float64: 1x1 embed, 3x3 gates, 1x1 head."""

  def conv(x, layer):
    k, b = layer["kernel"], layer["bias"]
    pad = k.shape[0] // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    return b + sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + w], k[i, j])
                   for i in range(k.shape[0]) for j in range(k.shape[1]))

  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  step, cell = p["step"], p["step"]["layer_0"]
  b, t, hh, ww, _ = frames.shape
  h = c = np.zeros((b, hh, ww, cell["conv_h"]["kernel"].shape[2]))
  prev, preds = None, []
  for s in range(t - 1):
    x = conv(frames[:, s] if s < in_len else prev, step["embed"])
    i, f, g, o = np.split(conv(x, cell["conv_x"]) + conv(h, cell["conv_h"]), 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    prev = conv(h, step["head"])
    preds.append(prev)
  return np.stack(preds, axis=1)


def test_cpu_presets_pick_their_dtype_at_run_time():
  for name in ("mmnist", "kth", "taxibj", "hko7"):
    preset = importlib.import_module(f"configs.{name}")
    assert preset.get_config("cpu").model.dtype == "auto"
    assert preset.get_config().model.dtype == "float32"  # paper-scale: float32
