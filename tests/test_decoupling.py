"""backend.decoupling_term: PredRNN-V2's decoupling term against autodiff and numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax import backend
from msrnn_jax.backend.decoupling import decoupling_term

RNG = np.random.default_rng(11)


def _project(x, kernel):
  return backend.conv2d(x, kernel, conv_impl="xla")


def _plain(kernel, bias, delta_c, delta_m):
  """The term as written (autodiff of this is the reference gradient).

  The norm's gradient is 0 at 0, as PyTorch's (the double ``where`` keeps
  autodiff of ``sqrt`` away from 0, where JAX's would be NaN).
  """
  def unit(delta):
    a = jnp.einsum("bthwc,cd->bthwd", delta, kernel[0, 0]) + bias
    sq = jnp.sum(a * a, axis=(2, 3), keepdims=True)
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return a / jnp.maximum(norm, 1e-12)
  return jnp.sum(jnp.abs(jnp.sum(unit(delta_c) * unit(delta_m), axis=(2, 3))), axis=-1)


def _case(b=2, t=3, h=4, w=5, c=6):
  kernel = jnp.asarray(RNG.normal(size=(1, 1, c, c)) * 0.4, jnp.float32)
  bias = jnp.asarray(RNG.normal(size=(c,)) * 0.1, jnp.float32)
  deltas = [jnp.asarray(RNG.normal(size=(b, t, h, w, c)), jnp.float32) for _ in range(2)]
  return kernel, bias, *deltas


def test_value_matches_numpy():
  kernel, bias, dc, dm = _case()
  ours = decoupling_term(_project, kernel, bias, dc, dm)

  def unit(d):
    a = np.einsum("bthwc,cd->bthwd", np.asarray(d, np.float64), np.asarray(kernel[0, 0])) + bias
    return a / np.sqrt((a * a).sum(axis=(2, 3), keepdims=True))

  want = np.abs((unit(dc) * unit(dm)).sum(axis=(2, 3))).sum(-1)
  assert ours.shape == (2, 3)
  np.testing.assert_allclose(ours, want, rtol=1e-5)


@pytest.mark.parametrize("zero_channel", [False, True])
def test_gradients_match_autodiff(zero_channel):
  kernel, bias, dc, dm = _case()
  if zero_channel:  # an adapted channel that is zero everywhere: its norm is clamped
    kernel, bias = kernel.at[..., 2].set(0.0), bias.at[2].set(0.0)
  weights = jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32)
  ours = jax.grad(lambda *a: jnp.sum(decoupling_term(_project, *a) * weights),
                  argnums=(0, 1, 2, 3))(kernel, bias, dc, dm)
  want = jax.grad(lambda *a: jnp.sum(_plain(*a) * weights), argnums=(0, 1, 2, 3))(
      kernel, bias, dc, dm)
  for got, ref in zip(ours, want, strict=True):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_backward_keeps_only_the_inputs():
  kernel, bias, dc, dm = _case()
  _, vjp = jax.vjp(functools.partial(decoupling_term, _project), kernel, bias, dc, dm)
  kept = sum(x.size for x in jax.tree.leaves(vjp) if hasattr(x, "size"))
  assert kept == kernel.size + bias.size + dc.size + dm.size
