"""The multi-scale pyramid: pure resampling functions and the layer schedule.

A stack of N recurrent layers runs each layer at a pyramid *level*: level k
means frames downsampled by 2**k. The MS-RNN mirror pyramid for N=6 is
``(0, 1, 2, 2, 1, 0)``, i.e. resolutions H, H/2, H/4, H/4, H/2, H; a plain
stack is all zeros. Going down uses max pooling (PyTorch ``MaxPool2d(f, f)``,
which equals repeated 2x2 pooling); going up uses bilinear interpolation with
half-pixel centres, as PyTorch's ``Upsample(scale_factor=f, mode='bilinear')``
with ``align_corners=False`` (a 4x up is one 4x resize, not two 2x ones, like
the reference's UNet3+/full-connection ablations).

Skip topologies (``SKIPS``) decide what feeds layer l's input from the earlier
layer outputs ``outs[0..l-1]`` of the same time step:

* ``none``: ``resample(outs[l-1])``.
* ``unet`` (default, the paper's): ``resample(outs[l-1])`` plus, for a decoder
  layer l whose mirror ``m = N-1-l`` is not its direct predecessor, the raw
  mirror output ``outs[m]`` (N=6: layer 4 gets ``outs[1]``, layer 5
  ``outs[0]``).
* ``unet3p``: a decoder layer sums all encoder outputs up to its mirror and
  all earlier decoder outputs, each resampled to its level.
* ``full``: every layer sums all earlier outputs, each resampled.

For N=6 these reproduce the reference's ``MS-ConvLSTM``, ``-WO-Skip``,
``-UNet3+`` and ``-FC`` models exactly.
"""

import functools
import operator
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SKIPS = ("none", "unet", "unet3p", "full")


def mirror_levels(num_layers: int) -> tuple[int, ...]:
  """Mirror-pyramid levels ``min(l, N-1-l)``.

  Args:
    num_layers: N.

  Returns:
    For N=6: ``(0, 1, 2, 2, 1, 0)``; N=3: ``(0, 1, 0)``; N=4: ``(0, 1, 1, 0)``.
  """
  return tuple(min(l, num_layers - 1 - l) for l in range(num_layers))


def _window_argmax(x: jax.Array, factor: int) -> jax.Array:
  """Index (row-major, first maximum) of the maximum in each pooling window, uint8."""
  b, h, w, c = x.shape
  ho, wo = h // factor, w // factor
  win = x[:, :ho * factor, :wo * factor].reshape(b, ho, factor, wo, factor, c)
  win = win.transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, factor * factor)
  return jnp.argmax(win, axis=-1).astype(jnp.uint8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, factor: int, cut: tuple[int, int]) -> jax.Array:
  # cut: rows and columns the floor drops (static, for the gradient's shape).
  del cut
  return nn.max_pool(x, (factor, factor), strides=(factor, factor), padding="VALID")


def _max_pool_fwd(x, factor, cut):
  # Autodiff of max pooling keeps the full-resolution input for its
  # select-and-scatter gradient; in a network that pools a layer's output this
  # is a residual no plain stack has (1.25 hidden maps per step at 6 layers,
  # ~2 points of the MS/plain memory ratio). The window's argmax in uint8 at
  # the pooled size is 4 * factor**2 times smaller.
  return _max_pool(x, factor, cut), _window_argmax(x, factor)


def _max_pool_bwd(factor, cut, idx, dy):
  b, ho, wo, c = idx.shape
  onehot = idx[..., None] == jnp.arange(factor * factor, dtype=jnp.uint8)
  dx = jnp.where(onehot, dy[..., None], jnp.zeros((), dy.dtype))
  dx = dx.reshape(b, ho, wo, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
  dx = dx.reshape(b, ho * factor, wo * factor, c)
  # Rows/columns cut off by the floor get no gradient.
  return (jnp.pad(dx, ((0, 0), (0, cut[0]), (0, cut[1]), (0, 0))),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def downsample(x: jax.Array, factor: int) -> jax.Array:
  """Max pooling with window = stride = ``factor`` (floor), NHWC.

  The value is ``nn.max_pool``'s. The gradient goes to the first maximum of
  each window (row-major, as PyTorch's ``MaxPool2d``) and is computed from a
  stored uint8 argmax instead of the full-resolution input (see
  ``_max_pool_fwd``), which saves training memory in MS models.
  """
  if factor == 1:
    return x
  if factor * factor > 256:
    raise ValueError(f"Pooling factor {factor} too large for a uint8 window index (max 16).")
  return _max_pool(x, factor, (x.shape[1] % factor, x.shape[2] % factor))


def upsample(x: jax.Array, factor: int) -> jax.Array:
  """Bilinear upsampling by ``factor``, half-pixel centres (PyTorch
  ``align_corners=False``), NHWC.

  ``jax.image.resize`` samples at ``(dst + 0.5) / factor - 0.5`` and drops
  (renormalises) taps outside the image, which equals PyTorch's clamping of
  the source coordinate at both borders.
  """
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * factor, w * factor, c), method="bilinear")


def resample(x: jax.Array, from_level: int, to_level: int) -> jax.Array:
  """Moves ``x`` from one pyramid level to another (pool down / bilinear up)."""
  if to_level > from_level:
    return downsample(x, 2 ** (to_level - from_level))
  if to_level < from_level:
    return upsample(x, 2 ** (from_level - to_level))
  return x


def skip_sources(levels: Sequence[int], skip: str, layer: int) -> tuple[int, ...]:
  """Indices of the earlier layers whose outputs are summed into ``layer``'s input.

  Args:
    levels: the pyramid level of each layer.
    skip: one of ``SKIPS``.
    layer: l >= 1.

  Returns:
    Sorted tuple of source layer indices (always contains ``layer - 1``).
  """
  if skip not in SKIPS:
    raise ValueError(f"Unknown skip topology {skip!r}; valid: {', '.join(SKIPS)}.")
  n = len(levels)
  mirror = n - 1 - layer
  is_decoder = layer > mirror
  if skip == "none" or (skip in ("unet", "unet3p") and not is_decoder):
    return (layer - 1,)
  if skip == "unet":
    if mirror < layer - 1 and levels[mirror] == levels[layer]:
      return (mirror, layer - 1)
    return (layer - 1,)
  if skip == "unet3p":
    first_decoder = (n + 1) // 2  # the first layer with layer > N-1-layer
    encoders = range(0, mirror + 1)
    decoders = range(first_decoder, layer)
    return tuple(sorted(set(encoders) | set(decoders) | {layer - 1}))
  return tuple(range(layer))  # full


def layer_input(outs: Sequence[jax.Array], levels: Sequence[int], skip: str,
                layer: int) -> jax.Array:
  """Input of ``layer``: the sum of its skip sources, each moved to its level."""
  return functools.reduce(operator.add, (resample(outs[j], levels[j], levels[layer])
                                         for j in skip_sources(levels, skip, layer)))


def pyramid_factor(levels: Sequence[int], extra: int = 0) -> int:
  """The multiple frame sizes must have: ``2 ** (max level + extra)``."""
  return 2 ** (max(levels) + extra)
