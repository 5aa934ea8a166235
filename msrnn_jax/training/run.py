"""Run management shared by every mode: start-up, the workdir lock, signals and restore.

``start_jax`` is the first JAX call of every mode; ``locked_workdir`` creates
and locks the workdir for a run; ``StopSignals`` turns SIGTERM/SIGINT into a
flag that every process agrees on, ending in ``Preempted``;
``check_checkpoints`` and ``restore_params`` give evaluation and prediction
the parameters of the newest intact checkpoint.
"""

import contextlib
import functools
import os
import signal
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from msrnn_jax import backend
from msrnn_jax import model as model_lib
from msrnn_jax.training import checkpointing, config_checks, distributed, sharding
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.checkpointing import Checkpointer
from msrnn_jax.training.step import create_model, create_optimizer, create_train_state


class Preempted(Exception):
  """A run stopped on SIGTERM or SIGINT after saving a checkpoint; rerun to continue.

  Attributes:
    step: the step of the checkpoint just saved.
  """

  def __init__(self, step: int, directory: str, during: str = ""):
    if during:  # an evaluation: the checkpoint was saved before it
      what = (f"stopped by a signal during {during}; the checkpoint of step {step} is in "
              f"{directory}; rerun the same command to run the evaluation.")
    else:
      what = (f"stopped by a signal at step {step}; the checkpoint of step {step} is in "
              f"{directory}; rerun the same command to continue.")
    super().__init__(what)
    self.step = step


class StopSignals:
  """Turns SIGTERM/SIGINT into a flag so the loop can checkpoint and exit."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d received: saving a checkpoint and stopping.", signum)
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process was asked to stop; every process gets the same answer.

    A scheduler may signal only some processes, and all of them must save the
    (collective) checkpoint at the same step.
    """
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def start_jax(config: ml_collections.ConfigDict) -> None:
  """Initialises ``jax.distributed`` if configured; the first JAX call of every mode.

  Raises:
    distributed.ConfigMismatch: the processes of the run have different configs.
  """
  if distributed.initialize(config.distributed):
    distributed.check_same_config(config)
  logging.info("JAX process %d/%d, local devices: %s; %s", jax.process_index(),
               jax.process_count(), jax.local_devices(),
               backend.summary(config.backend.conv_impl, config.backend.warp_impl))


@contextlib.contextmanager
def locked_workdir(workdir: str) -> Iterator[None]:
  """Creates and locks ``workdir`` (process 0) for the ``with`` block.

  Every process learns whether that worked, so a refused multi-process run
  stops everywhere with the same error instead of hanging.

  Raises:
    WorkdirError: the workdir cannot be created or another run holds it.
  """
  lock, error = None, ""
  if jax.process_index() == 0:
    try:
      workdir_lib.create_workdir(workdir)
      lock = workdir_lib.WorkdirLock(workdir)
      lock.acquire()
    except workdir_lib.WorkdirError as e:
      lock, error = None, str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if not bool(multihost_utils.broadcast_one_to_all(np.int32(not error))) and not error:
      error = f"process 0 could not create or lock workdir {workdir} (see its error)."
  if error:
    raise workdir_lib.WorkdirError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def check_settings(workdir: str, config: ml_collections.ConfigDict, mode: str) -> None:
  """Raises ``checkpointing.CheckpointError`` if the workdir's checkpoints were made with other settings.

  Compares ``config_checks.mode_keys(config, mode)`` with the newest checkpoint whose
  ``meta`` can be read; unreadable ones are left to ``restore_intact``.
  Touches nothing, needs no JAX.
  """
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  for step in reversed(checkpointing.checkpoint_steps(directory)):
    try:
      saved = checkpointing.read_meta(directory, step).get("settings")
    except Exception:  # damaged: restore_intact names it
      continue
    if saved is None:  # written before settings were recorded
      return
    diffs = config_checks.differences(saved, config, config_checks.mode_keys(config, mode))
    if diffs:
      raise checkpointing.CheckpointError(config_checks.mismatch_message(workdir, step, diffs))
    return


def check_checkpoints(config: ml_collections.ConfigDict, workdir: str, mode: str) -> str:
  """The absolute workdir if it has checkpoints of ``config``'s settings (no JAX, no writes).

  Raises:
    FileNotFoundError: no workdir or no checkpoint in it.
    CheckpointError: the checkpoints were made with other settings.
  """
  workdir = workdir_lib.check_workdir(workdir, must_exist=True)
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not checkpointing.checkpoint_steps(directory):
    raise FileNotFoundError(
        f"no checkpoint in {directory}; train first with --mode=train --workdir={workdir}.")
  check_settings(workdir, config, mode)
  return workdir


def restore_params(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                   frames_shape: tuple[int, ...], mode: str = "eval",
                   model: model_lib.Predictor | None = None) -> tuple[Any, int]:
  """Parameters of the newest intact checkpoint in ``workdir`` (and its step).

  Args:
    config: the configuration; its ``config_checks.mode_keys(config, mode)`` must
      match the checkpoint's.
    workdir: the run directory.
    mesh: parameters are replicated over it.
    frames_shape: a frame batch shape to build the parameter structure.
    mode: ``'eval'`` or ``'predict'`` (which settings must match).
    model: ``create_model(config)`` when the caller has it already; None
      builds it.
  """
  workdir = check_checkpoints(config, workdir, mode)
  ckpt = Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR), read_only=True)
  if model is None:
    model = create_model(config)
  tx = create_optimizer(config)
  target = jax.jit(functools.partial(create_train_state, model, tx, frames_shape, config.seed),
                   out_shardings=sharding.replicated(mesh))()
  try:
    state, _ = ckpt.restore_intact(target)
  finally:
    ckpt.close()
  return state.params, int(state.step)
