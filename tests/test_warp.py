"""backend.flow_warp against a numpy sampler (values) and autodiff of the plain maths (gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax import backend

RNG = np.random.default_rng(29)
# Every implementation this machine has ('native' needs a CPU and a C++ compiler).
IMPLS = ["xla", pytest.param("native", marks=pytest.mark.skipif(
    not backend.warp.available(), reason="native warp unavailable"))]


def numpy_warp(image, flow):
  """Bilinear sampling at (x + dx, y + dy), zeros outside, one sample at a time."""
  b, h, w, c = image.shape
  k = flow.shape[3]
  out = np.zeros((b, h, w, k, c), np.float64)
  for bi in range(b):
    for y in range(h):
      for x in range(w):
        for ki in range(k):
          sx = x + float(flow[bi, y, x, ki, 0])
          sy = y + float(flow[bi, y, x, ki, 1])
          x0, y0 = int(np.floor(sx)), int(np.floor(sy))
          for yi in (y0, y0 + 1):
            for xi in (x0, x0 + 1):
              if 0 <= yi < h and 0 <= xi < w:
                weight = (1 - abs(sx - xi)) * (1 - abs(sy - yi))
                out[bi, y, x, ki] += weight * image[bi, yi, xi]
  return out


def plain_warp(image, flow):
  """The sampling written as array maths, for autodiff to differentiate."""
  b, h, w, _ = image.shape
  flow = flow.astype(jnp.float32)
  image = image.astype(jnp.float32)
  sy = jnp.arange(h, dtype=jnp.float32)[None, :, None, None] + flow[..., 1]
  sx = jnp.arange(w, dtype=jnp.float32)[None, None, :, None] + flow[..., 0]
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  batch = jnp.arange(b)[:, None, None, None]
  out = 0.0
  for yi, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
    for xi, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
      inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      vals = image[batch, jnp.clip(yi, 0, h - 1).astype(int), jnp.clip(xi, 0, w - 1).astype(int)]
      out = out + jnp.where(inside[..., None], vals, 0.0) * (wx * wy)[..., None]
  return out


def random_case(b=2, h=5, w=6, c=3, k=4):
  image = RNG.normal(size=(b, h, w, c)).astype(np.float32)
  # Displacements up to ~3 pixels: many samples fall across or beyond the border.
  flow = RNG.normal(scale=2.0, size=(b, h, w, k, 2)).astype(np.float32)
  # Samples exactly on the border pixels, on the half-pixel outside it and
  # a whole pixel outside it.
  flow[0, :, :, 0, 0] = (w - 1) - np.arange(w)[None, :]
  flow[0, :, :, 1, 0] = -np.arange(w)[None, :] - 0.5
  flow[0, :, :, 2, 1] = h - np.arange(h)[:, None]
  flow[1, :, :, 3] = 0.0
  return image, flow


@pytest.mark.parametrize("impl", IMPLS)
def test_values_match_numpy_sampler(impl):
  image, flow = random_case()
  out = backend.flow_warp(jnp.asarray(image), jnp.asarray(flow), impl)
  assert out.shape == (*flow.shape[:4], image.shape[-1]) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, numpy_warp(image, flow), rtol=1e-5, atol=1e-6)
  # Zero flow is the identity.
  np.testing.assert_array_equal(out[1, :, :, 3], image[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_autodiff_of_plain_maths(impl):
  image, flow = random_case()
  cot = jnp.asarray(RNG.normal(size=(*flow.shape[:4], image.shape[-1])), jnp.float32)
  out, vjp = jax.vjp(lambda i, f: backend.flow_warp(i, f, impl), jnp.asarray(image),
                     jnp.asarray(flow))
  ref_out, ref_vjp = jax.vjp(plain_warp, jnp.asarray(image), jnp.asarray(flow))
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  for ours, ref in zip(vjp(cot), ref_vjp(cot), strict=True):
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # Under jit as well (the flow gradient of a tap outside the image is zero).
  grads = jax.jit(jax.grad(lambda i, f: jnp.sum(backend.flow_warp(i, f, impl) * cot), (0, 1)))(
      image, flow)
  for ours, ref in zip(grads, ref_vjp(cot), strict=True):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_far_and_nonfinite_flows_read_nothing(impl):
  """Samples far outside the image, or at a NaN or infinite flow (a diverged run), read zeros
  and pass no gradient, instead of reading out of bounds."""
  image, flow = random_case()
  bad = np.array([1e9, -1e9, np.nan, np.inf], np.float32)
  flow[0, 1, 2, :, 0] = bad
  flow[1, 3, 4, :, 1] = bad[::-1]
  cot = jnp.ones((*flow.shape[:4], image.shape[-1]), jnp.float32)
  out, vjp = jax.vjp(lambda i, f: backend.flow_warp(i, f, impl), jnp.asarray(image),
                     jnp.asarray(flow))
  np.testing.assert_array_equal(out[0, 1, 2], 0.0)
  np.testing.assert_array_equal(out[1, 3, 4], 0.0)
  d_image, d_flow = vjp(cot)
  assert np.isfinite(d_image).all()
  np.testing.assert_array_equal(d_flow[0, 1, 2], 0.0)
  np.testing.assert_array_equal(d_flow[1, 3, 4], 0.0)
  # The other samples are as the plain maths have them.
  ref_image, _ = jax.vjp(plain_warp, jnp.asarray(image), jnp.asarray(np.nan_to_num(
      flow, nan=1e9, posinf=1e9)))[1](cot)
  np.testing.assert_allclose(d_image, ref_image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("image_dtype", [jnp.bfloat16, jnp.float32])
def test_bfloat16_flow_within_tolerance(image_dtype, impl):
  image, flow = random_case()
  image16 = jnp.asarray(image, image_dtype)
  flow16 = jnp.asarray(flow, jnp.bfloat16)
  cot = jnp.asarray(RNG.normal(size=(*flow.shape[:4], image.shape[-1])), jnp.bfloat16)
  out, vjp = jax.vjp(lambda i, f: backend.flow_warp(i, f, impl), image16, flow16)
  d_image, d_flow = vjp(cot)
  assert out.dtype == jnp.bfloat16 and d_flow.dtype == jnp.bfloat16
  assert d_image.dtype == image_dtype
  # Against float32 maths on the same (rounded) inputs: only the roundings
  # of the image, the output and the gradients to bfloat16 differ.
  ref_out, ref_vjp = jax.vjp(plain_warp, image16.astype(jnp.float32), flow16.astype(jnp.float32))
  ref_image, ref_flow = ref_vjp(cot.astype(jnp.float32))
  np.testing.assert_allclose(out.astype(jnp.float32), ref_out, rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(d_image.astype(jnp.float32), ref_image, rtol=2e-2, atol=3e-2)
  np.testing.assert_allclose(d_flow.astype(jnp.float32), ref_flow, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_pass_keeps_only_image_and_flow(impl):
  """A sequence of warps keeps far less for its gradient than autodiff's four taps per sample."""
  steps, b, h, w, c, k = 12, 2, 16, 16, 8, 6

  def loss(warp, image, flows):
    def step(x, flow):
      return jnp.tanh(warp(x, flow).mean(axis=3)), None
    return jnp.sum(jax.lax.scan(step, image, flows)[0])

  args = (jax.ShapeDtypeStruct((b, h, w, c), jnp.float32),
          jax.ShapeDtypeStruct((steps, b, h, w, k, 2), jnp.float32))

  def temp_bytes(warp):
    grad = jax.jit(jax.grad(lambda i, f: loss(warp, i, f), (0, 1)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

  taps = 4 * steps * b * h * w * k * c * 4
  ours = temp_bytes(lambda i, f: backend.flow_warp(i, f, impl))
  plain = temp_bytes(plain_warp)
  assert plain > taps
  assert ours < plain / 4


@pytest.mark.skipif(not backend.warp.available(), reason="native warp unavailable")
def test_native_warp_splits_the_batch_over_devices():
  """Under a batch-sharded jit each device warps its own slice, with the same values and gradients."""
  image, flow = random_case(b=4)
  cot = RNG.normal(size=(*flow.shape[:4], image.shape[-1])).astype(np.float32)
  mesh = jax.make_mesh((4,), ("data",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

  def loss(i, f, c):
    return jnp.sum(backend.flow_warp(i, f, "native") * c)

  grad = jax.jit(jax.value_and_grad(loss, (0, 1)))
  args = [jax.device_put(a, split) for a in (image, flow, cot)]
  hlo = grad.lower(*args).compile().as_text()
  # Per-device shapes in the custom calls: a quarter of the batch each.
  assert "custom_call_target=\"msrnn_warp_bwd\"" in hlo
  assert f"f32[1,{image.shape[1]},{image.shape[2]},{flow.shape[3]},2]" in hlo
  value, grads = grad(*args)
  ref_value, ref_grads = jax.value_and_grad(loss, (0, 1))(image, flow, cot)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for ours, ref in zip(grads, ref_grads, strict=True):
    assert ours.sharding.is_equivalent_to(split, ours.ndim)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_trajgru_step_does_not_keep_the_warped_links(capsys):
  """TrajGRU's backward pass recomputes the L warped copies of H instead of keeping them."""
  from jax.ad_checkpoint import print_saved_residuals

  from msrnn_jax import model as models

  hidden, links = 8, 5
  x = jnp.zeros((1, 3, 8, 8, 1))
  model = models.create("trajgru", hidden=hidden, num_layers=2, in_len=2, links=links)
  params = model.init(jax.random.key(0), x)["params"]
  print_saved_residuals(lambda p: jnp.sum(model.apply({"params": p}, x)[0]), params)
  channels = [int(line.split("]")[0].split(",")[-1]) for line in capsys.readouterr().out.splitlines()
              if "output of scan" in line]
  assert 2 * links in channels  # the flows are kept
  assert hidden * links not in channels
