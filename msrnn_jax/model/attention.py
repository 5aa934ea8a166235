"""Attention over image neighbourhoods: PrecipLSTM's local and CMS-LSTM's block attention.

:func:`local_attention` is the windowed attention of PrecipLSTM (the
authors' ``img_local_att`` CUDA extension, a 30x30 window around every
pixel). Written as an unfold (every pixel's 900 keys and values gathered,
as the extension's pure-PyTorch fallback does) it holds ``window**2`` copies
of the keys and of the values, and autodiff would keep them for the
backward pass at every layer and time step. Here no pass gathers them. A
frame not much larger than the window is attended as a whole: every pixel's
scores with a chunk of the flattened frame's keys at a time, the keys
outside its window masked out, with an online softmax (flash attention).
A wider frame is walked one row of window offsets at a time, with the same
online softmax. Either way a custom gradient recomputes the scores from the
queries, keys and values and the per-pixel log-sum-exp, so training memory
holds only the inputs, the output and one map of statistics.

:func:`block_attention` is CMS-LSTM's self-attention inside the blocks of a
``scale x scale`` grid. At scale 1 a block is the whole frame, so its
``tokens x tokens`` attention matrix grows with the square of the pixel
count. It is computed by the same flash attention as a whole frame above,
without a window: memory grows as ``tokens x chunk`` in both passes.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pad(x: jax.Array, window: int) -> jax.Array:
  """Zero border so that offset ``d`` of pixel ``p`` is index ``p + d + window // 2``."""
  r = window // 2
  return jnp.pad(x, ((0, 0), (r, window - 1 - r), (r, window - 1 - r), (0, 0)))


def _slab(padded: jax.Array, dy: jax.Array, height: int) -> jax.Array:
  """Offset row ``dy``'s keys or values ``[b, h, w + window - 1, c]``.

  Column ``x + dx`` of the slab is offset ``dx`` of pixel ``x``.
  """
  return jax.lax.dynamic_slice_in_dim(padded, dy, height, axis=1)


def _add_slab(padded: jax.Array, slab: jax.Array, dy: jax.Array) -> jax.Array:
  """Adds ``slab`` to offset row ``dy``'s slab of ``padded`` (where :func:`_slab` reads it)."""
  h = slab.shape[1]
  return jax.lax.dynamic_update_slice_in_dim(padded, _slab(padded, dy, h) + slab, dy, axis=1)


# A row of offsets is computed one of two ways, chosen by the row's width.
#
# Dense: products of each image row with the whole slab row (``[w, c] x [c, w + window - 1]``),
# the columns outside each pixel's window masked out of the softmax. XLA runs them as batched
# matrix products; they cost ``(w + window - 1) / window`` times the multiplications the window
# needs, which grows with the width. At window 30 they took 0.26-0.36x the slices' time from 8
# to 256 columns (up to 9.5 times the multiplications) and 0.82x at 512 (18 times)
# (docs/performance.md, "Attention").
#
# Slices: each of the ``window`` column offsets is a static slice of the slab, with elementwise
# products and sums over the channels: the window's multiplications only, for wider rows.
DENSE_ROW_MAX_COST = 16.0  # most multiplications per needed one for the dense products

# A frame no larger than the window's reach is attended as a whole instead: every pixel's
# scores with every key of the flattened frame, a chunk of keys at a time (as block
# attention), the keys outside the pixel's window masked out. That is ``h * w`` products per
# pixel against the dense rows' ``window * (w + window - 1)``, as larger batched products: with
# ``KEY_CHUNK`` keys per step it was faster up to the frame where the two counts are equal and
# slower beyond (experiments/attention_bench.py; docs/performance.md, "Attention").
FRAME_MAX_COST = 1.0  # most products per pixel, relative to the dense rows', for the frame


class _Rows(NamedTuple):
  """One row of offsets' operations, for an image row ``x`` and a slab row ``slab``."""
  scores: Callable  # (x, slab) -> scores, -inf (or absent) outside each pixel's window
  products: Callable  # (x, slab) -> the same scores, finite everywhere
  mix: Callable  # (weights, slab) -> [b, h, w, c]: sum over the window of weights * slab
  spread: Callable  # (weights, x) -> [b, h, w + window - 1, c]: mix's transpose, into a slab


