"""A value computed once into memory, where XLA would recompute it in each consumer.

XLA:CPU fuses an elementwise producer into every one of its consumers, so a
value read by several fusions is computed again in each of them. That is
cheap for one operation and costly for a chain: in an ST-LSTM step the
gradient of the memory M sums contributions from every layer above, and
each of a layer's three gate gradients recomputed that whole sum (figures in
``docs/performance.md``). An optimisation barrier does not help: XLA:CPU
removes barriers before fusion.

:func:`materialize` passes its operand through a custom call whose result
is aliased to it (``native/materialize.cc``): XLA must write the value to
memory once, and nothing is copied. Elsewhere (other platforms, or no C++
compiler) it is the identity.
"""

import functools

import jax
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning

from msrnn_jax.backend import native

__all__ = ["available", "materialize"]

_TARGET = "msrnn_materialize"


def _load() -> dict:
  native.load(native.build("materialize", ["materialize.cc"], ["-O2"]),
              {_TARGET: "MsrnnMaterialize"})
  return {}


def _unavailable(reason: str) -> None:
  if jax.default_backend() == "cpu":
    logging.info("materialize is the identity here (%s): XLA may recompute shared gradients",
                 reason)


_library = native.Library(_load, _unavailable)
available = _library.available


def _call(x: jax.Array) -> jax.Array:
  return jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype),
                          input_output_aliases={0: 0}, vmap_method="broadcast_all")(x)


@functools.cache
def _partitioned(ndim: int):
  """The call, batch-partitioned (``native.batch_split``), for rank-``ndim`` operands."""
  def partition(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    act, _ = native.shardings(*native.batch_split(arg_shapes[0]))
    return act.mesh, _call, act, (act,)

  def infer(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    return native.shardings(*native.batch_split(arg_shapes[0]))[0]

  fn = custom_partitioning(_call)
  factors = [f"d{i}" for i in range(ndim)]
  rule = " ".join(factors)
  fn.def_partition(partition, infer_sharding_from_operands=infer,
                   sharding_rule=f"{rule} -> {rule}", need_replication_factors=tuple(factors[1:]))
  return fn


@jax.custom_batching.custom_vmap
def materialize(x: jax.Array) -> jax.Array:
  """``x``, written to memory once for all its consumers (XLA:CPU); else ``x`` itself.

  For a value that several fusions read and that is costly to compute (a
  long elementwise chain): each consumer then reads it instead of
  recomputing it. It has no gradient rule: it is meant for the insides of
  hand-written gradients.
  """
  if x.ndim == 0 or not available():
    return x
  return _partitioned(x.ndim)(x)


@materialize.def_vmap
def _materialize_batched(axis_size, in_batched, x):
  # An identity: the batched array is materialized whole (custom partitioning has no batching rule).
  del axis_size
  return materialize(x), in_batched[0]
