"""The layers the cells are built of: PyTorch-style convolutions and warping.

:class:`Conv` holds one PyTorch ``Conv2d``'s parameters (``[kh, kw, in,
out]`` kernel, bias, PyTorch's default initialisation) and computes in the
model's dtype on the model's kernel (``backend.conv2d``). :func:`fused_conv` sums several convolutions of a cell in
one call. :func:`bilinear_warp` is TrajGRU's and MotionGRU's warping.
Layouts are NHWC activations and HWIO kernels throughout.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax import backend


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
    initializer: ``'torch'`` (PyTorch defaults) or ``'flax'`` (lecun normal, zero bias).
    dtype: compute dtype; parameters stay float32.
    conv_impl: the convolution kernel (a concrete ``backend.CONV_IMPLS`` name).
  """

  features: int
  in_features: int
  kernel_size: int = 3
  stride: int = 1
  transpose: bool = False
  torch_padding: int = 0
  use_bias: bool = True
  initializer: str = "torch"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "xla"

  def setup(self):
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
    # conv2d gets the float32 kernel and casts both itself (see its dtype).
    if self.transpose:
      # A transposed conv is a stride-1 conv over the stride-dilated input with
      # padding k-1-p; the kernel is stored in that forward orientation.
      pad = self.kernel_size - 1 - self.torch_padding
      y = backend.conv2d(x, self.kernel, padding=((pad, pad), (pad, pad)),
                         lhs_dilation=self.stride, dtype=self.dtype, conv_impl=self.conv_impl)
    else:
      padding = "SAME" if self.stride == 1 else "VALID"
      y = backend.conv2d(x, self.kernel, stride=self.stride, padding=padding, dtype=self.dtype,
                         conv_impl=self.conv_impl)
    if self.use_bias:
      y = backend.add_bias(y, self.bias)
    return y


def fused_conv(convs: Sequence[Conv], xs: Sequence[jax.Array],
               kept: Sequence[jax.Array] = ()) -> jax.Array:
  """Computes ``sum_i convs[i](xs[i])`` as one convolution.

  Stacking the inputs along channels and the kernels along their input axis
  gives the same sum with one larger, faster convolution.

  Args:
    convs: stride-1, same-size ``Conv`` modules with equal ``features``.
    xs: their inputs ``[batch, height, width, convs[i].in_features]``.
    kept: inputs that the step keeps as they are anyway (see :func:`conv_of_parts`).

  Returns:
    ``[batch, height, width, features]``.
  """
  if len(convs) == 1:
    return convs[0](xs[0])
  for c, x in zip(convs, xs, strict=True):
    c.check_input(x)
  return conv_of_parts(convs, xs, kept)


def conv_of_parts(convs: Sequence[Conv], xs: Sequence[jax.Array],
                  kept: Sequence[jax.Array] = ()) -> jax.Array:
  """``convs``, kernels stacked along their input axis, over ``xs`` stacked along channels.

  The backward pass keeps the parts ``xs``, not their stack: an array that
  several convolutions (or a gate update) of a step read is stored once.
  A part is kept as the convolution reads it, rounded to the compute dtype
  (the kernel gradient needs nothing more), unless it is one of ``kept``:
  an array that another operation of the step keeps unrounded for its own
  gradient (a memory its update reads), which is then shared, not copied.
  In bfloat16 that halves the stored float32 carries that only
  convolutions read; in float32 nothing changes.

  Args:
    convs: stride-1, same-size ``Conv`` modules with equal ``features``,
      whose ``in_features`` add up to the parts' channels.
    xs: the parts ``[batch, height, width, channels_i]``.
    kept: parts (the same array objects as in ``xs``) stored as they are.

  Returns:
    ``[batch, height, width, features]``.
  """
  channels = sum(x.shape[-1] for x in xs)
  if channels != sum(c.in_features for c in convs):
    raise ValueError(f"{', '.join(c.name for c in convs)}: expected "
                     f"{sum(c.in_features for c in convs)} input channels in all, got parts of "
                     f"shapes {[x.shape for x in xs]}.")
  c0 = convs[0]
  narrow = jnp.dtype(c0.dtype)
  xs = [x if any(x is k for k in kept) or x.dtype.itemsize <= narrow.itemsize
        else x.astype(narrow) for x in xs]
  # Concatenated in the parameters' float32; the convolution casts (see conv2d's dtype).
  kernel = jnp.concatenate([c.kernel for c in convs], axis=2)
  y = backend.conv2d_of_parts(xs, kernel, dtype=c0.dtype, conv_impl=c0.conv_impl)
  biases = [c.bias for c in convs if c.use_bias]
  return backend.add_bias(y, sum(biases)) if biases else y


# A convolution's gate chunks: ``split_gates(y, n) = jnp.split(y, n, axis=-1)``.
split_gates = backend.split


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


# TrajGRU's and MotionGRU's warp: ``image`` sampled bilinearly at ``(x + dx, y + dy)`` for each
# of K flows (``backend.flow_warp``: shapes, conventions, and a gradient that keeps only the
# image and the flow).
bilinear_warp = backend.flow_warp
