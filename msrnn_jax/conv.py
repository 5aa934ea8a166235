"""Convolutions for the recurrent cells, with a CPU-friendly kernel gradient.

Inside a rolled ``nn.scan`` (a while loop), XLA:CPU computes the kernel
gradient (dK) of a convolution on a slow generic path, ~50x slower than the
same convolution outside a loop (see ``docs/performance.md``). The ``matmul``
implementation keeps XLA's fast forward convolution and input gradient but
computes dK as one matrix product over im2col patches of the input, which XLA
runs on its fast dot kernels wherever it sits.

Implementations (config key ``model.conv_impl``):

* ``xla``: ``jax.lax.conv_general_dilated`` with autodiff (GPU default).
* ``matmul``: custom VJP; forward and dX by XLA, dK by im2col + dot
  (CPU default). Equal to ``xla`` to float32 rounding.
* ``matmul_bf16``: as ``matmul`` but the dK product takes bfloat16 operands
  with float32 accumulation (faster on CPUs with AMX/AVX512-BF16; gradients
  differ at the 1e-3 relative level).
* ``auto``: ``matmul`` on CPU, ``xla`` elsewhere.

Layouts are NHWC activations and HWIO kernels throughout.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "matmul", "matmul_bf16")
INITS = ("torch", "flax")

_DN = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str) -> str:
  """Maps ``auto`` to the implementation suited to the default backend."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {impl!r}; valid: {', '.join(CONV_IMPLS)}.")
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  return impl


def _xla_conv(x, kernel, stride, padding, lhs_dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=stride, padding=padding,
      lhs_dilation=lhs_dilation, dimension_numbers=_DN)


def _patches(x, kh, kw, out_h, out_w, stride, padding, lhs_dilation):
  """im2col: (N, out_h, out_w, kh*kw*C) slices of the padded, dilated input.

  Column order is (kh, kw, C), matching a row-major reshape of an HWIO kernel.
  """
  if lhs_dilation != (1, 1):
    n, h, w, c = x.shape
    dh, dw = lhs_dilation
    z = jnp.zeros((n, (h - 1) * dh + 1, (w - 1) * dw + 1, c), x.dtype)
    x = z.at[:, ::dh, ::dw, :].set(x)
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  sh, sw = stride
  cols = []
  for i in range(kh):
    for j in range(kw):
      cols.append(jax.lax.slice(
          x, (0, i, j, 0),
          (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, x.shape[3]),
          (1, sh, sw, 1)))
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _kernel_grad(x, dy, kernel_shape, stride, padding, lhs_dilation, bf16):
  """dK[kh, kw, ci, co] = sum_{n,p} patch[n, p, kh, kw, ci] * dy[n, p, co]."""
  kh, kw, ci, co = kernel_shape
  n, oh, ow, _ = dy.shape
  cols = _patches(x, kh, kw, oh, ow, stride, padding, lhs_dilation)
  a = cols.reshape(n * oh * ow, kh * kw * ci)
  b = dy.reshape(n * oh * ow, co)
  if bf16:
    a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  dk = jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  return dk.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _matmul_conv(x, kernel, stride, padding, lhs_dilation, bf16):
  return _xla_conv(x, kernel, stride, padding, lhs_dilation)


def _matmul_conv_fwd(x, kernel, stride, padding, lhs_dilation, bf16):
  return _xla_conv(x, kernel, stride, padding, lhs_dilation), (x, kernel)


def _matmul_conv_bwd(stride, padding, lhs_dilation, bf16, res, dy):
  x, kernel = res
  # dX through XLA's own transposed convolution: fast on every backend.
  _, vjp_x = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride, padding, lhs_dilation), x)
  (dx,) = vjp_x(dy)
  dk = _kernel_grad(x, dy, kernel.shape, stride, padding, lhs_dilation, bf16)
  return dx, dk.astype(kernel.dtype)


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           padding: str | Sequence[tuple[int, int]] = "SAME",
           lhs_dilation: int = 1, impl: str = "auto") -> jax.Array:
  """2-D convolution, NHWC x HWIO -> NHWC, no bias.

  Args:
    x: input ``[batch, height, width, in_channels]``.
    kernel: ``[kh, kw, in_channels, out_channels]``.
    stride: spatial stride (both axes).
    padding: ``'SAME'``/``'VALID'`` or explicit ``((lo, hi), (lo, hi))``.
    lhs_dilation: input dilation (used for transposed convolutions).
    impl: one of ``CONV_IMPLS``.

  Returns:
    ``[batch, out_height, out_width, out_channels]``.
  """
  impl = resolve_impl(impl)
  strides = (stride, stride)
  dil = (lhs_dilation, lhs_dilation)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(
        x.shape[1:3], kernel.shape[:2], strides, padding) if dil == (1, 1) else padding
  if isinstance(padding, str):
    raise ValueError("Dilated convolutions need explicit padding.")
  padding = tuple(tuple(int(v) for v in p) for p in padding)
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
    kernel = self.kernel.astype(self.dtype)
    if self.transpose:
      # A transposed conv is a stride-1 conv over the stride-dilated input with
      # padding k-1-p; the kernel is stored in that forward orientation.
      pad = self.kernel_size - 1 - self.torch_padding
      y = conv2d(x, kernel, padding=((pad, pad), (pad, pad)),
                 lhs_dilation=self.stride, impl=self.impl)
    elif self.kernel_size == 1 and self.stride == 1:
      # A 1x1 convolution is a matmul over channels: use the dot directly.
      y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])
    else:
      padding = "SAME" if self.stride == 1 else "VALID"
      y = conv2d(x, kernel, stride=self.stride, padding=padding, impl=self.impl)
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
  kernel = jnp.concatenate([c.kernel.astype(dtype) for c in convs], axis=2)
  if c0.kernel_size == 1:
    y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])
  else:
    y = conv2d(x, kernel, impl=c0.impl)
  bias = sum(c.bias.astype(dtype) for c in convs if c.use_bias)
  return y + bias
