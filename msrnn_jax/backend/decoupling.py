"""PredRNN-V2's decoupling term with a hand-written gradient that keeps only its inputs.

For each channel, the term is ``|<a_hat, m_hat>|`` over space, where
``a = A(delta_c)`` and ``m = A(delta_m)`` are the memory increments after the
shared 1x1 adapter ``A`` and ``x_hat = x / max(||x||, eps)``. Computed for all
time steps of a layer at once, autodiff's backward pass holds the adapted
maps, their norms' intermediates and their normalised copies for every step
together. The gradient here keeps the increments alone and recomputes ``a``
and ``m``; with ``sigma = sign(<a_hat, m_hat>)`` and ``s = <a_hat, m_hat>``::

  dL/da = sigma (m_hat - s a_hat) / ||a||,   dL/dm = sigma (a_hat - s m_hat) / ||m||

(where ``||a|| < eps`` the normalisation is a plain division: ``sigma m_hat / eps``),
and the adapter's gradients follow from one backward pass of its convolution over
both increments. ``tests/test_decoupling.py`` compares it with autodiff.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["decoupling_term"]

_EPS = 1e-12


def _normalised(project, kernel, bias, delta_c, delta_m):
  """``(a_hat, m_hat)``, float32, and the per-channel norms ``(n_a, n_m)`` (unclamped)."""
  b, t, h, w, c = delta_c.shape
  both = project(jnp.concatenate([delta_c, delta_m]).reshape(2 * b * t, h, w, c), kernel)
  both = both.astype(jnp.float32).reshape(2 * b, t, h, w, -1) + bias
  norm = jnp.sqrt(jnp.sum(both * both, axis=(2, 3), keepdims=True))
  unit = both / jnp.maximum(norm, _EPS)
  return jnp.split(unit, 2), jnp.split(norm, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def decoupling_term(project: Callable[[jax.Array, jax.Array], jax.Array], kernel: jax.Array,
                    bias: jax.Array, delta_c: jax.Array, delta_m: jax.Array) -> jax.Array:
  """PredRNN-V2's decoupling term of one layer at every step, summed over channels.

  Args:
    project: ``project(x, kernel)``, the adapter's 1x1 convolution without
      its bias, ``[n, h, w, c] -> [n, h, w, c]``.
    kernel: the adapter's kernel ``[1, 1, c, c]``.
    bias: the adapter's bias ``[c]``.
    delta_c: increments of the memory C, ``[batch, T, h, w, c]``.
    delta_m: increments of the memory M, the same shape.

  Returns:
    ``[batch, T]`` float32.
  """
  (a, m), _ = _normalised(project, kernel, bias, delta_c, delta_m)
  return jnp.sum(jnp.abs(jnp.sum(a * m, axis=(2, 3))), axis=-1)


def _decoupling_fwd(project, kernel, bias, delta_c, delta_m):
  return decoupling_term(project, kernel, bias, delta_c, delta_m), (kernel, bias, delta_c, delta_m)


def _decoupling_bwd(project, res, g):
  kernel, bias, delta_c, delta_m = res
  (a, m), (n_a, n_m) = _normalised(project, kernel, bias, delta_c, delta_m)
  s = jnp.sum(a * m, axis=(2, 3), keepdims=True)
  sigma = jnp.sign(s) * g[:, :, None, None, None]

  def through_norm(unit, other, norm):
    # d x_hat -> d x: the radial part drops out where the norm is not clamped.
    radial = jnp.where(norm > _EPS, s * unit, 0.0)
    return sigma * (other - radial) / jnp.maximum(norm, _EPS)

  d_both = jnp.concatenate([through_norm(a, m, n_a), through_norm(m, a, n_m)])
  b, t, h, w, c = delta_c.shape
  deltas = jnp.concatenate([delta_c, delta_m]).reshape(2 * b * t, h, w, c)
  _, vjp = jax.vjp(project, deltas, kernel)
  d_deltas, d_kernel = vjp(d_both.reshape(2 * b * t, h, w, -1).astype(
      jax.eval_shape(project, deltas, kernel).dtype))
  d_delta_c, d_delta_m = jnp.split(d_deltas.reshape(2 * b, t, h, w, c), 2)
  d_bias = jnp.sum(d_both, axis=(0, 1, 2, 3)).astype(bias.dtype)
  return d_kernel, d_bias, d_delta_c.astype(delta_c.dtype), d_delta_m.astype(delta_m.dtype)


decoupling_term.defvjp(_decoupling_fwd, _decoupling_bwd)
