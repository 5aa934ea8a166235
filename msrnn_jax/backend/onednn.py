"""oneDNN convolutions on CPU, called from XLA as FFI custom calls.

XLA:CPU's convolution gradients are its weak spot (``docs/performance.md``):
the kernel gradient runs at a fraction of the matmul rate, and the
``matmul`` gradients (``matmul_grads.py``) still materialises patch
matrices. oneDNN, the library behind PyTorch's CPU convolutions, computes
the forward pass, the input gradient and the kernel gradient directly from
NHWC activations at close to the matmul rate. ``native/onednn_conv.cc``
wraps its three primitives as two XLA FFI handlers (forward; input and
kernel gradient together) that read and write XLA's buffers in place.

The handlers are compiled on first use against the oneDNN wheel
(``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``, Linux x86-64; the build,
cache, OpenMP setting and batch partitioning are ``native.py``'s). Where any
of that is missing, :func:`available` is False, :func:`unavailable_reason`
says why, and ``conv_impl='auto'`` falls back to the ``matmul`` path.

Data parallelism: both calls are wrapped in
``jax.experimental.custom_partitioning`` with ``native.py``'s batch rule:
each device runs oneDNN on its own batch slice, and the kernel gradient, a
sum over the batch, is completed by a ``psum`` over the batch's mesh axes.
On one device the wrapper lowers to the bare custom call.

Mixed precision: the activations (``x``, and so ``y``, ``dy``, ``dx``) may be
float32 or bfloat16; the kernel may be either independently (oneDNN
converts it while reordering it into its blocked layout, so float32 master
weights need no cast in XLA); the kernel gradient is float32 always
(oneDNN accumulates in float32). oneDNN picks its kernels for the CPU at run
time (AMX, AVX-512 BF16, ...): :func:`cpu_isa` names the instruction set it
uses and :func:`bf16_supported` says whether bfloat16 convolutions have
native kernels here (else the backend keeps them on its ``matmul``
path); both are logged once.

Layouts: ``x`` ``[N, H, W, C]``, kernel ``[KH, KW, C, O]``, no input or
kernel dilation (those stay on the ``matmul`` path).
"""

import ctypes
import functools
import importlib.metadata
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning

from msrnn_jax.backend import native, packing

_DISTS = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")
_TARGET_FWD = "msrnn_onednn_conv_fwd"
_TARGET_BWD = "msrnn_onednn_conv_bwd"
INSTALL_HINT = ("pip install 'onednn-cpu-gomp==2023.2.0' 'onednn-devel-cpu-gomp==2023.2.0' "
                "(Linux x86-64; a C++17 compiler is also needed)")

Padding = tuple[tuple[int, int], tuple[int, int]]



def _dist_file(dist: str, suffix: str) -> str | None:
  """The installed path of a file of ``dist`` whose path ends with ``suffix``."""
  try:
    files = importlib.metadata.distribution(dist).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).replace("\\", "/").endswith(suffix):
      return os.path.normpath(str(f.locate()))
  return None


def _locate() -> tuple[str, str]:
  """(include dir, lib dir) of the oneDNN wheels, or raises RuntimeError."""
  header = _dist_file(_DISTS[1], "oneapi/dnnl/dnnl.hpp")
  lib = _dist_file(_DISTS[0], "/libdnnl.so.3")
  if header is None or lib is None:
    raise RuntimeError(f"the oneDNN wheels are not installed: {INSTALL_HINT}")
  return (os.path.dirname(os.path.dirname(os.path.dirname(header))), os.path.dirname(lib))


def build() -> str:
  """Compiles the FFI handlers (once per source, jaxlib and oneDNN version).

  Returns:
    The path of the shared library.

  Raises:
    RuntimeError: with the missing piece and how to get it.
  """
  include, libdir = _locate()
  return native.build("onednn", ["onednn_conv.cc"],
                      ["-O2", "-I", include, "-L", libdir, "-ldnnl", f"-Wl,-rpath,{libdir}"],
                      [importlib.metadata.version(d) for d in _DISTS])


def _load() -> dict:
  """Builds, loads and registers the handlers."""
  path = build()
  lib = native.load(path, {_TARGET_FWD: "MsrnnOnednnConvFwd", _TARGET_BWD: "MsrnnOnednnConvBwd"})
  for fn in (lib.msrnn_onednn_version, lib.msrnn_onednn_cpu_isa, lib.msrnn_onednn_probe):
    fn.restype = ctypes.c_char_p
  lib.msrnn_onednn_probe.argtypes = [ctypes.c_int]
  state = dict(lib=lib, path=path, version=lib.msrnn_onednn_version().decode(),
               isa=lib.msrnn_onednn_cpu_isa().decode())
  logging.info("oneDNN %s loaded for the convolutions; effective CPU ISA: %s", state["version"],
               state["isa"])
  return state