def _window_columns(width: int, window: int) -> jax.Array:
  """``[w, w + window - 1]``: True where slab column ``z`` is pixel ``x``'s offset ``z - x`` in ``[0, window)``."""
  x = jnp.arange(width)[:, None]
  z = jnp.arange(width + window - 1)[None, :]
  return (z >= x) & (z < x + window)


def _dense_rows(width: int, window: int) -> _Rows:
  """Scores ``[b, h, w, w + window - 1]`` over the whole slab row."""
  def products(x, slab):
    return jnp.einsum("bhxc,bhzc->bhxz", x, slab)

  def scores(x, slab):
    return jnp.where(_window_columns(width, window), products(x, slab), -jnp.inf)

  return _Rows(scores, products, lambda p, slab: jnp.einsum("bhxz,bhzc->bhxc", p, slab),
               _transposed_product)


def _sliced_rows(width: int, window: int) -> _Rows:
  """Scores ``[b, h, w, window]``: column offset ``dx`` of pixel ``x`` is slab column ``x + dx``."""
  def scores(x, slab):
    return jnp.stack([jnp.sum(x * slab[:, :, dx:dx + width], axis=-1) for dx in range(window)],
                     axis=-1)

  def mix(p, slab):
    return sum(p[..., dx, None] * slab[:, :, dx:dx + width] for dx in range(window))

  def spread(p, x):
    return sum(jnp.pad(p[..., dx, None] * x, ((0, 0), (0, 0), (dx, window - 1 - dx), (0, 0)))
               for dx in range(window))

  return _Rows(scores, scores, mix, spread)


def _rows(width: int, window: int) -> _Rows:
  dense = (width + window - 1) / window <= DENSE_ROW_MAX_COST
  return (_dense_rows if dense else _sliced_rows)(width, window)


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, window: int) -> jax.Array:
  """Softmax attention of every pixel over its ``window x window`` neighbourhood.

  ``out[p] = sum_d softmax_d(q[p] . k[p + d]) v[p + d]`` over the offsets
  ``d`` in ``[-(window // 2), window - 1 - window // 2]`` along each axis (a
  30x30 window spans -15..14, as the reference's CUDA kernels). Neighbours
  outside the image have zero key and value: their score 0 still counts in
  the softmax's denominator, as in the reference. Scores are not scaled.
  Computed in float32 at least; the result has ``q``'s dtype.

  Args:
    q: queries ``[batch, height, width, channels]``.
    k: keys, same shape.
    v: values, same shape.
    window: the neighbourhood's side.

  Returns:
    ``[batch, height, width, channels]``.
  """
  _, h, w, _ = q.shape
  if _takes_frame(h, w, window):
    return _frame_attention(q, k, v, window, KEY_CHUNK)
  return _offset_rows_attention(q, k, v, window)


def _products_per_pixel(height: int, width: int, window: int) -> tuple[int, int]:
  """Score products per pixel over the whole frame and by dense offset rows."""
  return height * width, window * (width + window - 1)


def _takes_frame(height: int, width: int, window: int) -> bool:
  """Whether :func:`local_attention` attends a frame of this size as a whole."""
  frame, rows = _products_per_pixel(height, width, window)
  return frame <= FRAME_MAX_COST * rows


def _frame_attention(q, k, v, window, key_chunk):
  """:func:`local_attention` over the whole flattened frame, ``key_chunk`` keys per step."""
  b, h, w, c = q.shape
  flat = [x.reshape(b, 1, h * w, c) for x in (q, k, v)]
  return _flash(*flat, key_chunk, _Window(h, w, window)).reshape(q.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _offset_rows_attention(q, k, v, window):
  """:func:`local_attention`, one row of window offsets per step (for frames much wider than the window)."""
  return _offset_rows_forward(q, k, v, window)[0]


def _offset_rows_forward(q, k, v, window):
  b, h, w, c = q.shape
  qf = _wide(q)
  kp, vp = _pad(_wide(k), window), _pad(_wide(v), window)
  rows = _rows(w, window)

  def body(carry, dy):
    m, l, acc = carry
    s = rows.scores(qf, _slab(kp, dy, h))
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])  # zero outside the window
    l = l * rescale + jnp.sum(p, axis=-1)
    acc = acc * rescale[..., None] + rows.mix(p, _slab(vp, dy, h))
    return (m_new, l, acc), None

  init = (jnp.full((b, h, w), -jnp.inf, qf.dtype), jnp.zeros((b, h, w), qf.dtype),
          jnp.zeros((b, h, w, c), qf.dtype))
  (m, l, acc), _ = jax.lax.scan(body, init, jnp.arange(window))
  out = acc / l[..., None]
  return out.astype(q.dtype), out, m + jnp.log(l)


