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

Two implementations of the same maths, named by ``impl`` (one of
:data:`WARP_IMPLS`; a model's ``warp_impl``):

* ``'xla'``: gathers and scatter-adds in XLA (any platform). XLA:CPU runs
  the scatter-adds as serial loops: TrajGRU's warp gradient was over half of
  its training step.
* ``'native'``: ``native/warp.cc``, loops over contiguous channel vectors
  (as PyTorch's ``grid_sample`` kernels) as FFI custom calls, threaded with
  OpenMP; the image gradient's threads own disjoint (batch item, channel
  block) pairs, so the scatter needs no atomics. CPU only, built on first
  use (``native.py``); batch-sharded under a multi-device ``jit``.

:func:`resolve` turns ``'auto'`` into ``'native'`` on CPU where it builds,
else ``'xla'``.
"""

import functools

import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning

from msrnn_jax.backend import native

__all__ = ["WARP_IMPLS", "available", "flow_warp", "resolve", "unavailable_reason"]

WARP_IMPLS = ("auto", "xla", "native")
_TARGET_FWD = "msrnn_warp_fwd"
_TARGET_BWD = "msrnn_warp_bwd"


def _load() -> dict:
  native.load(native.build("warp", ["warp.cc"], ["-O3", "-fopenmp"]),
              {_TARGET_FWD: "MsrnnWarpFwd", _TARGET_BWD: "MsrnnWarpBwd"})
  return {}


def _unavailable(reason: str) -> None:
  if jax.default_backend() == "cpu":
    logging.warning("native flow warp unavailable (%s); TrajGRU and MotionRNN warp with XLA's "
                    "slower scatter", reason)


_library = native.Library(_load, _unavailable)
available = _library.available
unavailable_reason = _library.unavailable_reason


def resolve(impl: str) -> str:
  """The implementation ``impl`` stands for on this platform (``'auto'`` resolved).

  Raises:
    ValueError: unknown name. RuntimeError: ``'native'`` asked for where it
      cannot run (with the reason).
  """
  if impl not in WARP_IMPLS:
    raise ValueError(f"Unknown warp_impl {impl!r}; valid: {', '.join(WARP_IMPLS)}.")
  if impl == "auto":
    return "native" if jax.default_backend() == "cpu" and available() else "xla"
  if impl == "native" and not available():
    raise RuntimeError(f"warp_impl='native' is unavailable: {unavailable_reason()}. "
                       "Use warp_impl='xla' or 'auto' instead.")
  return impl


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


# --- the native custom calls, batch-partitioned -------------------------------------------

def _native_forward_call(image, flow):
  out = jax.ShapeDtypeStruct((*flow.shape[:4], image.shape[-1]), flow.dtype)
  return jax.ffi.ffi_call(_TARGET_FWD, out, vmap_method="sequential")(image, flow)


def _native_backward_call(image, flow, d_out):
  outs = (jax.ShapeDtypeStruct(image.shape, jnp.float32),
          jax.ShapeDtypeStruct(flow.shape, jnp.float32))
  return jax.ffi.ffi_call(_TARGET_BWD, outs, vmap_method="sequential")(image, flow, d_out)


def _partition(call, n_args):
  def partition(mesh, arg_shapes, result_shape):
    del mesh, result_shape  # decided by the image's sharding
    act, _ = native.shardings(*native.batch_split(arg_shapes[0]))
    outs = act if n_args == 2 else (act, act)
    return act.mesh, call, outs, (act,) * n_args

  def infer(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    act, _ = native.shardings(*native.batch_split(arg_shapes[0]))
    return act if n_args == 2 else (act, act)

  return partition, infer


# Only the batch factor n may stay sharded (Shardy's einsum-like rule).
_native_forward = custom_partitioning(_native_forward_call)
_native_forward.def_partition(
    *_partition(_native_forward_call, 2), sharding_rule="n h w c, n h w k t -> n h w k c",
    need_replication_factors=("h", "w", "c", "k", "t"))
_native_backward = custom_partitioning(_native_backward_call)
_native_backward.def_partition(
    *_partition(_native_backward_call, 3),
    sharding_rule="n h w c, n h w k t, n h w k c -> n h w c, n h w k t",
    need_replication_factors=("h", "w", "c", "k", "t"))


def _forward(image, flow, impl):
  if impl == "native":
    return _native_forward(image.astype(flow.dtype), flow)
  return _warp(image, flow)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def flow_warp(image: jax.Array, flow: jax.Array, impl: str = "xla") -> jax.Array:
  """Samples ``image`` at ``(x + dx, y + dy)`` for each of K flows, bilinearly.

  Sample points are in pixel units (zero flow is the identity); taps outside
  the image read zeros (``grid_sample``'s ``padding_mode='zeros'``). The
  four taps are summed in float32 and the result returned in the flow's
  dtype; the image is read in that dtype.

  Args:
    image: ``[batch, height, width, channels]``.
    flow: ``[batch, height, width, K, 2]``; ``flow[..., 0]`` is the
      displacement along the width (x), ``flow[..., 1]`` along the height (y).
    impl: ``'xla'`` or ``'native'`` (:data:`WARP_IMPLS` but ``'auto'``,
      which :func:`resolve` settles when a model is built).

  Returns:
    ``[batch, height, width, K, channels]`` of the flow's dtype.
  """
  return _forward(image, flow, impl)


def _flow_warp_fwd(image, flow, impl):
  # The image (a recurrent state, kept anyway) and the flow (2K channels)
  # are all the backward pass needs.
  return _forward(image, flow, impl), (image, flow)


def _flow_warp_bwd(impl, residuals, d_out):
  image, flow = residuals
  if impl == "native":
    d_image, d_flow = _native_backward(image.astype(flow.dtype), flow, d_out.astype(flow.dtype))
    return d_image.astype(image.dtype), d_flow.astype(flow.dtype)
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
