"""Convolutions for the recurrent cells, with CPU-friendly gradients.

On XLA:CPU the stock convolution gradients are slow in two ways (figures in
``docs/performance.md``): the kernel gradient (dK) runs on a generic path at
a fifth of the matmul rate, and inside a rolled ``nn.scan`` (a while loop)
the input gradient (dX) keeps its kernel in a transposed layout that misses
the fast convolution library (~10x slower) while dK slows down ~50x. The
``matmul`` implementations keep XLA's forward convolution and replace both
gradients with forms XLA:CPU runs on its fast kernels wherever they sit:

* dX: an explicit forward convolution of the output gradient with the
  flipped, in/out-swapped kernel, materialised in the canonical HWIO layout.
* dK: matrix products ``dK[i, j] = X_ij^T dY`` with ``X_ij`` the input
  shifted by kernel tap (i, j), taken from a channel-major copy of the
  padded input so the contraction axis (batch x pixels) is contiguous in
  both operands, the layout XLA:CPU's dot library prefers.

Implementations (config key ``model.conv_impl``):

* ``xla``: ``jax.lax.conv_general_dilated`` with autodiff (GPU default).
* ``matmul``: the custom VJP above, float32 throughout (CPU default). Equal
  to ``xla`` to float32 rounding.
* ``matmul_bf16``: as ``matmul`` but the dK products take bfloat16 operands
  with float32 accumulation (faster on CPUs with AVX512-BF16 or AMX; kernel
  gradients differ at the 1e-3 relative level, see ``docs/performance.md``).
* ``onednn``: forward, dX and dK through oneDNN (the library behind
  PyTorch's CPU convolutions) as XLA FFI custom calls reading XLA's NHWC
  buffers in place (``msrnn_jax.onednn``), CPU only, each device on its
  own batch slice under data parallelism. float32, or bfloat16 activations
  with float32 accumulation and a float32 kernel gradient where the CPU
  has bfloat16 arithmetic (``onednn.bf16_supported``). Convolutions it
  does not cover (input dilation, negative padding, other dtypes) take the
  ``matmul`` path. Fastest on CPU (``docs/performance.md``).
* ``auto``: ``onednn`` on CPU where it is available (any device count),
  ``matmul`` on other CPU set-ups, ``xla`` elsewhere.

Layouts are NHWC activations and HWIO kernels throughout.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax import onednn

CONV_IMPLS = ("auto", "xla", "matmul", "matmul_bf16", "onednn")
INITS = ("torch", "flax")

_DN = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]


def resolve_impl(impl: str) -> str:
  """Maps ``auto`` to the implementation suited to the default backend."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {impl!r}; valid: {', '.join(CONV_IMPLS)}.")
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    # Any device count: the custom calls partition over the batch
    # (onednn.conv_forward / conv_backward).
    return "onednn" if onednn.available() else "matmul"
  if impl == "onednn":
    onednn.require()
  return impl


def _xla_conv(x, kernel, stride, padding, lhs_dilation):
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
def _matmul_conv(x, kernel, stride, padding, lhs_dilation, bf16):
  return _xla_conv(x, kernel, stride, padding, lhs_dilation)


def _matmul_conv_fwd(x, kernel, stride, padding, lhs_dilation, bf16):
  return _xla_conv(x, kernel, stride, padding, lhs_dilation), (x, kernel)


def _matmul_conv_bwd(stride, padding, lhs_dilation, bf16, res, dy):
  x, kernel = res
  dx = input_grad(dy, kernel, x.shape[1:3], stride, padding, lhs_dilation)
  dk_fn = conv_dk_matmul_bf16 if bf16 else conv_dk_matmul
  dk = dk_fn(x, dy, tuple(kernel.shape), stride, padding, lhs_dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)


# The kernel enters in its own dtype (float32 master weights under bfloat16
# activations): the custom calls convert it, and its gradient, accumulated
# in float32 by oneDNN, goes back to the float32 parameters without a detour
# through bfloat16.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x, kernel, stride, padding):
  return onednn.conv_forward(x, kernel, stride, padding)


def _onednn_conv_fwd(x, kernel, stride, padding):
  return onednn.conv_forward(x, kernel, stride, padding), (x, kernel)


def _onednn_conv_bwd(stride, padding, res, dy):
  x, kernel = res
  dx, dk = onednn.conv_backward(x, kernel, dy.astype(x.dtype), stride, padding)
  return dx, dk.astype(kernel.dtype)


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: str | Sequence[tuple[int, int]] = "SAME",
           lhs_dilation: int = 1, impl: str = "auto", dtype=None) -> jax.Array:
  """2-D convolution, NHWC x HWIO -> NHWC, no bias.

  Args:
    x: input ``[batch, height, width, in_channels]``.
    kernel: ``[kh, kw, in_channels, out_channels]``.
    stride: spatial stride (both axes).
    padding: ``'SAME'``/``'VALID'`` or explicit ``((lo, hi), (lo, hi))``.
    lhs_dilation: input dilation (used for transposed convolutions).
    impl: one of ``CONV_IMPLS``.
    dtype: compute dtype (default: the common type of ``x`` and
      ``kernel``). Both are cast to it; the kernel's gradient comes back in
      the kernel's own dtype. With float32 master weights and bfloat16
      compute, ``onednn`` accumulates that gradient in float32 and returns
      it unrounded; the other implementations round it to bfloat16 first.

  Returns:
    ``[batch, out_height, out_width, out_channels]`` of ``dtype``.
  """
  impl = resolve_impl(impl)
  dtype = jnp.result_type(x.dtype, kernel.dtype) if dtype is None else jnp.dtype(dtype)
  x = x.astype(dtype)
  strides = (stride, stride)
  dil = (lhs_dilation, lhs_dilation)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(
        x.shape[1:3], kernel.shape[:2], strides, padding) if dil == (1, 1) else padding
  if isinstance(padding, str):
    raise ValueError("Dilated convolutions need explicit padding.")
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  if impl == "onednn":
    if (onednn.supports(x.shape, kernel.shape, dtype, strides, padding, dil)
        and kernel.dtype in (jnp.float32, jnp.bfloat16)):
      return _onednn_conv(x, kernel, strides, padding)
    impl = "matmul"
  kernel = kernel.astype(dtype)
  if impl == "xla":
    return _xla_conv(x, kernel, strides, padding, dil)
  return _matmul_conv(x, kernel, strides, padding, dil, impl == "matmul_bf16")


