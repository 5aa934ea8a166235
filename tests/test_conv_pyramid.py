"""Convolution implementations, pyramid resampling and bilinear warping vs independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from msrnn_jax.backend import conv2d
from msrnn_jax.model import pyramid
from msrnn_jax.model.layers import bilinear_warp

RNG = np.random.default_rng(0)


def _rand(*shape):
  return jnp.asarray(RNG.normal(size=shape), jnp.float32)


CASES = [
    # x shape, kernel shape, stride, padding, lhs_dilation
    ((1, 7, 9, 1), (3, 3, 1, 5), 1, "SAME", 1),
    ((2, 5, 11, 64), (3, 3, 64, 8), 1, "SAME", 1),
    ((1, 6, 6, 64), (3, 3, 64, 1), 1, "SAME", 1),
    ((2, 8, 6, 4), (2, 2, 4, 6), 2, "VALID", 1),  # MotionGRU encoder
    ((2, 5, 3, 4), (4, 4, 4, 3), 1, ((2, 2), (2, 2)), 2),  # transposed conv
]


@pytest.mark.parametrize("impl", ["matmul", "matmul_bf16"])
@pytest.mark.parametrize("case", CASES)
def test_conv_matches_lax(impl, case):
  xs, ks, stride, pad, dil = case
  x, k = _rand(*xs), _rand(*ks)
  cot = _rand(*jax.eval_shape(
      lambda: jax.lax.conv_general_dilated(x, k, (stride,) * 2, pad, lhs_dilation=(dil, dil),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))).shape)

  def ref(x, k):
    y = jax.lax.conv_general_dilated(x, k, (stride,) * 2, pad, lhs_dilation=(dil, dil),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(y * cot)

  def ours(x, k):
    return jnp.sum(conv2d(x, k, stride=stride, padding=pad, lhs_dilation=dil, conv_impl=impl) * cot)

  (v0, (dx0, dk0)) = jax.value_and_grad(ref, (0, 1))(x, k)
  (v1, (dx1, dk1)) = jax.jit(jax.value_and_grad(ours, (0, 1)))(x, k)
  # bf16 operands for dK only: ~3 significant digits (documented in docs/performance.md).
  tol = 1e-5 if impl == "matmul" else 1e-2
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-5 * np.abs(dx0).max())
  np.testing.assert_allclose(dk1, dk0, rtol=tol, atol=tol * np.abs(dk0).max())


def test_conv_matmul_is_custom_vjp_and_xla_is_not():
  x, k = _rand(1, 4, 4, 2), _rand(3, 3, 2, 2)
  fast = str(jax.make_jaxpr(lambda x, k: conv2d(x, k, conv_impl="matmul"))(x, k))
  stock = str(jax.make_jaxpr(lambda x, k: conv2d(x, k, conv_impl="xla"))(x, k))
  assert "custom_vjp" in fast
  assert "custom_vjp" not in stock


def _np_maxpool(x, f):
  b, h, w, c = x.shape
  ho, wo = h // f, w // f
  return x[:, :ho * f, :wo * f].reshape(b, ho, f, wo, f, c).max(axis=(2, 4))


def _np_bilinear_up(x, f):
  """PyTorch Upsample(scale_factor=f, mode='bilinear', align_corners=False)."""
  b, h, w, c = x.shape

  def coords(n_in):
    src = (np.arange(n_in * f) + 0.5) / f - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates to 0
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    return i0, i1, lam

  y0, y1, ly = coords(h)
  x0, x1, lx = coords(w)
  top = x[:, y0][:, :, x0] * (1 - lx)[None, None, :, None] + x[:, y0][:, :, x1] * lx[None, None, :, None]
  bot = x[:, y1][:, :, x0] * (1 - lx)[None, None, :, None] + x[:, y1][:, :, x1] * lx[None, None, :, None]
  return top * (1 - ly)[None, :, None, None] + bot * ly[None, :, None, None]


@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (1, 8, 8, 1), (1, 1, 3, 2)])
@pytest.mark.parametrize("factor", [2, 4])
def test_pyramid_matches_numpy(shape, factor):
  x = np.asarray(RNG.normal(size=shape), np.float32)
  if shape[1] >= factor and shape[2] >= factor:
    np.testing.assert_array_equal(pyramid.downsample(jnp.asarray(x), factor), _np_maxpool(x, factor))
  np.testing.assert_allclose(pyramid.upsample(jnp.asarray(x), factor), _np_bilinear_up(x, factor),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,factor", [((2, 7, 5, 3), 2), ((1, 9, 10, 4), 4)])
def test_downsample_gradient_matches_autodiff_and_stores_uint8(shape, factor):
  import contextlib
  import io

  import flax.linen as nn
  from jax.ad_checkpoint import print_saved_residuals

  x = _rand(*shape)
  x = x.at[0, 0, 1].set(x[0, 0, 0])  # a tie: both route to the first maximum
  dy = _rand(shape[0], shape[1] // factor, shape[2] // factor, shape[3])
  ref = jax.vjp(lambda v: nn.max_pool(v, (factor, factor), strides=(factor, factor)), x)[1](dy)[0]
  ours = jax.vjp(lambda v: pyramid.downsample(v, factor), x)[1](dy)[0]
  np.testing.assert_array_equal(ours, ref)
  # The gradient keeps a uint8 window index at the pooled size, not the input.
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(lambda v: pyramid.downsample(v, factor), x)
  res = [line.split()[0] for line in out.getvalue().splitlines() if line.strip()]
  assert res == ["u8[" + ",".join(map(str, dy.shape)) + "]"], res
  with pytest.raises(ValueError, match="uint8"):
    pyramid.downsample(jnp.zeros((1, 32, 32, 1)), 32)


def test_resample_round_levels():
  x = jnp.asarray(RNG.normal(size=(1, 8, 8, 2)), jnp.float32)
  assert pyramid.resample(x, 0, 2).shape == (1, 2, 2, 2)
  assert pyramid.resample(x, 1, 0).shape == (1, 16, 16, 2)
  np.testing.assert_array_equal(pyramid.resample(x, 1, 1), x)


def test_mirror_levels_and_skip_topologies():
  assert pyramid.mirror_levels(6) == (0, 1, 2, 2, 1, 0)
  assert pyramid.mirror_levels(3) == (0, 1, 0)
  lv = pyramid.mirror_levels(6)
  # Hand-derived from the reference models (msrnn_reference.md section 4).
  unet = {l: pyramid.skip_sources(lv, "unet", l) for l in range(1, 6)}
  assert unet == {1: (0,), 2: (1,), 3: (2,), 4: (1, 3), 5: (0, 4)}
  assert all(pyramid.skip_sources(lv, "none", l) == (l - 1,) for l in range(1, 6))
  u3 = {l: pyramid.skip_sources(lv, "unet3p", l) for l in range(1, 6)}
  assert u3 == {1: (0,), 2: (1,), 3: (0, 1, 2), 4: (0, 1, 3), 5: (0, 3, 4)}
  fc = {l: pyramid.skip_sources(lv, "full", l) for l in range(1, 6)}
  assert fc == {1: (0,), 2: (0, 1), 3: (0, 1, 2), 4: (0, 1, 2, 3), 5: (0, 1, 2, 3, 4)}
  with pytest.raises(ValueError, match="valid: none, unet"):
    pyramid.skip_sources(lv, "dense", 2)


def test_bilinear_warp_matches_scipy():
  b, h, w, c, k = 2, 6, 7, 3, 2
  img = np.asarray(RNG.normal(size=(b, h, w, c)), np.float32)
  flow = np.asarray(RNG.normal(scale=2.0, size=(b, h, w, k, 2)), np.float32)
  ours = np.asarray(bilinear_warp(jnp.asarray(img), jnp.asarray(flow)))
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  for bi in range(b):
    for ki in range(k):
      sy = yy + flow[bi, :, :, ki, 1]
      sx = xx + flow[bi, :, :, ki, 0]
      for ci in range(c):
        # grid-constant: zero padding with interpolation across the border,
        # as grid_sample(padding_mode='zeros').
        ref = ndimage.map_coordinates(img[bi, :, :, ci], [sy, sx], order=1, mode="grid-constant",
                                      cval=0.0)
        np.testing.assert_allclose(ours[bi, :, :, ki, ci], ref, rtol=1e-5, atol=1e-5)
  # Zero flow is the identity (the reference's misnormalised grid is not).
  ident = bilinear_warp(jnp.asarray(img), jnp.zeros((b, h, w, 1, 2)))
  np.testing.assert_allclose(ident[:, :, :, 0], img, atol=1e-6)


def test_bilinear_warp_samples_exactly_with_bfloat16_flows_on_large_frames():
  """Sample coordinates are float32 whatever the flow's dtype: bfloat16 holds no integer
  above 256 exactly, so bfloat16 coordinates would shift the samples of wide frames."""
  w = 600
  img = jnp.asarray(np.sin(np.arange(w) * 0.37).reshape(1, 1, w, 1), jnp.float32)
  flow = jnp.full((1, 1, w, 1, 2), 0.5, jnp.bfloat16).at[..., 1].set(0.0)
  out = bilinear_warp(img, flow)
  assert out.dtype == jnp.bfloat16
  img16 = img.astype(jnp.bfloat16).astype(jnp.float32)[0, 0, :, 0]
  # Half-way between each pixel and its right neighbour (zero beyond the border).
  expected = 0.5 * img16 + 0.5 * jnp.append(img16[1:], 0.0)
  np.testing.assert_allclose(out[0, 0, :, 0, 0].astype(jnp.float32), expected, atol=1e-2)


def test_bias_gradient_is_summed_in_float32():
  """A bfloat16 layer's bias gradient sums every pixel's cotangent in float32."""
  from msrnn_jax.backend import add_bias

  y = jnp.zeros((2, 64, 64, 8), jnp.bfloat16)
  cot = jnp.asarray(RNG.uniform(0.5, 1.5, size=y.shape), jnp.bfloat16)
  _, vjp = jax.vjp(add_bias, y, jnp.zeros((8,), jnp.float32))
  dy, db = vjp(cot)
  assert dy.dtype == jnp.bfloat16 and db.dtype == jnp.float32
  np.testing.assert_allclose(db, np.asarray(cot, np.float64).sum(axis=(0, 1, 2)), rtol=1e-6)