def _unavailable(reason: str) -> None:
  if jax.default_backend() == "cpu":  # elsewhere XLA's own convolutions are the plan
    logging.warning("oneDNN convolutions unavailable (%s); CPU convolutions take the portable, "
                    "slower path. Install them with: pip install 'msrnn_jax[cpu]'", reason)


_library = native.Library(_load, _unavailable)
_state = _library.state
available = _library.available
unavailable_reason = _library.unavailable_reason


def version() -> str | None:
  """The loaded oneDNN's version, e.g. ``'3.2.0'``."""
  return _library.get().get("version")


def cpu_isa() -> str | None:
  """The instruction set oneDNN dispatches to here, e.g. ``'avx512_core_amx'``.

  oneDNN's own name (``dnnl_get_effective_cpu_isa``), after any limit set
  with ``ONEDNN_MAX_CPU_ISA``; None where oneDNN is unavailable.
  """
  return _library.get().get("isa")


# ISAs with bfloat16 instructions (AVX-512 BF16 dot products, AMX tiles, or
# AVX2's VNNI-2 conversions). On older CPUs oneDNN converts bfloat16 in
# software or takes reference kernels; the matmul path is the safer bet there.
_BF16_ISAS = ("avx2_vnni_2", "avx512_core_bf16", "avx512_core_fp16", "avx512_core_amx",
              "avx512_core_amx_fp16")


def bf16_supported() -> bool:
  """Whether bfloat16 convolutions run on native oneDNN kernels here.

  True when oneDNN's effective ISA has bfloat16 arithmetic and the
  implementations it picks for a probe convolution (forward, dX, dK) are
  none of its reference (``ref``) ones. Decided once and logged with the
  implementation names; the backend routes bfloat16 convolutions
  elsewhere when False.
  """
  if not available():
    return False
  with _library.lock:
    if "bf16" not in _state:
      probe = _state["lib"].msrnn_onednn_probe(1).decode()
      impls = [] if probe.startswith("error") else [p.split("=", 1)[1] for p in probe.split(";")]
      ok = _state["isa"] in _BF16_ISAS and bool(impls) and not any(
          i.startswith("ref") for i in impls)
      _state.update(bf16=ok, bf16_impls=probe)
      logging.info("oneDNN bfloat16 convolutions %s (ISA %s; %s)",
                   "enabled" if ok else "disabled, kept on the matmul path", _state["isa"],
                   probe)
  return _state["bf16"]


def require() -> None:
  """Raises RuntimeError naming the problem and the fix if unavailable."""
  if not available():
    raise RuntimeError(f"conv_impl='onednn' is unavailable: {_state['reason']}. "
                       "Use conv_impl='matmul' or 'auto' instead.")


def supports(x_shape: Sequence[int], kernel_shape: Sequence[int], dtype, stride: tuple[int, int],
             padding: Padding, lhs_dilation: tuple[int, int]) -> bool:
  """Whether a convolution is one the handlers compute (else use another impl).

  Args:
    x_shape, kernel_shape: NHWC input and HWIO kernel shapes.
    dtype: the compute (activation) dtype: float32, or bfloat16 where
      :func:`bf16_supported`. The kernel may be float32 or bfloat16.
    stride, padding, lhs_dilation: as in ``lax.conv_general_dilated``.
  """
  dtype = np.dtype(dtype)
  return (len(x_shape) == 4 and len(kernel_shape) == 4
          and (dtype == np.float32 or (dtype == jnp.bfloat16 and bf16_supported()))
          and tuple(lhs_dilation) == (1, 1) and min(v for p in padding for v in p) >= 0
          and all(s >= 1 for s in stride))


def _attrs(stride, padding) -> dict:
  (top, bottom), (left, right) = padding
  return {"strides": np.asarray(stride, np.int64),
          "padding": np.asarray((top, bottom, left, right), np.int64)}


def _forward_call(x, kernel, stride, padding):
  """The forward custom call on whatever (per-device) shapes it is given."""
  shape = jax.lax.conv_general_shape_tuple(x.shape, kernel.shape, stride, padding,
                                           ("NHWC", "HWIO", "NHWC"))
  out = jax.ShapeDtypeStruct(tuple(int(d) for d in shape), x.dtype)
  return jax.ffi.ffi_call(_TARGET_FWD, out, vmap_method="sequential")(
      x, kernel, **_attrs(stride, padding))


def _backward_call(x, kernel, dy, stride, padding, parts):
  """The backward custom call: ``(dx like x, float32 dkernel)``."""
  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype),
          jax.ShapeDtypeStruct(kernel.shape, np.float32))
  return jax.ffi.ffi_call(_TARGET_BWD, outs, vmap_method="sequential")(
      x, kernel, dy, parts=np.int64({"dx": 1, "dk": 2, "both": 3}[parts]),
      **_attrs(stride, padding))


