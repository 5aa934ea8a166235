"""bfloat16 values that XLA:CPU keeps as bfloat16.

XLA:CPU computes bfloat16 arithmetic in float32 and, with excess precision
allowed (its default), may drop a rounding to bfloat16 whose result is
widened again, or move it past a data movement. Three places of a
low-precision model lose memory to this:

* the per-step stacks of checkpointed carries (``remat='step'``; the bulk of
  training memory): XLA:CPU has no bfloat16 dynamic-update-slice and writes
  them through float32, twice the bytes (figures in docs/performance.md);
* gate activations kept for the backward pass, which that pass widens to
  meet a float32 state: XLA keeps the float32 values instead;
* a convolution's stacked inputs and the gate gradients reassembled from
  their chunks, which XLA would concatenate in float32 (:func:`concatenate`).

:func:`pack` hands such values on as the bit patterns of their bfloat16
values in float16 arrays, whose data movement is native and which nothing
converts; :func:`unpack` reinterprets them back. Both round nothing and are
differentiable: the cotangent takes the reverse reinterpretation, so a
packed value must reach exactly one consumer (a sum of two packed
cotangents would add float16 numbers). Other platforms and dtypes pass
through unchanged.
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


def packs(dtype) -> bool:
  """Whether :func:`pack` changes the ``dtype`` (bfloat16) leaves of a tree here."""
  return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def pack(tree, dtype):
  """The ``dtype`` leaves of ``tree`` in the form XLA keeps as they are."""
  if not packs(dtype):
    return tree
  return jax.tree.map(lambda x: _to_container(x) if x.dtype == jnp.bfloat16 else x, tree)


def unpack(tree, dtype):
  """Inverse of :func:`pack` (a bfloat16 model has no float16 values of its own)."""
  if not packs(dtype):
    return tree
  return jax.tree.map(lambda x: _from_container(x) if x.dtype == jnp.float16 else x, tree)


def concatenate(values, dtype):
  """``values`` rounded to ``dtype`` and concatenated along their last axis.

  The concatenation moves packed values, so XLA:CPU cannot run it in
  float32 after the roundings (twice the bytes, and a transient the size of
  the result).
  """
  return unpack(jnp.concatenate(pack([v.astype(dtype) for v in values], dtype), axis=-1), dtype)


def stash(values):
  """Arrays of one dtype, packed with a record of that dtype, as a residual.

  For a ``custom_vjp``'s forward pass; :func:`unstash` gives them back in
  the backward pass, which knows no dtype of its own.
  """
  dtype = jax.tree.leaves(values)[0].dtype
  # The empty array records the dtype (residuals must be arrays).
  return pack(values, dtype), jnp.zeros((0,), dtype)


def unstash(stashed):
  """Inverse of :func:`stash`."""
  values, marker = stashed
  return unpack(values, marker.dtype)
