"""Data parallelism with ``jax.jit`` and named shardings (no pmap).

A 1-D mesh ``('data',)`` over all devices: batches are split on their
leading axis, parameters and optimizer state are replicated, and XLA inserts
the gradient all-reduce. Multi-host runs call :func:`initialize_distributed`
before any other JAX call; each process then feeds its own slice of the global batch.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def initialize_distributed(group: Any) -> bool:
  """Starts ``jax.distributed`` as ``config.distributed`` asks; call before any JAX call.

  Args:
    group: ``config.distributed``: ``enabled``, and ``coordinator_address``
      (``host:port`` of process 0), ``num_processes`` and ``process_id``, each
      None (or empty) to let ``jax.distributed.initialize`` detect it from the
      cluster launcher (SLURM, Open MPI, TPU pods). A plain bool is read as
      ``enabled`` with everything detected.

  Returns:
    Whether JAX runs distributed (also when it was initialised before).

  Raises:
    ValueError: initialisation failed (one line, with what to set).
  """
  if isinstance(group, bool):
    group = {"enabled": group}
  if not group.get("enabled", False):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {k: group.get(k) for k in ("coordinator_address", "num_processes", "process_id")}
  kwargs = {k: v for k, v in kwargs.items() if v not in (None, "")}
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    raise ValueError(
        f"jax.distributed.initialize({args}) failed: {first.rstrip('.')}. Launch under "
        "SLURM/Open MPI, or set distributed.coordinator_address, num_processes and process_id "
        "(docs/running.md).") from None
  return True


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
