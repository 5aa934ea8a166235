"""The platform seam: which convolution kernels run, and host-allocator tuning.

Everything platform-specific lives in this package; the rest of msrnn_jax
asks for a convolution with a dtype (:func:`conv2d`) and never names a
kernel library. The lowest layer: it imports JAX and its own modules only.

* ``matmul_grads``: XLA's forward convolution with gradients XLA:CPU runs
  on its fast matrix kernels (portable: any CPU, any device count).
* ``onednn``: oneDNN convolutions (the library behind PyTorch's CPU
  convolutions) as XLA FFI custom calls, built from ``native/`` on first
  use; x86-64 Linux with the ``msrnn_jax[cpu]`` extra installed.
* ``allocator``: glibc settings that let CPU steps reuse freed memory.
* ``packing``: :func:`pack` / :func:`unpack` (``packing.stash`` / ``unstash``
  for custom-gradient residuals), bfloat16 values (checkpointed
  carries, gate activations, stacked convolution inputs) in float16
  containers on CPU, where XLA would keep or move them as float32.
* ``gates``: the cells' gate updates (:func:`gates.lstm_update`,
  ``memory_update``, ``gated_tanh``, ``gru_update``) with hand-written
  gradients that keep one map per input, computed in float32 and rounded once.
* ``materialize``: :func:`materialize.materialize`, a value written to memory
  once for all its consumers, where XLA:CPU would recompute it in each (the
  gate gradients' shared cotangents).
* ``ops``: the model's operations with hand-written gradients
  (:func:`add_bias`, :func:`split`,
  :func:`stored_carry_scan`), which keep the precision and memory mechanics
  out of the model code.
* ``warp``: :func:`flow_warp`, bilinear sampling along learned flows whose
  gradient keeps only the image and the flow, in XLA (any platform) or as
  native custom calls (CPU; :data:`WARP_IMPLS`, :func:`resolve_warp`).
* ``native``: building, loading and batch-partitioning the C++ kernels in
  ``native/``.

A model names its convolution kernel, one of :data:`CONV_IMPLS` (the table
in ``docs/performance.md``), and :func:`resolve` turns ``auto`` (``onednn`` on
CPU where it is available, else ``matmul``; ``xla`` on GPU and TPU) into a
concrete kernel once, when the model is built; :func:`conv2d` takes the
concrete name, so models with different kernels or dtypes live side by side.
``onednn`` sends the convolutions it does not cover (input dilation, other
dtypes) to ``matmul``.
"""

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msrnn_jax.backend import allocator, matmul_grads, onednn, warp
from msrnn_jax.backend.native import busy_cores_warning
from msrnn_jax.backend.ops import add_bias, packed_residual_scan, split, stored_carry_scan
from msrnn_jax.backend.packing import concatenate, pack, stash, unpack, unstash
from msrnn_jax.backend.warp import WARP_IMPLS, flow_warp

__all__ = ["CONV_IMPLS", "FLOP_COUNTABLE", "WARP_IMPLS", "add_bias", "busy_cores_warning",
           "concatenate", "conv2d", "conv2d_of_parts", "describe", "fast_dtype", "flow_warp",
           "pack", "packed_residual_scan", "prepare_host", "release_freed_memory",
           "release_if_heap_moved", "resolve", "resolve_warp", "split",
           "stored_carry_scan", "summary", "unpack"]

CONV_IMPLS = ("auto", "xla", "matmul", "matmul_bf16", "onednn")
# Kernels whose convolutions XLA's cost analysis can count (custom calls are
# opaque to ``compiled.cost_analysis()``; ``matmul`` has the same FLOPs).
FLOP_COUNTABLE = ("xla", "matmul", "matmul_bf16")