def _offset_rows_fwd(q, k, v, window):
  out, out_wide, lse = _offset_rows_forward(q, k, v, window)
  return out, (q, k, v, out_wide, lse)


def _offset_rows_bwd(window, res, dout):
  q, k, v, out, lse = res
  b, h, w, c = q.shape
  qf, dout = _wide(q), _wide(dout)
  kp, vp = _pad(_wide(k), window), _pad(_wide(v), window)
  # sum_d P_d dP_d = dout . out: the softmax gradient's correction term.
  delta = jnp.sum(dout * out, axis=-1)
  rows = _rows(w, window)

  def body(carry, dy):
    dq, dkp, dvp = carry
    k_slab, v_slab = _slab(kp, dy, h), _slab(vp, dy, h)
    p = jnp.exp(rows.scores(qf, k_slab) - lse[..., None])  # zero outside the window
    ds = p * (rows.products(dout, v_slab) - delta[..., None])
    dq = dq + rows.mix(ds, k_slab)
    dkp = _add_slab(dkp, rows.spread(ds, qf), dy)
    dvp = _add_slab(dvp, rows.spread(p, dout), dy)
    return (dq, dkp, dvp), None

  init = (jnp.zeros_like(qf), jnp.zeros_like(kp), jnp.zeros_like(vp))
  (dq, dkp, dvp), _ = jax.lax.scan(body, init, jnp.arange(window))
  r = window // 2
  dk, dv = dkp[:, r:r + h, r:r + w], dvp[:, r:r + h, r:r + w]
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_offset_rows_attention.defvjp(_offset_rows_fwd, _offset_rows_bwd)


# Keys per step of the online softmax over a flattened frame or block: the transient
# scores are ``tokens x KEY_CHUNK`` floats (4 MB at 8,192 tokens) instead of ``tokens**2``.
# On CPU they then stay in cache: CMS-LSTM's step took 0.83x its time with 512 keys and
# 0.92x its time with 64, PrecipLSTM's attention over a 32x32 frame 0.8x its time with 64
# (docs/performance.md, "Attention").
KEY_CHUNK = 128


