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
* ``packing``: :func:`pack` / :func:`unpack` (:func:`stash` / :func:`unstash`
  for custom-gradient residuals), bfloat16 values (checkpointed
  carries, gate activations, stacked convolution inputs) in float16
  containers on CPU, where XLA would keep or move them as float32.
* ``warp``: :func:`flow_warp`, bilinear sampling along learned flows whose
  gradient keeps only the image and the flow (any platform).

One process-wide setting picks the convolution (config ``backend.conv_impl``,
applied by :func:`configure`):

* ``auto`` (default): ``onednn`` on CPU where it is available (any device
  count: the custom calls partition over the batch), ``matmul`` on other CPU
  set-ups, ``xla`` on GPU and TPU.
* ``xla``: ``jax.lax.conv_general_dilated`` with autodiff.
* ``matmul``: the portable gradients, float32 throughout.
* ``matmul_bf16``: as ``matmul`` with bfloat16 kernel-gradient products
  (float32 accumulation).
* ``onednn``: oneDNN forward, dX and dK; float32, or bfloat16 activations
  with float32 accumulation where the CPU has bfloat16 arithmetic.
  Convolutions it does not cover (input dilation, other dtypes) take the
  ``matmul`` path.

The choice is read when a computation is traced, so :func:`configure`
clears JAX's compilation caches when it changes the choice. A script that
compares kernels in one process compiles each inside :func:`using`, ahead
of time (``jax.jit(f).lower(...).compile()``).
"""

import contextlib
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

from msrnn_jax.backend import allocator, matmul_grads, onednn
from msrnn_jax.backend.packing import concatenate, pack, stash, unpack, unstash
from msrnn_jax.backend.warp import flow_warp

__all__ = ["CONV_IMPLS", "concatenate", "configure", "conv2d", "conv_impl", "describe", "fast_dtype",
           "flop_countable", "flow_warp", "pack", "prepare_host", "resolve", "stash", "summary", "unpack",
           "unstash", "using"]

CONV_IMPLS = ("auto", "xla", "matmul", "matmul_bf16", "onednn")

_setting = {"conv_impl": "auto"}


def resolve(conv_impl: str) -> str:
  """The kernel ``conv_impl`` stands for on this platform (``auto`` resolved)."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {', '.join(CONV_IMPLS)}.")
  if conv_impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    return "onednn" if onednn.available() else "matmul"
  if conv_impl == "onednn":
    onednn.require()
  return conv_impl


def configure(conv_impl: str = "auto") -> str:
  """Sets the process-wide convolution kernel; returns it resolved.

  Args:
    conv_impl: one of ``CONV_IMPLS``.

  Raises:
    ValueError: unknown name. RuntimeError: ``onednn`` asked for where it
      cannot run (with the reason and the install line).
  """
  resolved = resolve(conv_impl)
  if conv_impl != _setting["conv_impl"]:
    _setting["conv_impl"] = conv_impl
    # Traces made under the old choice must not be reused.
    jax.clear_caches()
  return resolved


def conv_impl() -> str:
  """The convolution kernel in use (resolved, e.g. ``'onednn'``)."""
  return resolve(_setting["conv_impl"])


@contextlib.contextmanager
def using(conv_impl: str) -> Iterator[str]:
  """Runs a block with another convolution kernel (benchmarks, tests)."""
  old = _setting["conv_impl"]
  try:
    yield configure(conv_impl)
  finally:
    configure(old)


@contextlib.contextmanager
def flop_countable() -> Iterator[bool]:
  """A block whose convolutions XLA's cost analysis can count.

  Custom calls are opaque to ``compiled.cost_analysis()``; the portable
  kernel has the same FLOPs and is fully visible. Yields whether the kernel
  was switched for the block (programs compiled before it then need
  compiling again inside it).
  """
  if conv_impl() in ("xla", "matmul", "matmul_bf16"):
    yield False
  else:
    with using("matmul"):
      yield True


def fast_dtype() -> str:
  """The compute dtype that trains fastest here: what ``model.dtype='auto'`` resolves to.

  ``'bfloat16'`` on GPU and TPU (XLA's bfloat16 convolutions) and on CPUs
  whose oneDNN convolutions have native bfloat16 kernels (AMX, AVX-512
  BF16); ``'float32'`` on other CPUs, where bfloat16 convolutions take the
  portable path and are slower than float32.
  """
  if jax.default_backend() != "cpu":
    return "bfloat16"
  return "bfloat16" if conv_impl() == "onednn" and onednn.bf16_supported() else "float32"


def describe() -> dict[str, str]:
  """What this process runs on, for logs and benchmark records."""
  impl = conv_impl()
  info = {"platform": jax.default_backend(), "conv_impl": impl,
          "keep_freed_memory": "on" if allocator.applied() else "off",
          "auto_dtype": fast_dtype()}
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
  return info


def summary() -> str:
  """One log line: the convolution kernel and the host-memory setting."""
  info = describe()
  line = (f"convolutions: {info['conv']}; model.dtype 'auto' = {info['auto_dtype']}; "
          f"keep_freed_memory: {info['keep_freed_memory']}")
  if info["platform"] == "cpu" and not allocator.applied():
    line += (" (to stop per-step page faults, call msrnn_jax.backend.prepare_host() before the "
             "first JAX computation; msrnn_jax.main does)")
  return line


def prepare_host(keep_freed_memory: bool = True) -> bool:
  """Process set-up to run before the first JAX computation (see ``allocator``).

  Returns:
    Whether freed host memory is kept for reuse.
  """
  return allocator.keep_freed_memory() if keep_freed_memory else False


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: str | Sequence[tuple[int, int]] = "SAME",
           lhs_dilation: int = 1, dtype=None, conv_impl: str | None = None) -> jax.Array:
  """2-D convolution, NHWC x HWIO -> NHWC, no bias, on the configured kernel.

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
    conv_impl: overrides the process-wide kernel for this call (tests and
      benchmarks compare kernels with it).

  Returns:
    ``[batch, out_height, out_width, out_channels]`` of ``dtype``.
  """
  impl = resolve(_setting["conv_impl"] if conv_impl is None else conv_impl)
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
  if pointwise and not (impl == "onednn" and dtype == jnp.bfloat16):
    # A 1x1 convolution is a product over channels, which XLA runs on its
    # matrix kernels; but in bfloat16 XLA:CPU widens both operands to
    # float32 first, while oneDNN takes them as they are.
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(dtype))
  if impl == "onednn":
    return onednn.conv(x, kernel, strides, padding)
  kernel = kernel.astype(dtype)
  if impl == "xla":
    return matmul_grads.xla_conv(x, kernel, strides, padding, dil)
  return matmul_grads.conv(x, kernel, strides, padding, dil, impl == "matmul_bf16")
