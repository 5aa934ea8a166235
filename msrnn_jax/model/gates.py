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