def torch_uniform_init(fan_in: int):
  """PyTorch's Conv2d default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).

  The same bound is PyTorch's default for the bias.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """A convolution holding one PyTorch-style ``Conv2d``'s parameters.

  Parameters are created in ``setup`` from the declared ``in_features`` so a
  parent can fuse several convolutions that feed the same sum into one call
  (see :func:`fused_conv`), which halves the number of kernel launches without
  changing the parameter tree.

  Attributes:
    features: output channels.
    in_features: input channels.
    kernel_size: square kernel size.
    stride: spatial stride.
    transpose: if True, a ``ConvTranspose2d`` with ``padding``
      ``torch_padding`` (output size ``(in - 1) * stride - 2 p + k``).
    torch_padding: the PyTorch ``padding`` of a transposed convolution.
    use_bias: add a bias.
    impl: convolution implementation (``CONV_IMPLS``).
    initializer: ``'torch'`` (PyTorch defaults) or ``'flax'`` (lecun normal, zero bias).
    dtype: compute dtype; parameters stay float32.
  """

  features: int
  in_features: int
  kernel_size: int = 3
  stride: int = 1
  transpose: bool = False
  torch_padding: int = 0
  use_bias: bool = True
  impl: str = "auto"
  initializer: str = "torch"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.initializer not in INITS:
      raise ValueError(f"Unknown init {self.initializer!r}; valid: {', '.join(INITS)}.")
    k = self.kernel_size
    # PyTorch computes fan_in from weight.size(1) * k * k: in_channels for a
    # conv, but out_channels for a transposed conv (weight is (in, out, k, k)).
    fan_in = (self.features if self.transpose else self.in_features) * k * k
    if self.initializer == "torch":
      k_init = b_init = torch_uniform_init(fan_in)
    else:
      k_init, b_init = nn.initializers.lecun_normal(), nn.initializers.zeros
    self.kernel = self.param("kernel", k_init, (k, k, self.in_features, self.features))
    if self.use_bias:
      self.bias = self.param("bias", b_init, (self.features,))

  def check_input(self, x: jax.Array) -> None:
    if x.shape[-1] != self.in_features:
      raise ValueError(
          f"{self.name}: expected {self.in_features} input channels, got array of shape "
          f"{x.shape}; check the channel count of the data (config data.channels).")

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution to ``x`` ``[batch, height, width, in_features]``."""
    self.check_input(x)
    x = x.astype(self.dtype)
    # conv2d gets the float32 kernel and casts it itself (see its dtype).
    if self.transpose:
      # A transposed conv is a stride-1 conv over the stride-dilated input with
      # padding k-1-p; the kernel is stored in that forward orientation.
      pad = self.kernel_size - 1 - self.torch_padding
      y = conv2d(x, self.kernel, padding=((pad, pad), (pad, pad)),
                 lhs_dilation=self.stride, impl=self.impl, dtype=self.dtype)
    elif self.kernel_size == 1 and self.stride == 1:
      # A 1x1 convolution is a matmul over channels: use the dot directly.
      y = jnp.einsum("nhwc,cd->nhwd", x, self.kernel[0, 0].astype(self.dtype))
    else:
      padding = "SAME" if self.stride == 1 else "VALID"
      y = conv2d(x, self.kernel, stride=self.stride, padding=padding, impl=self.impl,
                 dtype=self.dtype)
    if self.use_bias:
      y = y + self.bias.astype(self.dtype)
    return y


def fused_conv(convs: Sequence[Conv], xs: Sequence[jax.Array]) -> jax.Array:
  """Computes ``sum_i convs[i](xs[i])`` as one convolution.

  Stacking the inputs along channels and the kernels along their input axis
  gives the same sum with one larger, faster convolution.

  Args:
    convs: stride-1, same-size ``Conv`` modules with equal ``features``.
    xs: their inputs ``[batch, height, width, convs[i].in_features]``.

  Returns:
    ``[batch, height, width, features]``.
  """
  if len(convs) == 1:
    return convs[0](xs[0])
  for c, x in zip(convs, xs, strict=True):
    c.check_input(x)
  c0 = convs[0]
  dtype = c0.dtype
  x = jnp.concatenate([x.astype(dtype) for x in xs], axis=-1)
  # Concatenated in the parameters' float32; conv2d casts (see its dtype).
  kernel = jnp.concatenate([c.kernel for c in convs], axis=2)
  if c0.kernel_size == 1:
    y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(dtype))
  else:
    y = conv2d(x, kernel, impl=c0.impl, dtype=dtype)
  bias = sum(c.bias.astype(dtype) for c in convs if c.use_bias)
  return y + bias
