"""Convolutions on a named kernel: which kernels exist, ``auto`` resolved, and ``conv2d``.

A model names its kernel, one of :data:`CONV_IMPLS` (the table in
``docs/performance.md``); :func:`resolve` turns ``auto`` (``onednn`` on CPU
where it is available, else ``matmul``; ``xla`` on GPU and TPU) into a
concrete kernel once, when the model is built, and :func:`conv2d` takes the
concrete name, so models with different kernels or dtypes live side by side.
``onednn`` computes an input-dilated (transposed) convolution as one
stride-1 convolution per output phase and sends the convolutions it does not
cover (strided input dilation, other dtypes) to ``matmul``.
"""

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msrnn_jax.backend import matmul_grads, onednn
from msrnn_jax.backend.packing import concatenate, stash, unstash

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
    def covered(padding, dil):
      return (onednn.supports(x.shape, kernel.shape, dtype, strides, padding, dil)
              and kernel.dtype in (jnp.float32, jnp.bfloat16))
    if dil != (1, 1) and strides == (1, 1) and covered(((0, 0), (0, 0)), (1, 1)):
      # oneDNN has no input dilation; its stride-1 convolutions compute each phase.
      return _by_output_phase(x, kernel, padding, dil, dtype, impl)
    impl = "onednn" if covered(padding, dil) else "matmul"
  pointwise = (kernel.shape[:2] == (1, 1) and strides == (1, 1) and dil == (1, 1)
               and padding == ((0, 0), (0, 0)))
  if pointwise and impl != "onednn":
    # A 1x1 convolution is a product over channels: XLA's matrix kernels.
    # (oneDNN's own 1x1 kernels are faster on CPU, in both dtypes.)
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(dtype))
  if impl == "onednn":
    return onednn.conv(x, kernel, strides, padding)
  kernel = kernel.astype(dtype)
  if impl == "xla":
    return matmul_grads.xla_conv(x, kernel, strides, padding, dil)
  return matmul_grads.conv(x, kernel, strides, padding, dil, impl == "matmul_bf16")


def _phase_plan(n: int, k: int, s: int, lo: int, hi: int):
  """One axis of an input-dilated convolution, split by output phase.

  Output ``s i + a`` reads the dilated input at ``s i + a + u - lo``, which is
  an input sample only for the taps ``u = (lo - a) mod s + s t``: input
  ``i + d + t`` with ``d = (a + (lo - a) mod s - lo) / s``. So phase ``a`` is
  a stride-1 convolution of the undilated input with those taps and padding
  ``(-d, ...)``.

  Returns:
    ``(out, m, plans)``: the output length, the outputs per phase (the last
    ones past ``out`` are cropped) and per phase ``(taps, crop_lo, pad_lo,
    crop_hi, pad_hi)``, ``taps`` a slice of the kernel axis, the input
    cropped or padded by the other four.
  """
  out = (n - 1) * s + 1 + lo + hi - k + 1
  m = -(-out // s)
  plans = []
  for a in range(s):
    u0 = (lo - a) % s
    taps = len(range(u0, k, s))
    d = (a + u0 - lo) // s
    before, after = -d, m + d + taps - 1 - n
    plans.append((slice(u0, k, s), max(-before, 0), max(before, 0),
                  max(-after, 0), max(after, 0)))
  return out, m, plans


def _by_output_phase(x, kernel, padding, dil, dtype, conv_impl):
  """A stride-1 convolution of the input dilated by ``dil`` (a transposed
  convolution) as ``dil_h * dil_w`` undilated ones, one per output phase, interleaved.

  The dilated input is mostly the zeros it inserts: per phase only every
  ``dil``-th tap meets a sample, so the phases together do the convolution's
  work once, on kernels that need no input dilation.
  """
  b, n_h, n_w, _ = x.shape
  k_h, k_w, _, c = kernel.shape
  out_h, m_h, plans_h = _phase_plan(n_h, k_h, dil[0], *padding[0])
  out_w, m_w, plans_w = _phase_plan(n_w, k_w, dil[1], *padding[1])
  rows = []
  for taps_h, crop_t, pad_t, crop_b, pad_b in plans_h:
    row = []
    for taps_w, crop_l, pad_l, crop_r, pad_r in plans_w:
      k = kernel[taps_h, taps_w]
      if 0 in k.shape[:2]:  # no tap of this phase meets an input sample
        row.append(jnp.zeros((b, m_h, m_w, c), dtype))
        continue
      xp = x[:, crop_t:n_h - crop_b, crop_l:n_w - crop_r]
      row.append(conv2d(xp, k, padding=((pad_t, pad_b), (pad_l, pad_r)), dtype=dtype,
                        conv_impl=conv_impl))
    rows.append(jnp.stack(row, axis=3))  # [b, m_h, m_w, dil_w, c]
  y = jnp.stack(rows, axis=2)  # [b, m_h, dil_h, m_w, dil_w, c]
  return y.reshape(b, m_h * dil[0], m_w * dil[1], c)[:, :out_h, :out_w]


def conv2d_of_parts(xs: Sequence[jax.Array], kernel: jax.Array, *, dtype,
                    conv_impl: str) -> jax.Array:
  """``conv2d(concatenate(xs, dtype), kernel)`` (stride 1, ``'SAME'``), its gradient keeping ``xs``.

  Autodiff keeps the concatenation for the kernel gradient: a copy of
  inputs that a step often keeps anyway (a cell's input read by two fused
  convolutions, a memory whose update keeps it). Here the backward pass
  keeps the parts themselves, each stored once however many operations
  read it. In float32 it takes each part's gradients with that part's block
  of the kernel; in bfloat16 it concatenates the parts again (a transient)
  for one call. Values and gradients are :func:`conv2d`'s.

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
  ends = list(itertools.accumulate(x.shape[-1] for x in xs))[:-1]

  def grads(x, k):
    # The forward convolution this vjp also traces has no consumer: XLA drops it.
    return jax.vjp(lambda x, k: conv2d(x, k, dtype=dtype, conv_impl=conv_impl), x, k)[1](dy)

  if dtype == jnp.float32:
    # Each part with its block of the kernel: nothing stacks the parts again. In an unrolled
    # time loop XLA schedules such stacks early and holds them through the forward pass.
    dxs, dks = zip(*(grads(x, k) for x, k in zip(xs, jnp.split(kernel, ends, axis=2),
                                                  strict=True)), strict=True)
    return dxs, jnp.concatenate(dks, axis=2)
  # A bfloat16 convolution is quick enough that a call's fixed cost shows: one call, on the
  # parts stacked again.
  dx, dkernel = grads(concatenate(xs, dtype), kernel)
  return tuple(d.astype(x.dtype) for d, x in zip(jnp.split(dx, ends, axis=-1), xs,
                                                  strict=True)), dkernel


_conv_of_parts.defvjp(_conv_of_parts_fwd, _conv_of_parts_bwd)
