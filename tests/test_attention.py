"""Local and block attention against direct computations (numpy unfold, per-block softmax,
autodiff of the plain expressions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax.model import attention
from msrnn_jax.model.attention import block_attention, local_attention


def _np_local_attention(q, k, v, window):
  """Every pixel's window gathered explicitly (the reference's unfold), in float64."""
  b, h, w, c = q.shape
  r = window // 2
  out = np.zeros(q.shape, np.float64)
  for y in range(h):
    for x in range(w):
      scores, values = [], []
      for dy in range(-r, window - r):
        for dx in range(-r, window - r):
          yy, xx = y + dy, x + dx
          inside = 0 <= yy < h and 0 <= xx < w
          # Outside the image: zero key and value (score 0, in the softmax).
          scores.append(np.einsum("bc,bc->b", q[:, y, x], k[:, yy, xx]) if inside else
                        np.zeros(b))
          values.append(v[:, yy, xx] if inside else np.zeros((b, c)))
      s = np.stack(scores, axis=1)
      p = np.exp(s - s.max(axis=1, keepdims=True))
      p /= p.sum(axis=1, keepdims=True)
      out[:, y, x] = np.einsum("bk,bkc->bc", p, np.stack(values, axis=1))
  return out


def _jnp_unfolded(q, k, v, window):
  """The same unfold in jnp, for autodiff's gradients."""
  _, h, w, _ = q.shape
  r = window // 2
  pad = ((0, 0), (r, window - 1 - r), (r, window - 1 - r), (0, 0))
  kp, vp = jnp.pad(k, pad), jnp.pad(v, pad)
  rows = (jnp.arange(h)[:, None] + jnp.arange(window)[None, :])[:, None, :, None]
  cols = (jnp.arange(w)[:, None] + jnp.arange(window)[None, :])[None, :, None, :]
  # [b, h, w, window, window, c] -> [b, h, w, window**2, c]
  ks = kp[:, rows, cols].reshape(k.shape[:3] + (window * window, -1))
  vs = vp[:, rows, cols].reshape(v.shape[:3] + (window * window, -1))
  p = jax.nn.softmax(jnp.einsum("bhwc,bhwkc->bhwk", q, ks), axis=-1)
  return jnp.einsum("bhwk,bhwkc->bhwc", p, vs)


# The whole frame with a masked window (in chunks of at most 8 keys; 13 tokens leave a
# shorter last chunk) and the window's rows of offsets as dense products and as slices.
_PATHS = {"frame": (float("inf"), float("inf")), "dense rows": (0.0, float("inf")),
          "sliced rows": (0.0, 0.0)}


def _use_path(monkeypatch, path):
  frame_cost, rows_cost = _PATHS[path]
  monkeypatch.setattr(attention, "FRAME_MAX_COST", frame_cost)
  monkeypatch.setattr(attention, "DENSE_ROW_MAX_COST", rows_cost)
  monkeypatch.setattr(attention, "KEY_CHUNK", 8)
  # Traces are cached by function and argument shapes, not by these module settings.
  jax.clear_caches()


# An even window (as the reference's 30: offsets -15..14), an odd one wider than the image,
# and one whose middle pixels' windows are inside the frame (no zero keys) while a chunk of
# keys is outside them.
@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("window,shape", [(4, (2, 6, 5, 3)), (9, (1, 4, 7, 2)), (4, (1, 1, 13, 2)),
                                          (3, (1, 5, 9, 2))])
def test_local_attention_values_and_gradients(window, shape, path, monkeypatch):
  _use_path(monkeypatch, path)
  keys = jax.random.split(jax.random.key(window), 4)
  q, k, v, dout = (jax.random.normal(kk, shape) for kk in keys)
  out = jax.jit(local_attention, static_argnums=3)(q, k, v, window)
  expected = _np_local_attention(*(np.asarray(a, np.float64) for a in (q, k, v)), window)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

  def grads(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, window) * dout)  # noqa: E731
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for ours, direct in zip(grads(local_attention), grads(_jnp_unfolded), strict=True):
    np.testing.assert_allclose(ours, direct, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(direct))))


def test_local_attention_takes_the_frame_only_where_it_costs_fewer_products():
  calls = []
  for size in (8, 32, 48, 64):
    q = jnp.zeros((1, size, size, 2))
    jaxpr = str(jax.make_jaxpr(local_attention, static_argnums=3)(q, q, q, 30))
    calls.append("_flash" in jaxpr)
  # Products per pixel, frame against dense rows: 64 / 1110, 1024 / 1830, 2304 / 2310,
  # 4096 / 2790.
  assert calls == [True, True, True, False]


@pytest.mark.parametrize("path", ["frame", "dense rows"])
def test_local_attention_gradient_keeps_no_unfolded_neighbourhood(path, monkeypatch):
  """Compiled memory of value-and-gradient: the unfolded version holds window**2 copies of
  the keys and values; ours holds less than one (a chunk of keys or a row of the window)."""
  _use_path(monkeypatch, path)
  shape, window = (1, 12, 12, 8), 12
  q, k, v = (jax.random.normal(kk, shape) for kk in jax.random.split(jax.random.key(0), 3))

  def temp_bytes(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, window) ** 2)  # noqa: E731
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  unfolded_copy = window * window * q.size * 4  # one unfolded map, float32
  assert temp_bytes(_jnp_unfolded) > 2 * unfolded_copy
  assert temp_bytes(local_attention) < unfolded_copy