# --- the per-device (batch-sliced) partitioning of the two calls ------------------------------

def _partition_forward(stride, padding, mesh, arg_shapes, result_shape):
  del mesh, result_shape  # decided by x's sharding
  mesh, axes = native.batch_split(arg_shapes[0])
  act, rep = native.shardings(mesh, axes)

  def per_device(x, kernel):
    return _forward_call(x, kernel, stride, padding)

  return mesh, per_device, act, (act, rep)


def _infer_forward(stride, padding, mesh, arg_shapes, result_shape):
  del stride, padding, mesh, result_shape
  return native.shardings(*native.batch_split(arg_shapes[0]))[0]


def _partition_backward(stride, padding, parts, mesh, arg_shapes, result_shape):
  del mesh, result_shape
  mesh, axes = native.batch_split(arg_shapes[0])
  act, rep = native.shardings(mesh, axes)

  def per_device(x, kernel, dy):
    dx, dk = _backward_call(x, kernel, dy, stride, padding, parts)
    # dK sums over the batch: each device holds its slice's share.
    return dx, (jax.lax.psum(dk, axes) if axes else dk)

  return mesh, per_device, (act, rep), (act, rep, act)


def _infer_backward(stride, padding, parts, mesh, arg_shapes, result_shape):
  del stride, padding, parts, mesh, result_shape
  return native.shardings(*native.batch_split(arg_shapes[0]))


# Shardy's propagation rule (einsum-like factors): only the batch factor n
# may stay sharded; every other factor needs replication. dK's missing n is
# the batch sum the partition above completes with its psum.
_SPATIAL = ("h", "w", "c", "a", "b", "o", "p", "q")
_forward_partitioned = custom_partitioning(_forward_call, static_argnums=(2, 3))
_forward_partitioned.def_partition(
    _partition_forward, infer_sharding_from_operands=_infer_forward,
    sharding_rule="n h w c, a b c o -> n p q o", need_replication_factors=_SPATIAL)
_backward_partitioned = custom_partitioning(_backward_call, static_argnums=(3, 4, 5))
_backward_partitioned.def_partition(
    _partition_backward, infer_sharding_from_operands=_infer_backward,
    sharding_rule="n h w c, a b c o, n p q o -> n h w c, a b c o",
    need_replication_factors=_SPATIAL)


@functools.partial(jax.jit, static_argnums=(2, 3))
def conv_forward(x: jax.Array, kernel: jax.Array, stride: tuple[int, int],
                 padding: Padding) -> jax.Array:
  """Forward convolution ``[N, H, W, C] x [KH, KW, C, O] -> [N, OH, OW, O]``.

  The output has ``x``'s dtype (float32 or bfloat16); the kernel may be
  float32 or bfloat16. Under a batch-sharded ``jit`` each device convolves
  its own slice.
  """
  require()
  return _forward_partitioned(x, kernel, stride, padding)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def conv_backward(x: jax.Array, kernel: jax.Array, dy: jax.Array, stride: tuple[int, int],
                  padding: Padding, parts: str = "both") -> tuple[jax.Array, jax.Array]:
  """Input and kernel gradients of :func:`conv_forward` for output gradient ``dy``.

  One custom call computes both, so the two run back to back on all cores
  instead of competing for them. Under a batch-sharded ``jit`` each device
  computes its slice's dX and partial dK, summed over the batch's mesh axes.

  Args:
    x, kernel, dy: the forward operands and the output gradient (``dy`` of
      ``x``'s dtype).
    stride, padding: as in the forward call.
    parts: ``'both'``; ``'dx'`` or ``'dk'`` compute only that gradient and
      leave the other output unwritten (for benchmarks).

  Returns:
    ``(dx [N, H, W, C], dkernel [KH, KW, C, O])``: ``dx`` of ``x``'s dtype,
    ``dkernel`` float32 (accumulated in float32 whatever the operands).
  """
  require()
  return _backward_partitioned(x, kernel, dy, stride, padding, parts)


# The kernel enters in its own dtype (float32 master weights under bfloat16
# activations): the custom calls convert it, and its gradient, accumulated
# in float32 by oneDNN, goes back to the float32 parameters without a detour
# through bfloat16.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, stride, padding):
  return conv_forward(x, kernel, stride, padding)


def _conv_fwd(x, kernel, stride, padding):
  # x packed: stacked over time (no remat), XLA:CPU would hold it as float32.
  return conv_forward(x, kernel, stride, padding), (packing.stash(x), kernel)


def _conv_bwd(stride, padding, res, dy):
  stashed, kernel = res
  x = packing.unstash(stashed)
  dx, dk = conv_backward(x, kernel, dy.astype(x.dtype), stride, padding)
  return dx, dk.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)
