"""The cells' gate arithmetic, fused, with hand-written gradients.

Autodiff of ``sigmoid(f) * c + sigmoid(i) * tanh(g)`` keeps, per time step,
the activations *and* their derivative coefficients (``s(1 - s)``,
``1 - tanh^2``) as residuals for the backward pass: about twice the maps the
gradient needs. Inside the time loop those residuals are written once per
step and read back in the backward pass, so they cost memory and memory
bandwidth. The functions here are ``jax.custom_vjp``s that keep one map per
input: the gate activations (``s(i)``, ``tanh(g)``, ...) and the old state,
from which the backward pass gets every derivative (``s' = s (1 - s)``)
without recomputing a transcendental, except ConvLSTM's ``tanh(C')``.
(Keeping the pre-activations instead costs the same memory but makes the
backward pass recompute every sigmoid and tanh: 6% slower at small shapes.)

The training step's compiled memory falls by a fifth to two fifths
(figures and speed in ``docs/performance.md``). Values equal the plain
expressions exactly (same operations); gradients equal autodiff's to
float32 rounding (tested in ``tests/test_gates.py``).

Gate chunks follow the reference's order ``i, f, g[, o]``. Mixed precision:
outputs follow JAX's type promotion (bfloat16 gates with a float32 state
give a float32 state) and each gradient comes back in its input's dtype.
The nonlinearities and products are computed in float32 whatever the
inputs' dtype, rounded once at the end: XLA:CPU has no bfloat16 arithmetic
and would round after every operation of ``1 / (1 + exp(-x))``, which is
both less accurate and, with a conversion pair per operation, slower (a
third of a bfloat16 PredRNN step's elementwise time). The kept activations
are rounded to the gates' dtype and stashed (``packing.stash``): the
backward pass widens them to meet a float32 state, and XLA would otherwise
keep the float32 values.
"""

import jax
import jax.numpy as jnp

from msrnn_jax.backend import packing
from msrnn_jax.backend.materialize import materialize


