"""Bilinear sampling of an image along learned flows, with a lean gradient.

:func:`flow_warp` samples ``image`` at ``(x + dx, y + dy)`` for each of K
flows (TrajGRU's links, MotionGRU's filters). Autodiff of the plain maths
keeps the four gathered taps of every sample for the backward pass: four
``[batch, height, width, K, channels]`` arrays per call, four times the
output (TrajGRU at 64x64, batch 4, 13 links, float32: 4 x 52 MB per layer
and step, 23 GB over a 6-layer, 19-step sequence). The custom gradient here
keeps only the image and the flow and recomputes the taps' indices and
weights from the flow:

* image gradient: each sample's output gradient, times its tap weights,
  scatter-added into the four source pixels (float32 accumulation);
* flow gradient: ``d out / d x`` is a difference of the taps along x
  weighted by the y weights (and vice versa), contracted over channels
  with the output gradient (float32).

Coordinates, weights and both gradients' sums are float32 whatever the
compute dtype (bfloat16 holds integers exactly only up to 256).
"""

import jax
import jax.numpy as jnp

__all__ = ["flow_warp"]


def _taps(flow: jax.Array, height: int, width: int):
  """The four bilinear taps of every sample.

  Args:
    flow: ``[batch, height, width, K, 2]`` float32.

  Returns:
    Four ``(index, weight, (sign_x, wy), (sign_y, wx))``: the flat source
    pixel ``[batch, height, width, K]`` int32 (clipped into the image), the
    tap weight (zero for a tap outside the image), and the factors of the
    weight's derivative along x (``sign_x * wy``) and y (``sign_y * wx``).
  """
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing="ij")
  sx = xs[None, :, :, None] + flow[..., 0]
  sy = ys[None, :, :, None] + flow[..., 1]
  x0 = jnp.floor(sx)
  y0 = jnp.floor(sy)
  wx1 = sx - x0
  wy1 = sy - y0
  taps = []
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      xi = x0 + dx
      yi = y0 + dy
      valid = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
      index = (jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)).astype(jnp.int32)
      weight = jnp.where(valid, wx * wy, 0.0)
      # d weight / d x and d weight / d y; zero outside the image.
      grad_x = jnp.where(valid, (2 * dx - 1) * wy, 0.0)
      grad_y = jnp.where(valid, (2 * dy - 1) * wx, 0.0)
      taps.append((index, weight, grad_x, grad_y))
  return taps


def _gather(flat: jax.Array, index: jax.Array) -> jax.Array:
  """``flat[b, index[b, ...]]``: ``[batch, pixels, C]`` at ``[batch, ...]`` -> ``[batch, ..., C]``."""
  b, c = flat.shape[0], flat.shape[-1]
  vals = jnp.take_along_axis(flat, index.reshape(b, -1, 1), axis=1)
  return vals.reshape(*index.shape, c)


def _channel_sum(x: jax.Array) -> jax.Array:
  """``x.sum(-1)`` as a matrix-vector product.

  XLA:CPU's reductions over the minor axis run several times slower than
  its dot, and the flow gradient's channel sums were most of a TrajGRU
  training step's time.
  """
  c = x.shape[-1]
  return (x.reshape(-1, c) @ jnp.ones((c,), x.dtype)).reshape(x.shape[:-1])


def _warp(image: jax.Array, flow: jax.Array) -> jax.Array:
  b, h, w, c = image.shape
  dtype = flow.dtype
  flat = image.astype(dtype).reshape(b, h * w, c)
  out = jnp.zeros((*flow.shape[:4], c), jnp.float32)
  for index, weight, _, _ in _taps(flow.astype(jnp.float32), h, w):
    out = out + _gather(flat, index) * weight[..., None]
  return out.astype(dtype)


@jax.custom_vjp
def flow_warp(image: jax.Array, flow: jax.Array) -> jax.Array:
  """Samples ``image`` at ``(x + dx, y + dy)`` for each of K flows, bilinearly.

  Sample points are in pixel units (zero flow is the identity); taps outside
  the image read zeros (``grid_sample``'s ``padding_mode='zeros'``). The
  four taps are summed in float32 and the result returned in the flow's
  dtype; the image is read in that dtype.

  Args:
    image: ``[batch, height, width, channels]``.
    flow: ``[batch, height, width, K, 2]``; ``flow[..., 0]`` is the
      displacement along the width (x), ``flow[..., 1]`` along the height (y).

  Returns:
    ``[batch, height, width, K, channels]`` of the flow's dtype.
  """
  return _warp(image, flow)


def _flow_warp_fwd(image, flow):
  # The image (a recurrent state, kept anyway) and the flow (2K channels)
  # are all the backward pass needs.
  return _warp(image, flow), (image, flow)


def _flow_warp_bwd(residuals, d_out):
  image, flow = residuals
  b, h, w, c = image.shape
  flat = image.astype(flow.dtype).reshape(b, h * w, c)
  g = d_out.astype(jnp.float32)
  # Sample (b, p, k) of the flat batch reads pixel b * h * w + index.
  offset = (jnp.arange(b, dtype=jnp.int32) * (h * w)).reshape(b, 1, 1, 1)
  d_image = jnp.zeros((b * h * w, c), jnp.float32)
  d_x = d_y = jnp.zeros(flow.shape[:4], jnp.float32)
  for index, weight, grad_x, grad_y in _taps(flow.astype(jnp.float32), h, w):
    # <d out, tap value> over channels: the tap's share of the flow gradient.
    dot = _channel_sum(g * _gather(flat, index))
    d_x = d_x + grad_x * dot
    d_y = d_y + grad_y * dot
    d_image = d_image.at[(index + offset).reshape(-1)].add(
        (g * weight[..., None]).reshape(-1, c), mode="promise_in_bounds")
  d_flow = jnp.stack([d_x, d_y], axis=-1).astype(flow.dtype)
  return d_image.reshape(image.shape).astype(image.dtype), d_flow


flow_warp.defvjp(_flow_warp_fwd, _flow_warp_bwd)
