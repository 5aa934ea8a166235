"""Orbax checkpoints of the whole training state: atomic, finite and self-describing.

* Atomic: orbax writes each step into a temporary directory and renames it
  when the (asynchronous) save is complete, so a run killed mid-save leaves
  the previous checkpoint intact.
* Finite: the trainer saves only states that pass ``integrity.all_finite``, so the
  checkpoint a non-finite loss error points to can be resumed from.
* Self-describing: besides the train state pytree (params, optimizer state,
  step, PRNG key) each checkpoint holds a JSON item ``meta`` with the data and
  schedule positions and the settings of ``config_checks.settings``, which
  ``run.check_settings`` compares with the current config before a run
  touches its workdir.
* Verified: ``meta`` also holds a SHA-256 of every array's bytes, checked on
  restore, so a checkpoint whose files were changed in place (flipped bytes of
  the same size) counts as damaged instead of being loaded. (Orbax checksums
  only the index of its zarr shards, not the data.)
* Damage tolerant: ``Checkpointer.restore_intact`` skips checkpoints that
  cannot be read (truncated files, a missing item), fail their checksums or
  hold non-finite values, with a warning naming each, and restores the newest
  intact one.
* Safe to read during training: a read-only ``Checkpointer`` (evaluation,
  prediction) retries with the newer checkpoints when training rotates the
  one it reads away, and never calls intact checkpoints damaged.
"""

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from msrnn_jax.training import distributed, integrity
from msrnn_jax.training import workdir as workdir_lib

# Sub-directories of the workdir: checkpoints, and where training moves
# damaged ones so that it can save their steps again.
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
# How often a reader starts again after training rotated its checkpoint away.
_RESCANS = 5


class CheckpointError(ValueError):
  """No usable checkpoint, or one of other settings; the message is one line."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, quota, file size limit); one line."""


# Orbax writes a step into '<step><this suffix>' and renames it when complete.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def checkpoint_steps(directory: str) -> list[int]:
  """Finalized checkpoint steps in ``directory``, ascending (no JAX needed)."""
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def read_meta(directory: str, step: int) -> dict[str, Any]:
  """The ``meta`` item of a checkpoint (no JAX needed); raises if it cannot be read."""
  path = epath.Path(directory) / str(step) / "meta"
  return dict(ocp.handlers.JsonCheckpointHandler().restore(path))


def _ignore_callbacks_of_a_failed_restore() -> None:
  """Silences the tracebacks that outlive a failed orbax restore (process-wide, once).

  When one read of a damaged checkpoint fails, orbax closes its event loop while
  other tensorstore reads are still in flight; their completion callbacks then
  report ``RuntimeError('Event loop is closed')`` as unraisable exceptions, a
  traceback each, which say nothing the warning does not. Other unraisable
  exceptions are reported as before.
  """
  previous = sys.unraisablehook
  if getattr(previous, "msrnn_jax_filter", False):
    return

  def hook(unraisable: Any) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      previous(unraisable)

  hook.msrnn_jax_filter = True
  sys.unraisablehook = hook


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


