"""Data parallelism with ``jax.jit`` and named shardings (no pmap).

A 1-D mesh ``('data',)`` over all devices: batches are split on their
leading axis, parameters and optimizer state are replicated, and XLA inserts
the gradient all-reduce. Multi-host runs start ``jax.distributed`` first
(``distributed.initialize``); each process then feeds its own slice of the global batch.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def make_mesh() -> jax.sharding.Mesh:
  """A data-parallel mesh over every device, with explicit ``Auto`` axes.

  ``Auto`` rather than JAX's default ``Explicit``: under ``Explicit`` the
  zero initial carry of ``nn.scan`` is unsharded while its output is
  batch-sharded, which scan rejects.
  """
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_size(global_batch: int, name: str = "batch_size") -> None:
  """The global batch must split evenly over devices and processes."""
  n = jax.device_count()
  if global_batch % n:
    raise ValueError(
        f"{name}={global_batch} is not divisible by the {n} devices; set it to a multiple of {n} "
        f"(e.g. {max(n, global_batch // n * n)}).")


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays from this process's slice of the batch."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
