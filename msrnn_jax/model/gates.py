"""The cells' gate arithmetic: LSTM state updates of sigmoid and tanh activations.

Each function is the expression in its docstring, run through
``backend.on_activations``: its gradient keeps one map per input where
autodiff keeps the activations *and* their derivative coefficients (the
training step's memory in ``docs/performance.md``), and a low-precision
model's arithmetic runs in float32, rounded once. Gate chunks follow the
reference's order ``i, f, g[, o]``.
"""

import jax
import jax.numpy as jnp

from msrnn_jax import backend


def _lstm(si, sf, tg, so, c):
  c_new = sf * c + si * tg
  return so * jnp.tanh(c_new), c_new


_lstm_update = backend.on_activations(_lstm, ("sigmoid", "sigmoid", "tanh", "sigmoid"),
                                      chunks=True)
_memory_update = backend.on_activations(lambda si, sf, tg, c: sf * c + si * tg,
                                        ("sigmoid", "sigmoid", "tanh"))
_gated_tanh = backend.on_activations(jnp.multiply, ("sigmoid", "tanh"))


def lstm_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ConvLSTM's state update from its gate pre-activations.

  ``C' = s(f) C + s(i) tanh(g)``, ``H' = s(o) tanh(C')``.

  Args:
    gates: ``[..., 4 * hidden]``, chunks ``i, f, g, o``.
    c: the cell state ``[..., hidden]``.

  Returns:
    ``(H', C')``, each ``[..., hidden]``.
  """
  return _lstm_update(gates, c)


def memory_update(i: jax.Array, f: jax.Array, g: jax.Array, c: jax.Array) -> jax.Array:
  """An LSTM memory update ``s(f) C + s(i) tanh(g)`` (all ``[..., hidden]``)."""
  return _memory_update(i, f, g, c)


def gated_tanh(a: jax.Array, b: jax.Array) -> jax.Array:
  """``s(a) tanh(b)``: an output gate applied to a squashed state."""
  return _gated_tanh(a, b)


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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
  kept = backend.stash(tuple(v.astype(h_gates.dtype) for v in (z, r, cand, hh)))
  # The empty array records x_gates' dtype (residuals must be arrays).
  return out, (kept, jnp.zeros((0,), x_gates.dtype), h)


def _gru_update_bwd(res, dh_new):
  kept, x_marker, h = res
  kept = backend.unstash(kept)
  z, r, cand, hh = (_wide(v) for v in kept)
  dh_new = _wide(dh_new)
  dz = dh_new * (h - cand) * z * (1.0 - z)
  # LeakyReLU's slope: H~ has the sign of its argument.
  da = dh_new * (1.0 - z) * jnp.where(cand >= 0, 1.0, 0.2)
  dr = da * hh * r * (1.0 - r)
  return (backend.concatenate([dz, dr, da], x_marker.dtype),
          backend.concatenate([dz, dr, da * r], kept[0].dtype), (dh_new * z).astype(h.dtype))


gru_update.defvjp(_gru_update_fwd, _gru_update_bwd)
