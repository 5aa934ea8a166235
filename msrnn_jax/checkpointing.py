"""Orbax checkpoints of the whole training state, written atomically.

Orbax writes each step into a temporary directory and renames it when the
(asynchronous) save is complete, so a run killed mid-save leaves the previous
checkpoint intact. Each checkpoint holds the train state pytree (params,
optimizer state, step, PRNG key) and a JSON item with the scheduled-sampling
and data positions.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(state, meta)`` under ``<workdir>/checkpoints``.

  Args:
    directory: checkpoint directory (created if missing).
    keep: number of most recent checkpoints to keep.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of ``state`` and ``meta`` at ``step``."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores the latest (or given) step into the structure and shardings of ``target``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"no checkpoint in {self.directory}; train first (mode=train with this workdir).")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