class _Window(NamedTuple):
  """The tokens of a flattened ``height x width`` frame, each seeing a ``window x window`` neighbourhood."""
  height: int
  width: int
  window: int

  def _reach(self, offset: jax.Array) -> jax.Array:
    r = self.window // 2
    return (offset >= -r) & (offset < self.window - r)

  def sees(self, start: jax.Array, size: int) -> jax.Array:
    """``[tokens, size]``: True where key ``start + j`` is in token ``i``'s window."""
    i = jnp.arange(self.height * self.width)[:, None]
    j = start + jnp.arange(size)[None, :]
    return (self._reach(j // self.width - i // self.width)
            & self._reach(j % self.width - i % self.width))

  def outside(self) -> jax.Array:
    """``[tokens]``: each token's window positions beyond the frame's border (zero keys)."""
    def inside(extent, pos):
      r = self.window // 2
      return jnp.minimum(pos + self.window - r, extent) - jnp.maximum(pos - r, 0)

    i = jnp.arange(self.height * self.width)
    return (self.window ** 2 - inside(self.height, i // self.width)
            * inside(self.width, i % self.width)).astype(jnp.float32)


def _blocks(x: jax.Array, scale: int) -> jax.Array:
  """``[b, maps, h, w, c]`` -> ``[b, scale**2, maps * (h / scale) * (w / scale), c]``."""
  b, n, h, w, c = x.shape
  x = x.reshape(b, n, scale, h // scale, scale, w // scale, c).transpose(0, 2, 4, 1, 3, 5, 6)
  return x.reshape(b, scale * scale, -1, c)


def _unblocks(x: jax.Array, shape: tuple[int, ...], scale: int) -> jax.Array:
  """Inverse of :func:`_blocks`: back to ``shape`` = ``[b, maps, h, w, c]``."""
  b, n, h, w, c = shape
  x = x.reshape(b, scale, scale, n, h // scale, w // scale, c).transpose(0, 3, 1, 4, 2, 5, 6)
  return x.reshape(shape)


def _chunk_size(tokens: int, key_chunk: int) -> int:
  """Keys per chunk, at most ``key_chunk``.

  The largest divisor of ``tokens`` above ``key_chunk / 4`` where there is one
  (a frame side's factors usually give one), so that every chunk is a step of
  the same loop; else the fewest chunks, as even as possible, and a shorter
  last one (whose step needs buffers of its own).
  """
  if tokens <= key_chunk:
    return tokens
  for size in range(key_chunk, key_chunk // 4, -1):
    if tokens % size == 0:
      return size
  chunks = -(-tokens // key_chunk)
  return -(-tokens // chunks)


def _key_chunks(x: jax.Array, size: int) -> tuple[jax.Array, jax.Array | None]:
  """``[b, g, tokens, c]`` -> ``[chunks, b, g, size, c]`` whole chunks and the rest ``[b, g, r, c]``.

  The rest (``tokens % size`` keys; None if none) is a chunk of its own rather
  than padding: masking padded keys would put a ``tokens x size`` mask in each
  step, which XLA hoists out of the loop for all chunks at once (``tokens**2``).
  """
  b, g, t, c = x.shape
  whole = t // size
  chunks = x[:, :, :whole * size].reshape(b, g, whole, size, c).transpose(2, 0, 1, 3, 4)
  return chunks, (x[:, :, whole * size:] if t % size else None)


def _from_key_chunks(chunks: jax.Array, rest: jax.Array | None) -> jax.Array:
  """Inverse of :func:`_key_chunks`: ``[b, g, tokens, c]``."""
  n, b, g, size, c = chunks.shape
  x = chunks.transpose(1, 2, 0, 3, 4).reshape(b, g, n * size, c)
  return x if rest is None else jnp.concatenate([x, rest], axis=2)


def _over_chunks(body, carry, k: jax.Array, v: jax.Array, key_chunk: int):
  """Runs ``body(carry, (k_chunk, v_chunk, start)) -> (carry, out)`` over the key chunks of ``k``, ``v``.

  ``start`` is the chunk's first key. Returns the last carry and the outputs
  as :func:`_key_chunks` splits (``(stacked whole chunks, rest or None)``, per
  output).
  """
  size = _chunk_size(k.shape[2], key_chunk)
  (ks, k_rest), (vs, v_rest) = _key_chunks(k, size), _key_chunks(v, size)
  carry, outs = jax.lax.scan(body, carry, (ks, vs, size * jnp.arange(ks.shape[0])))
  rest_outs = None
  if k_rest is not None:
    carry, rest_outs = body(carry, (k_rest, v_rest, jnp.asarray(size * ks.shape[0])))
  return carry, outs, rest_outs


def _transposed_product(a: jax.Array, x: jax.Array) -> jax.Array:
  """``a^T x`` per leading index: ``[..., i, j]``, ``[..., i, c]`` -> ``[..., j, c]``.

  Computed as ``(x^T a)^T``: XLA:CPU runs either as a plain dot over the shared axis ``i``,
  several times faster with the narrow ``x`` first (a ``[c, j]`` result), and transposing
  the small result costs little (docs/performance.md, "Attention"). The barrier keeps XLA
  from folding the transpose back into the product, which it does for products with two
  batch axes.
  """
  return jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum("...ic,...ij->...cj", x, a)),
                      -1, -2)


def _scores(q: jax.Array, k_chunk: jax.Array, start: jax.Array,
            window: _Window | None) -> jax.Array:
  """``[b, g, tokens, chunk]`` products, -inf where a key is outside the query's window."""
  s = jnp.einsum("bgic,bgjc->bgij", q, k_chunk)
  return s if window is None else jnp.where(window.sees(start, k_chunk.shape[2]), s, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _flash(q: jax.Array, k: jax.Array, v: jax.Array, key_chunk: int,
           window: _Window | None) -> jax.Array:
  """Softmax attention of each token over the tokens of its group, ``[b, g, tokens, c]``.

  The keys are walked ``key_chunk`` at a time with an online softmax and the
  custom gradient recomputes each chunk's probabilities from the queries,
  keys and the per-token log-sum-exp (flash attention), so no pass holds a
  ``tokens x tokens`` matrix. With a ``window`` (one group: a flattened
  frame) each token sees only its neighbourhood, and the neighbourhood's
  positions beyond the frame's border count as keys and values of zero
  (score 0, in the softmax's denominator).
  """
  return _flash_forward(q, k, v, key_chunk, window)[0]


def _flash_forward(q, k, v, key_chunk, window):
  qw = _wide(q)

  def body(carry, chunk):
    m, l, acc = carry
    k_chunk, v_chunk, start = chunk
    s = _scores(qw, k_chunk, start, window)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    # A query that has seen no key yet (all -inf so far) rescales from 0.
    m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    rescale = jnp.exp(m - m_ref)
    p = jnp.exp(s - m_ref[..., None])
    l = l * rescale + jnp.sum(p, axis=-1)
    acc = acc * rescale[..., None] + jnp.einsum("bgij,bgjc->bgic", p, v_chunk)
    return (m_new, l, acc), None

  if window is None:
    m, l = jnp.full(qw.shape[:-1], -jnp.inf, qw.dtype), jnp.zeros(qw.shape[:-1], qw.dtype)
  else:
    # The zero keys beyond the border: score 0, so a running maximum of 0 and that many ones.
    zeros = window.outside().astype(qw.dtype)
    l = jnp.broadcast_to(zeros, qw.shape[:-1])
    m = jnp.where(l > 0, 0.0, -jnp.inf).astype(qw.dtype)
  (m, l, acc), _, _ = _over_chunks(body, (m, l, jnp.zeros_like(qw)), _wide(k), _wide(v),
                                   key_chunk)
  out = acc / l[..., None]
  return out.astype(q.dtype), out, m + jnp.log(l)


def _flash_fwd(q, k, v, key_chunk, window):
  out, out_wide, lse = _flash_forward(q, k, v, key_chunk, window)
  return out, (q, k, v, out_wide, lse)


def _flash_bwd(key_chunk, window, res, dout):
  q, k, v, out, lse = res
  qw, dout = _wide(q), _wide(dout)
  # sum_j P_ij dP_ij = dout_i . out_i: the softmax gradient's correction term (the zero
  # keys beyond a frame's border have zero values, so add nothing to it).
  delta = jnp.sum(dout * out, axis=-1)

  def body(dq, chunk):
    k_chunk, v_chunk, start = chunk
    p = jnp.exp(_scores(qw, k_chunk, start, window) - lse[..., None])
    ds = p * (jnp.einsum("bgic,bgjc->bgij", dout, v_chunk) - delta[..., None])
    dq = dq + jnp.einsum("bgij,bgjc->bgic", ds, k_chunk)
    return dq, (_transposed_product(ds, qw), _transposed_product(p, dout))

  dq, (dks, dvs), rest = _over_chunks(body, jnp.zeros_like(qw), _wide(k), _wide(v), key_chunk)
  dk_rest, dv_rest = rest if rest is not None else (None, None)
  dk, dv = _from_key_chunks(dks, dk_rest), _from_key_chunks(dvs, dv_rest)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: int,
                    key_chunk: int = KEY_CHUNK) -> jax.Array:
  """Softmax self-attention among the tokens of each block of a ``scale x scale`` grid.

  The tokens of a block are its ``(height / scale) x (width / scale)``
  positions in every map of the ``maps`` axis (CMS-LSTM attends over H and C
  side by side): ``out_i = sum_j softmax_j(q_i . k_j) v_j`` over the tokens
  ``j`` of token ``i``'s block. Scores are not scaled. Computed in float32 at
  least; the result has ``q``'s dtype.

  The keys are walked ``key_chunk`` at a time with an online softmax and the
  custom gradient recomputes each chunk's probabilities from the queries,
  keys and the per-token log-sum-exp (flash attention), so no pass holds a
  block's ``tokens x tokens`` matrix: at most ``tokens x key_chunk`` scores
  at a time.

  Args:
    q: queries ``[batch, maps, height, width, channels]``.
    k: keys, same shape.
    v: values, same shape.
    scale: blocks per side; divides height and width.
    key_chunk: most keys per step of the online softmax (any positive
      number; a last, shorter chunk is a step of its own).

  Returns:
    ``[batch, maps, height, width, channels]``.
  """
  out = _flash(_blocks(q, scale), _blocks(k, scale), _blocks(v, scale), key_chunk, None)
  return _unblocks(out, q.shape, scale)