@jax.custom_vjp
def lstm_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ConvLSTM's state update from its gate pre-activations.

  ``C' = s(f) C + s(i) tanh(g)``, ``H' = s(o) tanh(C')``.

  Args:
    gates: ``[..., 4 * hidden]``, chunks ``i, f, g, o``.
    c: the cell state ``[..., hidden]``.

  Returns:
    ``(H', C')``, each ``[..., hidden]``.
  """
  return _lstm_update_fwd(gates, c)[0]


def _wide(x: jax.Array) -> jax.Array:
  """``x`` in float32 at least, the precision the gate arithmetic runs in."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _keep(activations, like):
  """Activations rounded to their inputs' dtypes and stashed for the backward pass."""
  return packing.stash(tuple(a.astype(x.dtype) for a, x in zip(activations, like, strict=True)))


def _restore(res):
  """The stashed activations, widened, and the dtypes they were kept in."""
  kept = packing.unstash(res)
  return tuple(map(_wide, kept)), tuple(k.dtype for k in kept)


def _lstm_update_fwd(gates, c):
  i, f, g, o = jnp.split(_wide(gates), 4, axis=-1)
  si, sf, tg, so = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
  c_new = sf * c + si * tg
  out = jnp.result_type(gates, c)
  return ((so * jnp.tanh(c_new)).astype(out), c_new.astype(out)), (
      _keep((si, sf, tg, so), (gates,) * 4), c)


def _lstm_update_bwd(res, cotangents):
  ((si, sf, tg, so), (dtype, *_)), c = _restore(res[0]), res[1]
  dh, dc_new = map(_wide, cotangents)
  tc = jnp.tanh(sf * c + si * tg)
  # Total gradient reaching C': through H' and directly (read by four gradients).
  dc = materialize(dc_new + dh * so * (1.0 - tc * tc))
  # Each chunk rounded before the concatenation (a float32 one would be a
  # transient four times the state's size).
  dgates = packing.concatenate([
      dc * tg * si * (1.0 - si), dc * c * sf * (1.0 - sf), dc * si * (1.0 - tg * tg),
      dh * tc * so * (1.0 - so)], dtype)
  return dgates, (dc * sf).astype(c.dtype)


lstm_update.defvjp(_lstm_update_fwd, _lstm_update_bwd)


@jax.custom_vjp
def memory_update(i: jax.Array, f: jax.Array, g: jax.Array, c: jax.Array) -> jax.Array:
  """An LSTM memory update ``s(f) C + s(i) tanh(g)`` (all ``[..., hidden]``)."""
  return _memory_update_fwd(i, f, g, c)[0]


def _memory_update_fwd(i, f, g, c):
  (out, _), res = _memory_update_with_increment_fwd(i, f, g, c)
  return out, res


def _memory_update_bwd(res, dc_new):
  ((si, sf, tg), dtypes), c = _restore(res[0]), res[1]
  dc_new = _wide(materialize(dc_new))
  return ((dc_new * tg * si * (1.0 - si)).astype(dtypes[0]),
          (dc_new * c * sf * (1.0 - sf)).astype(dtypes[1]),
          (dc_new * si * (1.0 - tg * tg)).astype(dtypes[2]), (dc_new * sf).astype(c.dtype))


memory_update.defvjp(_memory_update_fwd, _memory_update_bwd)


@jax.custom_vjp
def memory_update_with_increment(i: jax.Array, f: jax.Array, g: jax.Array,
                                 c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`memory_update` that also returns its increment ``s(i) tanh(g)``.

  For a loss that reads the increment (PredRNN-V2's decoupling term): the
  gradient keeps the update's residuals and nothing more.

  Returns:
    ``(C', s(i) tanh(g))``, each ``[..., hidden]``.
  """
  return _memory_update_with_increment_fwd(i, f, g, c)[0]


def _memory_update_with_increment_fwd(i, f, g, c):
  si, sf, tg = jax.nn.sigmoid(_wide(i)), jax.nn.sigmoid(_wide(f)), jnp.tanh(_wide(g))
  increment = si * tg
  out = (sf * c + increment).astype(jnp.result_type(i, f, g, c))
  return (out, increment.astype(jnp.result_type(i, g))), (_keep((si, sf, tg), (i, f, g)), c)


def _memory_update_with_increment_bwd(res, cotangents):
  ((si, sf, tg), dtypes), c = _restore(res[0]), res[1]
  dc_new, d_increment = cotangents
  dc_new = _wide(materialize(dc_new))
  # C' = s(f) C + increment: the increment's own gradient adds to what reaches it through C'.
  d_total = materialize(dc_new + _wide(d_increment))
  return ((d_total * tg * si * (1.0 - si)).astype(dtypes[0]),
          (dc_new * c * sf * (1.0 - sf)).astype(dtypes[1]),
          (d_total * si * (1.0 - tg * tg)).astype(dtypes[2]), (dc_new * sf).astype(c.dtype))


memory_update_with_increment.defvjp(_memory_update_with_increment_fwd,
                                    _memory_update_with_increment_bwd)


@jax.custom_vjp
def gated_tanh(a: jax.Array, b: jax.Array) -> jax.Array:
  """``s(a) tanh(b)``: an output gate applied to a squashed state."""
  return _gated_tanh_fwd(a, b)[0]


def _gated_tanh_fwd(a, b):
  sa, tb = jax.nn.sigmoid(_wide(a)), jnp.tanh(_wide(b))
  return (sa * tb).astype(jnp.result_type(a, b)), _keep((sa, tb), (a, b))


def _gated_tanh_bwd(res, dy):
  (sa, tb), dtypes = _restore(res)
  dy = _wide(materialize(dy))
  return (dy * tb * sa * (1.0 - sa)).astype(dtypes[0]), (dy * sa * (1.0 - tb * tb)).astype(dtypes[1])


gated_tanh.defvjp(_gated_tanh_fwd, _gated_tanh_bwd)


@jax.custom_vjp
def highway_update(p: jax.Array, s: jax.Array, z: jax.Array) -> jax.Array:
  """PredRNN++'s gradient highway ``s(s) tanh(p) + (1 - s(s)) Z`` (all ``[..., hidden]``).

  Besides the kept activations, the hand-written gradient writes the
  gradient reaching ``Z'`` once (``materialize``): that gradient flows on to
  ``Z`` through ``1 - s(s)``, step after step, and autodiff's version let
  XLA fuse the whole chain back through time into each step's gradient,
  recomputing it at every step (quadratic in the sequence length).
  """
  return _highway_update_fwd(p, s, z)[0]


def _highway_update_fwd(p, s, z):
  ss, tp = jax.nn.sigmoid(_wide(s)), jnp.tanh(_wide(p))
  out = (ss * tp + (1.0 - ss) * z).astype(jnp.result_type(p, s, z))
  return out, (_keep((tp, ss), (p, s)), z)


def _highway_update_bwd(res, dz_new):
  ((tp, ss), dtypes), z = _restore(res[0]), res[1]
  dz_new = _wide(materialize(dz_new))
  return ((dz_new * ss * (1.0 - tp * tp)).astype(dtypes[0]),
          (dz_new * (tp - z) * ss * (1.0 - ss)).astype(dtypes[1]),
          (dz_new * (1.0 - ss)).astype(z.dtype))


highway_update.defvjp(_highway_update_fwd, _highway_update_bwd)


@jax.custom_vjp
def gru_update(x_gates: jax.Array, h_gates: jax.Array, h: jax.Array) -> jax.Array:
  """TrajGRU's state update from its input and recurrent gate terms.

  ``z = s(z_x + z_h)``, ``r = s(r_x + r_h)``,
  ``H~ = LeakyReLU_0.2(h_x + r h_h)``, ``H' = (1 - z) H~ + z H``.

  The gradient keeps ``z``, ``r``, ``H~`` and ``h_h`` (in the gates' dtype)
  and ``H``; the arithmetic runs in float32 and rounds once.

  Args:
    x_gates: ``[..., 3 * hidden]``, chunks ``z_x, r_x, h_x``.
    h_gates: ``[..., 3 * hidden]``, chunks ``z_h, r_h, h_h``.
    h: the state ``[..., hidden]``.

  Returns:
    ``H'`` ``[..., hidden]``.
  """
  return _gru_update_fwd(x_gates, h_gates, h)[0]


def _gru_update_fwd(x_gates, h_gates, h):
  zx, rx, hx = jnp.split(_wide(x_gates), 3, axis=-1)
  zh, rh, hh = jnp.split(_wide(h_gates), 3, axis=-1)
  z, r = jax.nn.sigmoid(zx + zh), jax.nn.sigmoid(rx + rh)
  a = hx + r * hh
  cand = jnp.where(a >= 0, a, 0.2 * a)
  out = ((1.0 - z) * cand + z * h).astype(jnp.result_type(x_gates, h_gates, h))
  kept = packing.stash(tuple(v.astype(h_gates.dtype) for v in (z, r, cand, hh)))
  # The empty array records x_gates' dtype (residuals must be arrays).
  return out, (kept, jnp.zeros((0,), x_gates.dtype), h)


def _gru_update_bwd(res, dh_new):
  kept, x_marker, h = res
  kept = packing.unstash(kept)
  z, r, cand, hh = (_wide(v) for v in kept)
  dh_new = _wide(materialize(dh_new))
  dz = dh_new * (h - cand) * z * (1.0 - z)
  # LeakyReLU's slope: H~ has the sign of its argument.
  da = dh_new * (1.0 - z) * jnp.where(cand >= 0, 1.0, 0.2)
  dr = da * hh * r * (1.0 - r)
  return (packing.concatenate([dz, dr, da], x_marker.dtype),
          packing.concatenate([dz, dr, da * r], kept[0].dtype), (dh_new * z).astype(h.dtype))


gru_update.defvjp(_gru_update_fwd, _gru_update_bwd)
