"""Attention over image neighbourhoods: PrecipLSTM's local and CMS-LSTM's block attention.

:func:`local_attention` is the windowed attention of PrecipLSTM (the
authors' ``img_local_att`` CUDA extension, a 30x30 window around every
pixel). Written as an unfold (every pixel's 900 keys and values gathered,
as the extension's pure-PyTorch fallback does) it holds ``window**2`` copies
of the keys and of the values, and autodiff would keep them for the
backward pass at every layer and time step. Here the window is walked one
row of offsets at a time with an online softmax (as flash attention walks
key blocks), and a custom gradient recomputes each row's scores from the
queries, keys and values and the per-pixel log-sum-exp: the forward pass
keeps one row (``window`` offsets) alive at a time and training memory
holds only the inputs, the output and one map of statistics.

:func:`block_attention` is CMS-LSTM's self-attention inside the blocks of a
``scale x scale`` grid, rematerialised in the backward pass so that the
block's attention matrix is never stored across time steps.
"""

import functools

import jax
import jax.numpy as jnp


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pad(x: jax.Array, window: int) -> jax.Array:
  """Zero border so that offset ``d`` of pixel ``p`` is index ``p + d + window // 2``."""
  r = window // 2
  return jnp.pad(x, ((0, 0), (r, window - 1 - r), (r, window - 1 - r), (0, 0)))


def _columns(width: int, window: int) -> jax.Array:
  """``[width, window]`` padded column of each pixel's neighbours: ``x + dx``."""
  return jnp.arange(width)[:, None] + jnp.arange(window)[None, :]


def _row(padded: jax.Array, dy: jax.Array, height: int, width: int, window: int) -> jax.Array:
  """Every pixel's ``window`` neighbours of offset row ``dy``: ``[b, h, w, window, c]``."""
  slab = jax.lax.dynamic_slice_in_dim(padded, dy, height, axis=1)
  return slab[:, :, _columns(width, window)]


def _add_row(padded: jax.Array, row: jax.Array, dy: jax.Array, window: int) -> jax.Array:
  """Adds a row of neighbour gradients ``[b, h, w, window, c]`` back where :func:`_row` read them."""
  _, h, w, _, _ = row.shape
  slab = jax.lax.dynamic_slice_in_dim(padded, dy, h, axis=1)
  slab = slab.at[:, :, _columns(w, window)].add(row)
  return jax.lax.dynamic_update_slice_in_dim(padded, slab, dy, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
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
  return _forward(q, k, v, window)[0]


def _forward(q, k, v, window):
  b, h, w, c = q.shape
  qf = _wide(q)
  kp, vp = _pad(_wide(k), window), _pad(_wide(v), window)

  def body(carry, dy):
    m, l, acc = carry
    s = jnp.einsum("bhwc,bhwkc->bhwk", qf, _row(kp, dy, h, w, window))
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])
    l = l * rescale + jnp.sum(p, axis=-1)
    acc = acc * rescale[..., None] + jnp.einsum("bhwk,bhwkc->bhwc", p, _row(vp, dy, h, w, window))
    return (m_new, l, acc), None

  init = (jnp.full((b, h, w), -jnp.inf, qf.dtype), jnp.zeros((b, h, w), qf.dtype),
          jnp.zeros((b, h, w, c), qf.dtype))
  (m, l, acc), _ = jax.lax.scan(body, init, jnp.arange(window))
  out = acc / l[..., None]
  return out.astype(q.dtype), out, m + jnp.log(l)


def _local_attention_fwd(q, k, v, window):
  out, out_wide, lse = _forward(q, k, v, window)
  return out, (q, k, v, out_wide, lse)


def _local_attention_bwd(window, res, dout):
  q, k, v, out, lse = res
  b, h, w, c = q.shape
  qf, dout = _wide(q), _wide(dout)
  kp, vp = _pad(_wide(k), window), _pad(_wide(v), window)
  # sum_d P_d dP_d = dout . out: the softmax gradient's correction term.
  delta = jnp.sum(dout * out, axis=-1)

  def body(carry, dy):
    dq, dkp, dvp = carry
    k_row, v_row = _row(kp, dy, h, w, window), _row(vp, dy, h, w, window)
    p = jnp.exp(jnp.einsum("bhwc,bhwkc->bhwk", qf, k_row) - lse[..., None])
    ds = p * (jnp.einsum("bhwc,bhwkc->bhwk", dout, v_row) - delta[..., None])
    dq = dq + jnp.einsum("bhwk,bhwkc->bhwc", ds, k_row)
    dkp = _add_row(dkp, ds[..., None] * qf[:, :, :, None], dy, window)
    dvp = _add_row(dvp, p[..., None] * dout[:, :, :, None], dy, window)
    return (dq, dkp, dvp), None

  init = (jnp.zeros_like(qf), jnp.zeros_like(kp), jnp.zeros_like(vp))
  (dq, dkp, dvp), _ = jax.lax.scan(body, init, jnp.arange(window))
  r = window // 2
  dk, dv = dkp[:, r:r + h, r:r + w], dvp[:, r:r + h, r:r + w]
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


local_attention.defvjp(_local_attention_fwd, _local_attention_bwd)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: int) -> jax.Array:
  """Softmax self-attention among the tokens of each block of a ``scale x scale`` grid.

  The tokens of a block are its ``(height / scale) x (width / scale)``
  positions in every map of the ``maps`` axis (CMS-LSTM attends over H and C
  side by side). Scores are not scaled. The backward pass recomputes the
  attention (``jax.checkpoint``): a block's ``tokens**2`` matrix is then a
  transient, not a residual kept for every layer and step.

  Args:
    q: queries ``[batch, maps, height, width, channels]``.
    k: keys, same shape.
    v: values, same shape.
    scale: blocks per side; divides height and width.

  Returns:
    ``[batch, maps, height, width, channels]``.
  """
  b, n, h, w, c = q.shape
  bh, bw = h // scale, w // scale

  def blocks(x):
    x = x.reshape(b, n, scale, bh, scale, bw, c).transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(b, scale * scale, n * bh * bw, c)

  logits = jnp.einsum("bgic,bgjc->bgij", blocks(q), blocks(k), preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bgij,bgjc->bgic", weights, blocks(v))
  out = out.reshape(b, scale, scale, n, bh, bw, c).transpose(0, 3, 1, 4, 2, 5, 6)
  return out.reshape(b, n, h, w, c)
