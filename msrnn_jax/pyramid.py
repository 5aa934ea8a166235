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

from collections.abc import Sequence

import flax.linen as nn
import jax

SKIPS = ("none", "unet", "unet3p", "full")


def mirror_levels(num_layers: int, max_level: int | None = None) -> tuple[int, ...]:
  """Mirror-pyramid levels ``min(l, N-1-l)``, optionally capped.

  Args:
    num_layers: N.
    max_level: cap on the level (None: no cap).

  Returns:
    For N=6: ``(0, 1, 2, 2, 1, 0)``; N=3: ``(0, 1, 0)``; N=4: ``(0, 1, 1, 0)``.
  """
  levels = [min(l, num_layers - 1 - l) for l in range(num_layers)]
  if max_level is not None:
    levels = [min(v, max_level) for v in levels]
  return tuple(levels)


def downsample(x: jax.Array, factor: int) -> jax.Array:
  """Max pooling with window = stride = ``factor`` (floor), NHWC."""
  if factor == 1:
    return x
  return nn.max_pool(x, (factor, factor), strides=(factor, factor), padding="VALID")


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
  srcs = skip_sources(levels, skip, layer)
  total = None
  for j in srcs:
    y = resample(outs[j], levels[j], levels[layer])
    total = y if total is None else total + y
  return total


def pyramid_factor(levels: Sequence[int], extra: int = 0) -> int:
  """The multiple frame sizes must have: ``2 ** (max level + extra)``."""
  return 2 ** (max(levels) + extra)