class Checkpointer:
  """Saves and restores ``(state, meta)`` under ``<workdir>/checkpoints``.

  Args:
    directory: checkpoint directory (created if missing, unless read-only).
    keep: number of most recent checkpoints to keep (>= 1).
    read_only: only restore (evaluation, prediction): never save, delete or
      clean up, even if a training run writes to the directory meanwhile.
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    if keep < 1:
      raise ValueError(f"keep={keep}: at least one checkpoint must be kept.")
    self.directory = os.path.abspath(directory)
    self._read_only = read_only
    self._failed: CheckpointWriteError | None = None
    if read_only:
      # No preservation policy: nothing is ever deleted. (orbax's own
      # read_only option warns on every use.)
      options = ocp.CheckpointManagerOptions(create=False)
    else:
      options = ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of ``state`` and ``meta`` (plus the checksums of
    ``state``'s arrays) at ``step``."""
    meta = {**meta, "checksums": integrity.checksums(state)}
    with self._writing():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  @contextlib.contextmanager
  def _writing(self) -> Iterator[None]:
    """Turns a failed (possibly earlier, asynchronous) save into ``CheckpointWriteError``,
    removing its half-written temporary folder."""
    if self._failed:
      raise self._failed
    try:
      yield
    except Exception as e:  # orbax raises whatever its storage raised
      for name in os.listdir(self.directory) if jax.process_index() == 0 else ():
        if _TMP_SUFFIX in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      if distributed.peer_failure(e) is not None:
        raise  # the save's synchronisation met a lost process, not a storage problem
      code = re.search(r"os_error_code='(\d+)'", str(e))
      reason = os.strerror(int(code.group(1))) if code else _reason(e)
      steps = checkpoint_steps(self.directory)
      resume = f"resume from step {steps[-1]}" if steps else "start from step 0"
      self._failed = CheckpointWriteError(
          f"cannot write a checkpoint in {self.directory}: {reason} "
          f"({workdir_lib.free_there(self.directory)}); its temporary folder was removed. "
          f"{workdir_lib.FULL_DISK_FIX}, then rerun with this workdir to {resume}.")
      raise self._failed from None

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores the latest (or given) step into the structure and shardings of ``target``."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"no checkpoint in {self.directory}; train first (mode=train with this workdir).")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    integrity.verify(out["state"], meta)
    meta.pop("checksums", None)
    return out["state"], meta

  def restore_intact(self, target: Any, *, quarantine: str | None = None
                     ) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that can be read and is finite.

    Each newer one that fails is named in a warning. With ``quarantine`` (a
    directory; training passes ``<workdir>/checkpoints_damaged``) those are
    moved there once an intact one is found, so that training can save their
    steps again; nothing is moved or deleted otherwise. A read-only
    checkpointer whose checkpoint vanished while it read it (a training run
    rotated it away) starts again from the newest one.

    Args:
      target: a state with the structure, shapes and shardings to restore into.
      quarantine: where to move damaged checkpoints, or None.

    Returns:
      ``(state, meta)``, or None if the directory holds no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none is intact.
    """
    _ignore_callbacks_of_a_failed_restore()
    damaged = {}
    for _ in range(_RESCANS):
      rotated = False
      for step in reversed(self._manager.all_steps()):
        if step in damaged:
          continue
        try:
          state, meta = self.restore(target, step)
          if not integrity.all_finite(state):
            raise ValueError("it holds non-finite values (NaN or Inf)")
        except Exception as e:  # any read failure means damaged, unless the step went away
          if self._read_only and not os.path.isdir(os.path.join(self.directory, str(step))):
            logging.warning("checkpoint %s was removed by training while it was read; "
                            "reading the newest one.", os.path.join(self.directory, str(step)))
            rotated = True
            break
          damaged[step] = _reason(e)
          logging.warning("checkpoint %s cannot be used (%s); trying the one before it.",
                          os.path.join(self.directory, str(step)), damaged[step])
          continue
        if damaged and quarantine:
          self._move_aside(sorted(damaged), quarantine)
        return state, meta
      if not rotated:
        break
      self._manager.reload()
    else:
      raise CheckpointError(
          f"the checkpoints in {self.directory} were rotated away {_RESCANS} times while they "
          "were read (a training run saves faster than they can be read); rerun when it "
          "has finished, or copy one checkpoint to another workdir and read it there.")
    if not damaged:
      return None
    listed = "; ".join(f"step {s}: {r}" for s, r in sorted(damaged.items(), reverse=True))
    paths = " ".join(os.path.join(self.directory, str(s)) for s in sorted(damaged, reverse=True))
    raise CheckpointError(
        f"no intact checkpoint in {self.directory} ({listed}). Remove the damaged ones to start "
        f"from step 0 (rm -r {paths}), or choose another --workdir.")

  def _move_aside(self, steps: list[int], quarantine: str) -> None:
    if jax.process_index() == 0:
      os.makedirs(quarantine, exist_ok=True)
      for step in steps:
        dest = os.path.join(quarantine, str(step))
        n = 1
        while os.path.exists(dest):
          dest, n = os.path.join(quarantine, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), dest)
        logging.warning("moved damaged checkpoint %s to %s.", step, dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("msrnn_jax: damaged checkpoints moved")
    self._manager.reload()

  def wait(self) -> None:
    """Waits for pending saves; raises ``CheckpointWriteError`` if one failed."""
    with self._writing():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves; raises ``CheckpointWriteError`` if one failed."""
    try:
      if not self._failed:
        self.wait()
    finally:
      with contextlib.suppress(Exception):  # after a failed save, closing reports it again
        self._manager.close()
