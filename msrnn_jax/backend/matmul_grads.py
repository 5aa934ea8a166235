"""Portable convolution gradients for XLA:CPU (the ``matmul`` kernels).

On XLA:CPU the stock convolution gradients are slow in two ways (figures in
``docs/performance.md``): the kernel gradient (dK) runs on a generic path at
a fifth of the matmul rate, and inside a rolled ``nn.scan`` (a while loop)
the input gradient (dX) keeps its kernel in a transposed layout that misses
the fast convolution library (~10x slower) while dK slows down ~50x.
:func:`conv` keeps XLA's forward convolution and replaces both gradients
with forms XLA:CPU runs on its fast kernels wherever they sit:

* dX: an explicit forward convolution of the output gradient with the
  flipped, in/out-swapped kernel, materialised in the canonical HWIO layout.
* dK: matrix products ``dK[i, j] = X_ij^T dY`` with ``X_ij`` the input
  shifted by kernel tap (i, j), taken from a channel-major copy of the
  padded input so the contraction axis (batch x pixels) is contiguous in
  both operands, the layout XLA:CPU's dot library prefers.

Equal to XLA's own gradients to float32 rounding. Layouts: NHWC
activations, HWIO kernels.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]


def xla_conv(x, kernel, stride, padding, lhs_dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=stride, padding=padding,
      lhs_dilation=lhs_dilation, dimension_numbers=_DN)


def _dilate_pad(x: jax.Array, padding: Padding, lhs_dilation: Pair) -> jax.Array:
  """The input as the convolution window sees it: dilated, then edge-padded.

  ``lax.pad``'s interior padding inserts the ``lhs_dilation - 1`` zeros and
  its edge padding may be negative (cropping), as in the convolution.
  """
  (top, bottom), (left, right) = padding
  dh, dw = lhs_dilation
  return jax.lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (top, bottom, dh - 1), (left, right, dw - 1), (0, 0, 0)))


def input_grad(dy: jax.Array, kernel: jax.Array, in_hw: Pair, stride: Pair, padding: Padding,
               lhs_dilation: Pair) -> jax.Array:
  """dX of ``conv(x, kernel)`` as a forward convolution of ``dy``.

  The transposed convolution: ``dy`` dilated by the stride, padded so every
  input position sees the taps that touched it, correlated with the flipped
  kernel whose in/out axes are swapped, with the input dilation as stride.
  Swapping the axes with an explicit transpose (instead of through
  ``dimension_numbers``, as autodiff does) keeps the kernel in the HWIO
  layout XLA:CPU's fast convolution needs, also inside while loops.

  Args:
    dy: output gradient ``[batch, out_h, out_w, out_channels]``.
    kernel: ``[kh, kw, in_channels, out_channels]``.
    in_hw: the input's spatial size.
    stride: the forward window stride.
    padding: the forward explicit padding.
    lhs_dilation: the forward input dilation.

  Returns:
    ``[batch, in_h, in_w, in_channels]``.
  """
  pads = []
  for axis in range(2):
    k = kernel.shape[axis]
    lo = padding[axis][0]
    dilated_in = (in_hw[axis] - 1) * lhs_dilation[axis] + 1
    before = k - 1 - lo
    after = dilated_in + lo - 1 - (dy.shape[1 + axis] - 1) * stride[axis]
    pads.append((before, after))
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  return jax.lax.conv_general_dilated(
      dy, flipped.astype(dy.dtype), window_strides=lhs_dilation, padding=pads,
      lhs_dilation=stride, dimension_numbers=_DN)


def _dk_flat(x, dy, kernel_shape, padding, lhs_dilation, dtype):
  """Stride-1 dK as one product over flat-shifted channel-major patches.

  Padded rows of width ``wp`` flattened per image make tap (i, j) the
  contiguous range starting at ``i * wp + j``; dY gets ``kw - 1`` zero
  columns so the products that wrap around a row edge vanish. One
  ``[kh*kw*C, P'] @ [P', O]`` product, ``P' = P * wp / out_w`` (3% more
  FLOPs at 64x64, 12% at 16x16).
  """
  kh, kw, ci, co = kernel_shape
  n, oh, _, _ = dy.shape
  xp = _dilate_pad(x.astype(dtype), padding, lhs_dilation)
  hp, wp = xp.shape[1:3]
  length = oh * wp
  xt = jnp.transpose(xp, (3, 0, 1, 2)).reshape(ci, n, hp * wp)
  # Materialise the channel-major copy once; otherwise XLA fuses the
  # transpose into each of the kh*kw slices and transposes kh*kw times.
  xt = jax.lax.optimization_barrier(jnp.pad(xt, ((0, 0), (0, 0), (0, kw - 1))))
  a = jnp.stack([jax.lax.slice_in_dim(xt, i * wp + j, i * wp + j + length, axis=2)
                 for i in range(kh) for j in range(kw)]).reshape(kh * kw * ci, n * length)
  b = jnp.pad(dy.astype(dtype), ((0, 0), (0, 0), (0, kw - 1), (0, 0))).reshape(n * length, co)
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dk_taps(x, dy, kernel_shape, stride, padding, lhs_dilation, dtype):
  """dK as one ``[C, P] @ [P, O]`` product per tap, any stride."""
  kh, kw, ci, co = kernel_shape
  n, oh, ow, _ = dy.shape
  xt = jnp.transpose(_dilate_pad(x.astype(dtype), padding, lhs_dilation), (3, 0, 1, 2))
  xt = jax.lax.optimization_barrier(xt)  # as in _dk_flat
  b = dy.astype(dtype).reshape(n * oh * ow, co)
  sh, sw = stride
  taps = []
  for i in range(kh):
    for j in range(kw):
      a = jax.lax.slice(xt, (0, 0, i, j), (ci, n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1),
                        (1, 1, sh, sw)).reshape(ci, n * oh * ow)
      taps.append(jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32))
  return jnp.stack(taps)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int], stride: Pair,
                padding: Padding, lhs_dilation: Pair, bf16: bool = False) -> jax.Array:
  """dK of ``conv(x, kernel)`` as matrix products with a contiguous contraction axis.

  ``dK[i, j, ci, co] = sum_p X_ij[ci, p] dY[p, co]`` over p = (batch, out_y,
  out_x), where ``X_ij`` is the padded, dilated input shifted by tap (i, j)
  and subsampled by the stride. The shifted inputs are taken from one
  channel-major copy of the padded input, so the contraction axis is
  contiguous in both operands (``[C, P] @ [P, O]``), the layout XLA:CPU's
  dot library takes, also inside while loops. Two forms, chosen by
  measurement (``docs/performance.md``): float32 stride-1 convolutions use
  one product over flat-shifted patches (:func:`_dk_flat`); bfloat16
  operands and strided convolutions one product per tap (:func:`_dk_taps`),
  which avoids concatenating bfloat16 patches (XLA:CPU does that in float32).

  Args:
    x: input ``[batch, h, w, in_channels]``.
    dy: output gradient ``[batch, out_h, out_w, out_channels]``.
    kernel_shape: ``(kh, kw, in_channels, out_channels)``.
    stride: window stride.
    padding: explicit padding.
    lhs_dilation: input dilation.
    bf16: bfloat16 operands with float32 accumulation.

  Returns:
    float32 ``[kh, kw, in_channels, out_channels]``.
  """
  dtype = jnp.bfloat16 if bf16 else jnp.result_type(x.dtype, dy.dtype)
  if tuple(stride) == (1, 1) and dtype == jnp.float32:
    dk = _dk_flat(x, dy, kernel_shape, padding, lhs_dilation, dtype)
  else:
    dk = _dk_taps(x, dy, kernel_shape, stride, padding, lhs_dilation, dtype)
  return dk.reshape(tuple(kernel_shape))


# Named jits: inlined by XLA, but visible in jaxprs (``pjit[name=...]``), which
# is how tests check that the configured implementation reaches the cells.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def conv_dk_matmul(x, dy, kernel_shape, stride, padding, lhs_dilation):
  return kernel_grad(x, dy, kernel_shape, stride, padding, lhs_dilation, bf16=False)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def conv_dk_matmul_bf16(x, dy, kernel_shape, stride, padding, lhs_dilation):
  return kernel_grad(x, dy, kernel_shape, stride, padding, lhs_dilation, bf16=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x, kernel, stride, padding, lhs_dilation, bf16):
  return xla_conv(x, kernel, stride, padding, lhs_dilation)


def _matmul_conv_fwd(x, kernel, stride, padding, lhs_dilation, bf16):
  return xla_conv(x, kernel, stride, padding, lhs_dilation), (x, kernel)


def _matmul_conv_bwd(stride, padding, lhs_dilation, bf16, res, dy):
  x, kernel = res
  dx = input_grad(dy, kernel, x.shape[1:3], stride, padding, lhs_dilation)
  dk_fn = conv_dk_matmul_bf16 if bf16 else conv_dk_matmul
  dk = dk_fn(x, dy, tuple(kernel.shape), stride, padding, lhs_dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)