def resolve(conv_impl: str) -> str:
  """The kernel ``conv_impl`` stands for on this platform (``auto`` resolved).

  Raises:
    ValueError: unknown name. RuntimeError: ``onednn`` asked for where it
      cannot run (with the reason and the install line).
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {', '.join(CONV_IMPLS)}.")
  if conv_impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    return "onednn" if onednn.available() else "matmul"
  if conv_impl == "onednn":
    onednn.require()
  return conv_impl


# The flow warp ``warp_impl`` stands for here: ``'native'`` on CPU where it builds, else ``'xla'``.
resolve_warp = warp.resolve


def fast_dtype(conv_impl: str) -> str:
  """The compute dtype that trains fastest with a kernel: what ``model.dtype='auto'`` resolves to.

  ``'bfloat16'`` on GPU and TPU (XLA's bfloat16 convolutions) and on CPUs
  whose oneDNN convolutions have native bfloat16 kernels (AMX, AVX-512
  BF16); ``'float32'`` on other CPUs, where bfloat16 convolutions take the
  portable path and are slower than float32.
  """
  if jax.default_backend() != "cpu":
    return "bfloat16"
  return "bfloat16" if resolve(conv_impl) == "onednn" and onednn.bf16_supported() else "float32"


def describe(conv_impl: str = "auto", warp_impl: str = "auto") -> dict[str, str]:
  """What this process runs the kernels on, for logs and benchmark records."""
  impl = resolve(conv_impl)
  info = {"platform": jax.default_backend(), "conv_impl": impl,
          "warp_impl": resolve_warp(warp_impl),
          "keep_freed_memory": "on" if allocator.applied() else "off",
          "auto_dtype": fast_dtype(impl)}
  conv = impl
  if impl == "onednn":
    bf16 = onednn.bf16_supported()
    info.update(onednn=onednn.version() or "", cpu_isa=onednn.cpu_isa() or "", bf16=str(bf16))
    conv = (f"oneDNN {info['onednn']} (ISA {info['cpu_isa']}, bfloat16 "
            f"{'native' if bf16 else 'on the matmul path'})")
  elif impl == "matmul" and jax.default_backend() == "cpu":
    reason = onednn.unavailable_reason()
    if reason:
      conv += f" (oneDNN unavailable: {reason}; pip install 'msrnn_jax[cpu]')"
  info["conv"] = conv
  info["warp"] = info["warp_impl"]
  if info["warp_impl"] == "xla" and jax.default_backend() == "cpu":
    info["warp"] += f" (native unavailable: {warp.unavailable_reason()})"
  return info


def summary(conv_impl: str = "auto", warp_impl: str = "auto") -> str:
  """One log line: the kernels and the host-memory setting."""
  info = describe(conv_impl, warp_impl)
  line = (f"convolutions: {info['conv']}; flow warp: {info['warp']}; "
          f"model.dtype 'auto' = {info['auto_dtype']}; "
          f"keep_freed_memory: {info['keep_freed_memory']}")
  if info["platform"] == "cpu" and not allocator.applied():
    line += (" (to stop per-step page faults, call msrnn_jax.backend.prepare_host() before the "
             "first JAX computation; msrnn_jax.main does)")
  elif info["platform"] == "cpu" and not allocator.started_with_glibc_tunables():
    line += (" (glibc's per-thread cache is on, so steps can alternate between two blocks of "
             "host memory: call msrnn_jax.backend.prepare_host(restart_program=True) first "
             "thing; msrnn_jax.main does)")
  return line


def prepare_host(keep_freed_memory: bool = True, *, restart_program: bool = False) -> bool:
  """Process set-up to run before the first JAX computation (see ``allocator``).

  Args:
    keep_freed_memory: make glibc keep freed memory for the next steps.
    restart_program: with ``keep_freed_memory``, first run the program again,
      once, with glibc's start-up settings
      (:func:`allocator.restart_with_glibc_tunables`); for a program's entry
      point, before it writes anything.

  Returns:
    Whether freed host memory is kept for reuse.
  """
  if not keep_freed_memory:
    return False
  if restart_program:
    allocator.restart_with_glibc_tunables()
  return allocator.keep_freed_memory()


release_freed_memory = allocator.release_freed_memory
release_if_heap_moved = allocator.release_if_heap_moved


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: str | Sequence[tuple[int, int]] = "SAME",
           lhs_dilation: int = 1, dtype=None, conv_impl: str = "xla") -> jax.Array:
  """2-D convolution, NHWC x HWIO -> NHWC, no bias, on a named kernel.

  Args:
    x: input ``[batch, height, width, in_channels]``.
    kernel: ``[kh, kw, in_channels, out_channels]``.
    stride: spatial stride (both axes).
    padding: ``'SAME'``/``'VALID'`` or explicit ``((lo, hi), (lo, hi))``.
    lhs_dilation: input dilation (used for transposed convolutions).
    dtype: compute dtype (default: the common type of ``x`` and
      ``kernel``). Both are cast to it; the kernel's gradient comes back in
      the kernel's own dtype. With float32 master weights and bfloat16
      compute, ``onednn`` accumulates that gradient in float32 and returns
      it unrounded; the other kernels round it to bfloat16 first.
    conv_impl: the kernel, one of ``CONV_IMPLS`` but ``auto`` (a model
      resolves ``auto`` when it is built, :func:`resolve`).

  Returns:
    ``[batch, out_height, out_width, out_channels]`` of ``dtype``.
  """
  if conv_impl not in CONV_IMPLS[1:]:
    raise ValueError(f"conv2d needs a concrete conv_impl, one of {CONV_IMPLS[1:]}; got "
                     f"{conv_impl!r} (backend.resolve turns 'auto' into one).")
  impl = conv_impl
  if impl == "onednn":
    onednn.require()
  dtype = jnp.result_type(x.dtype, kernel.dtype) if dtype is None else jnp.dtype(dtype)
  x = x.astype(dtype)
  strides = (stride, stride)
  dil = (lhs_dilation, lhs_dilation)
  if isinstance(padding, str):
    if dil != (1, 1):
      raise ValueError("Dilated convolutions need explicit padding.")
    padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  if impl == "onednn":
    covered = (onednn.supports(x.shape, kernel.shape, dtype, strides, padding, dil)
               and kernel.dtype in (jnp.float32, jnp.bfloat16))
    impl = "onednn" if covered else "matmul"
  pointwise = (kernel.shape[:2] == (1, 1) and strides == (1, 1) and dil == (1, 1)
               and padding == ((0, 0), (0, 0)))
  if pointwise and not (impl == "onednn" and (dtype == jnp.bfloat16 or
                                               not onednn.has_amx())):
    # A 1x1 convolution is a product over channels, which XLA runs on its
    # matrix kernels. oneDNN's 1x1 kernels are faster in bfloat16 (XLA:CPU
    # widens both operands to float32 first) and, without AMX, in float32
    # too; with AMX, XLA's float32 dot is as fast (docs/performance.md).
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(dtype))
  if impl == "onednn":
    return onednn.conv(x, kernel, strides, padding)
  kernel = kernel.astype(dtype)
  if impl == "xla":
    return matmul_grads.xla_conv(x, kernel, strides, padding, dil)
  return matmul_grads.conv(x, kernel, strides, padding, dil, impl == "matmul_bf16")


def conv2d_of_parts(xs: Sequence[jax.Array], kernel: jax.Array, *, dtype,
                    conv_impl: str) -> jax.Array:
  """``conv2d(concatenate(xs, dtype), kernel)`` (stride 1, ``'SAME'``), its gradient keeping ``xs``.

  Autodiff keeps the concatenation for the kernel gradient: a copy of
  inputs that a step often keeps anyway (a cell's input read by two fused
  convolutions, a memory whose update keeps it). Here the backward pass
  keeps the parts themselves, each stored once however many operations
  read it, and concatenates them again (a transient). Values and gradients
  are :func:`conv2d`'s.

  Args:
    xs: the parts ``[batch, height, width, channels_i]``, stacked along
      channels in this order.
    kernel: ``[kh, kw, sum(channels_i), out_channels]``.
    dtype: the compute dtype (the parts are rounded to it, as by
      :func:`concatenate`).
    conv_impl: as in :func:`conv2d`.

  Returns:
    ``[batch, height, width, out_channels]`` of ``dtype``.
  """
  return _conv_of_parts(tuple(xs), kernel, jnp.dtype(dtype), conv_impl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_of_parts(xs, kernel, dtype, conv_impl):
  return conv2d(concatenate(xs, dtype), kernel, dtype=dtype, conv_impl=conv_impl)


def _conv_of_parts_fwd(xs, kernel, dtype, conv_impl):
  # Each part stashed on its own: a float32 part is the very array other
  # residuals keep (stored once); a bfloat16 one is packed (``packing``),
  # which a scan stores once however many convolutions pack it
  # (``packed_residual_scan``).
  return _conv_of_parts(xs, kernel, dtype, conv_impl), (tuple(stash((x,)) for x in xs), kernel)


def _conv_of_parts_bwd(dtype, conv_impl, res, dy):
  stashed, kernel = res
  xs = tuple(unstash(s)[0] for s in stashed)
  # The forward convolution this vjp also traces has no consumer: XLA drops it.
  _, vjp = jax.vjp(lambda x, k: conv2d(x, k, dtype=dtype, conv_impl=conv_impl),
                   concatenate(xs, dtype), kernel)
  dx, dkernel = vjp(dy)
  ends = list(itertools.accumulate(x.shape[-1] for x in xs))[:-1]
  return tuple(d.astype(x.dtype) for d, x in zip(jnp.split(dx, ends, axis=-1), xs,
                                                  strict=True)), dkernel


_conv_of_parts.defvjp(_conv_of_parts_fwd, _conv_of_parts_bwd)
