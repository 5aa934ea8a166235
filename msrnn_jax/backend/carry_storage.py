"""How a bfloat16 scan carry is stored between time steps on XLA:CPU.

XLA:CPU has no bfloat16 dynamic-slice or dynamic-update-slice: its float
normalisation computes them in float32. The per-step stacks a rolled
``nn.scan`` keeps for the backward pass (with ``remat='step'``: every step's
carry, the bulk of the training memory) are then converted whole to float32,
and bfloat16 saves almost nothing (MS-ConvLSTM, ``remat='step'``, 256x256:
2.03 GB against float32's 2.22 GB). float16 data movement is native, so the
carry crosses the step boundary as the bit patterns of its bfloat16 values
in float16 arrays: 1.20 GB. The reinterpretation rounds nothing; its
gradient is the reverse reinterpretation, so cotangents pass through
unchanged. Each container must have exactly one consumer (the ``load`` at
the top of the step): a sum of two cotangents in the container would add
float16 numbers.

Other platforms and dtypes store the carry as it is.
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _to_container(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.float16)


@jax.custom_vjp
def _from_container(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.bfloat16)


_to_container.defvjp(lambda x: (_to_container(x), None), lambda _, ct: (_from_container(ct),))
_from_container.defvjp(lambda x: (_from_container(x), None), lambda _, ct: (_to_container(ct),))


def _packs(dtype) -> bool:
  return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def store(carry, dtype):
  """The carry of a model computing in ``dtype`` as the scan should keep it."""
  if not _packs(dtype):
    return carry
  return jax.tree.map(lambda x: _to_container(x) if x.dtype == jnp.bfloat16 else x, carry)


def load(carry, dtype):
  """Inverse of :func:`store` (a bfloat16 model has no float16 values of its own)."""
  if not _packs(dtype):
    return carry
  return jax.tree.map(lambda x: _from_container(x) if x.dtype == jnp.float16 else x, carry)