def test_block_attention_is_softmax_attention_within_each_block():
  b, n, h, w, c, scale = 2, 2, 4, 8, 3, 2
  q, k, v = (np.asarray(jax.random.normal(kk, (b, n, h, w, c)), np.float64)
             for kk in jax.random.split(jax.random.key(1), 3))
  out = np.asarray(block_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), scale))
  bh, bw = h // scale, w // scale
  for i in range(scale):
    for j in range(scale):
      rows, cols = slice(i * bh, (i + 1) * bh), slice(j * bw, (j + 1) * bw)
      tokens = [a[:, :, rows, cols].reshape(b, -1, c) for a in (q, k, v)]
      s = np.einsum("bic,bjc->bij", tokens[0], tokens[1])
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      expected = np.einsum("bij,bjc->bic", p, tokens[2]).reshape(b, n, bh, bw, c)
      np.testing.assert_allclose(out[:, :, rows, cols], expected, rtol=1e-5, atol=1e-5)


def _plain_block_attention(q, k, v, scale):
  """``softmax(q k^T) v`` within each block, as one matrix per block (for autodiff)."""
  b, n, h, w, c = q.shape
  bh, bw = h // scale, w // scale
  cut = [a.reshape(b, n, scale, bh, scale, bw, c).transpose(0, 2, 4, 1, 3, 5, 6)
         .reshape(b, scale * scale, n * bh * bw, c) for a in (q, k, v)]
  p = jax.nn.softmax(jnp.einsum("bgic,bgjc->bgij", cut[0], cut[1]), axis=-1)
  out = jnp.einsum("bgij,bgjc->bgic", p, cut[2])
  return out.reshape(b, scale, scale, n, bh, bw, c).transpose(0, 3, 1, 4, 2, 5, 6).reshape(q.shape)


def _block_grads(fn, q, k, v, dout):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * dout)  # noqa: E731
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


# 80 tokens at scale 1 and 20 per block at scale 2 make chunks of 5 keys at most 7; 512 keys
# is one chunk; 22 tokens have no divisor in 3..8, so chunks of 8 leave a last one of 6.
@pytest.mark.parametrize("scale,key_chunk,shape", [(1, 7, (2, 2, 4, 10, 3)),
                                                   (2, 7, (2, 2, 4, 10, 3)),
                                                   (2, 512, (2, 2, 4, 10, 3)),
                                                   (1, 8, (2, 1, 1, 11, 3))])
def test_block_attention_gradients_match_autodiff_of_the_plain_expression(scale, key_chunk, shape):
  q, k, v, dout = (jax.random.normal(kk, shape) for kk in jax.random.split(jax.random.key(2), 4))
  attend = jax.jit(block_attention, static_argnums=(3, 4))
  np.testing.assert_allclose(attend(q, k, v, scale, key_chunk),
                             _plain_block_attention(q, k, v, scale), rtol=1e-5, atol=1e-6)
  ours = _block_grads(lambda q, k, v: block_attention(q, k, v, scale, key_chunk), q, k, v, dout)
  direct = _block_grads(lambda q, k, v: _plain_block_attention(q, k, v, scale), q, k, v, dout)
  for a, d in zip(ours, direct, strict=True):
    np.testing.assert_allclose(a, d, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(d))))


def test_block_attention_in_bfloat16_returns_the_inputs_dtypes():
  """bfloat16 in, bfloat16 out (values and gradients), close to float32 on the same inputs."""
  shape, scale, key_chunk = (1, 2, 4, 10, 4), 2, 7
  keys = jax.random.split(jax.random.key(3), 4)
  q, k, v = (jax.random.normal(kk, shape, jnp.bfloat16) for kk in keys[:3])
  dout = jax.random.normal(keys[3], shape)
  fn = lambda q, k, v: block_attention(q, k, v, scale, key_chunk)  # noqa: E731
  out = jax.jit(fn)(q, k, v)
  wide = [a.astype(jnp.float32) for a in (q, k, v)]
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), _plain_block_attention(*wide, scale),
                             rtol=2e-2, atol=2e-2)
  direct = _block_grads(lambda q, k, v: _plain_block_attention(q, k, v, scale), *wide, dout)
  for a, d in zip(_block_grads(fn, q, k, v, dout), direct, strict=True):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), d, rtol=2e-2,
                               atol=2e-2 * float(jnp.max(jnp.abs(d))))


def test_block_attention_gradient_keeps_no_tokens_by_tokens_matrix():
  """Compiled memory of value-and-gradient at 2,048 tokens: the plain expression holds
  ``tokens**2`` floats; ours a small fraction of one such matrix (``tokens x key_chunk``)."""
  shape, scale, key_chunk = (1, 2, 32, 32, 4), 1, 128
  q, k, v = (jax.random.normal(kk, shape) for kk in jax.random.split(jax.random.key(4), 3))

  def temp_bytes(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  tokens = 2 * 32 * 32
  matrix = tokens * tokens * 4  # one float32 attention matrix
  assert temp_bytes(lambda q, k, v: _plain_block_attention(q, k, v, scale)) > matrix
  assert temp_bytes(lambda q, k, v: block_attention(q, k, v, scale, key_chunk)) < matrix / 4


def test_block_attention_training_memory_grows_linearly_with_the_tokens():
  """As the model runs it (a remat'd step of a scan over time), value-and-gradient memory
  grows with the tokens, not their square: quadrupling the tokens (2,738 -> 10,952) about
  quadruples it. Neither token count has a divisor in 10..36: both have a shorter last key
  chunk."""
  side, key_chunk = 37, 36

  def temp_bytes(side):
    shape = (1, 2, side, side, 4)
    q, k, v = (jax.random.normal(kk, shape) for kk in jax.random.split(jax.random.key(5), 3))

    def loss(q, k, v):
      def step(acc, x):
        return acc + block_attention(q * x, k, v, 1, key_chunk), None
      return jnp.sum(jax.lax.scan(jax.checkpoint(step), jnp.zeros_like(q), jnp.arange(3.0))[0])

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(2 * side) < 4.5 * temp_bytes(side)
