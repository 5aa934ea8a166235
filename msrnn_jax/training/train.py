"""Training: ``train_and_evaluate(config, workdir)``, the loop, then the final evaluation.

The loop follows the authors' code (github.com/mazhf/MS-RNN): Adam with a
constant learning rate, L2 + L1 loss summed over pixels over all T-1
next-frame predictions, scheduled sampling decaying linearly per iteration
(reverse scheduled sampling for PredRNN-V2). Steps are jitted with the batch
sharded over every device. The run is resumable exactly: the batch of step s
is ``train_dataset[s]`` and the sampling masks come from
``fold_in(rng, s)`` (each example gets the row of its position in the global
batch, whichever process holds it), so a checkpoint of (params, Adam state,
step, rng) plus the schedule position is all that is needed.

Robustness (docs/running.md): everything that can be checked (config values,
the workdir, the settings its checkpoints recorded, devices, data) is checked
before the workdir is created or changed; the workdir is locked for the run
(``run``); only finite states are checkpointed; damaged checkpoints are
skipped; SIGTERM and SIGINT save a checkpoint and raise ``run.Preempted``.
"""

import contextlib
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from msrnn_jax import backend, data
from msrnn_jax.training import (
    checkpointing,
    config_checks,
    distributed,
    evaluate,
    memory_fit,
    run,
    sharding,
    summary,
)
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.checkpointing import Checkpointer
from msrnn_jax.training.integrity import all_finite
from msrnn_jax.training.step import (
    TrainState,
    create_model,
    create_optimizer,
    create_train_state,
    make_eval_step,
    make_train_step,
    sampling_mode,
    schedule,
)


def _nonfinite(what: str, step: int, last_saved: int | None, resumed: int | None,
               directory: str) -> FloatingPointError:
  """The error of a non-finite loss or state: what is kept, and the ways out that work."""
  if last_saved is None:
    kept = "no checkpoint has been written yet"
    resume = "start from step 0"
  else:
    kept = (f"the last good checkpoint (step {last_saved}, finite) is kept in {directory} and "
            "none after it was written")
    resume = f"resume from step {last_saved}"
  message = (f"{what} at step {step}; {kept}. Lower train.learning_rate or check the data for "
             f"NaNs, then rerun with this workdir to {resume}.")
  if resumed is not None and resumed == last_saved:
    # The run diverged right after restoring: the checkpoint itself may be the cause.
    path = os.path.join(directory, str(resumed))
    aside = os.path.join(os.path.dirname(directory), checkpointing.DAMAGED_DIR, str(resumed))
    message += (f" This run resumed from {path}; to resume from the checkpoint before it "
                f"instead, move it aside (mkdir -p {os.path.dirname(aside)} && mv {path} "
                f"{aside}) and rerun.")
  return FloatingPointError(message)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from ``workdir`` if it has a checkpoint), then evaluates.

  Everything that can be checked before training (config values, workdir,
  the settings recorded in its checkpoints, devices, data) is checked before
  the workdir is created or changed. The workdir is locked for the run.

  Args:
    config: the full configuration (``configs/default.py``).
    workdir: output directory: checkpoints, TensorBoard files,
      ``metrics.jsonl``, results and pictures.

  Returns:
    The final train state.

  Raises:
    run.Preempted: SIGTERM/SIGINT stopped training after a checkpoint was saved.
    FloatingPointError: the loss or the parameters became non-finite; only
      finite checkpoints are ever written.
    ValueError, OSError: a config, workdir, checkpoint or data problem (one
      line saying what to do).
  """
  config_checks.check_config(config)
  workdir = workdir_lib.check_workdir(workdir)
  run.check_settings(workdir, config, "train")
  if not config.distributed.enabled:
    workdir_lib.check_unlocked(workdir)
  busy = backend.busy_cores_warning()  # before this process loads the cores itself
  run.start_jax(config)
  lead = jax.process_index() == 0
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")
  mode = sampling_mode(config)
  in_len = config.data.in_len

  data.check_prepared(config.data)
  train_ds = data.train_dataset(config.data, global_batch=config.train.batch_size,
                                seed=config.seed, process_index=jax.process_index(),
                                process_count=jax.process_count())
  rows = data.process_rows(config.train.batch_size, jax.process_index(), jax.process_count())
  steps_per_epoch = data.steps_per_epoch(config.data, config.train.batch_size)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else config.train.epochs * steps_per_epoch)
  if config.train.num_steps == -1:
    logging.info("train.num_steps=-1: training train.epochs=%d epochs of %d steps = %d steps.",
                 config.train.epochs, steps_per_epoch, total_steps)
  eval_every = (config.train.eval_every_steps if config.train.eval_every_steps > 0
                else steps_per_epoch)
  eval_examples = None if config.train.eval_examples < 0 else config.train.eval_examples

  model = create_model(config)
  tx = create_optimizer(config)
  first = train_ds[0]["frames"]
  global_shape = (config.train.batch_size,) + first.shape[1:]
  replicated = sharding.replicated(mesh)
  state = jax.jit(functools.partial(create_train_state, model, tx, global_shape, config.seed),
                  out_shardings=replicated)()
  # Built once per run: the train step compiles once, and the eval step once
  # for all the periodic validations and the final test (same shapes).
  example = sharding.shard_batch({"frames": first, "rows": rows}, mesh)
  def build(remat, scan_unroll=None):
    return make_train_step(create_model(config, remat, scan_unroll), tx, in_len,
                           config.train.decouple_weight)

  # Where scan_unroll='auto' unrolls the time loop, the rolled loop is a fallback that can keep less.
  _, train_step = memory_fit.fitted_train_step(
      config.model.remat, build,
      (state, example["frames"], jnp.float32(0), jnp.float32(0), example["rows"]),
      rolled=(lambda: build("none", 1)) if model.config.auto_unrolls(global_shape) else None)
  # The compiler's freed memory is not resident when the first step's temporaries arrive.
  backend.release_freed_memory()
  eval_step = make_eval_step(model, data.radar_metrics(config.data))

  with run.locked_workdir(workdir), contextlib.ExitStack() as cleanup:
    ckpt = Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                        keep=config.train.keep_checkpoints)
    # Pending asynchronous saves finish whatever ends the run (within timeout_s if a
    # multi-process run is failing: a lost peer cannot join the save's synchronisation).
    cleanup.push(lambda _type, error, _tb: distributed.finish_within_timeout(
        error, config.distributed, ckpt.close))
    restored = ckpt.restore_intact(
        state, quarantine=os.path.join(workdir, checkpointing.DAMAGED_DIR))
    meta = {}
    if restored is not None:
      state, meta = restored
      logging.info("resumed from step %d (data position %d).", int(state.step),
                   meta.get("data_position", int(state.step)))
    step = int(state.step)
    last_saved = resumed = step if restored is not None else None

    writer = summary.Writer(workdir, enabled=lead, backend=config.summary_backend,
                            resume_step=step if restored is not None else None,
                            resume_lines=meta.get("log_lines"))
    cleanup.callback(writer.close)
    writer.write_hparams(config.to_dict())
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    logging.info("model %s: %d parameters; %d steps (%d per epoch); devices: %s",
                 config.model.name, n_params, total_steps, steps_per_epoch, jax.devices())
    if busy and jax.default_backend() == "cpu":
      logging.warning(busy)
    progress = summary.Progress(total_steps, step)
    divergence = summary.DivergenceWarning(config.train.learning_rate)
    running = None
    settings = config_checks.settings(config)

    def save(step: int, eta: float, eta_context: float) -> None:
      nonlocal last_saved
      # A checkpoint must be one a rerun can continue from.
      if not all_finite((state.params, state.opt_state)):
        raise _nonfinite("non-finite parameters or optimizer state after the update", step,
                         last_saved, resumed, ckpt.directory)
      meta = {"step": step, "data_position": step, "eta": eta, "eta_context": eta_context,
              "total_steps": total_steps, "seed": config.seed, "model": config.model.name,
              "settings": settings, "log_lines": writer.lines}
      ckpt.save(step, state, meta)
      last_saved = step
      backend.release_freed_memory()

    first_step = step
    with run.StopSignals() as stop:
      while step < total_steps:
        eta, eta_context = schedule(mode, step, total_steps, steps_per_epoch)
        batch = sharding.shard_batch({"frames": train_ds[step]["frames"], "rows": rows}, mesh)
        state, batch_metrics = train_step(state, batch["frames"], jnp.float32(eta),
                                          jnp.float32(eta_context), batch["rows"])
        step += 1
        loss = float(batch_metrics.loss.compute())
        if step == first_step + 1:
          # Leaves the block the first step abandons unresident (backend/allocator.py).
          backend.release_freed_memory()
        else:
          backend.release_if_heap_moved()
        if not np.isfinite(loss):
          raise _nonfinite(f"non-finite training loss ({loss})", step, last_saved, resumed,
                           ckpt.directory)
        running = batch_metrics if running is None else running.merge(batch_metrics)
        if step % config.train.log_every_steps == 0 or step == total_steps:
          values = {f"train/{k}": v for k, v in running.compute().items()}
          values["train/eta"] = eta
          values["train/steps_per_s"] = progress.rate(step)
          writer.write_scalars(step, values)
          progress.report(step, loss=values["train/loss"], p_truth=eta)
          divergence.update(step, float(values["train/loss"]))
          running = None
        if step % eval_every == 0 and step < total_steps:
          ev = evaluate.evaluate(config, state.params, mesh, "validation",
                                 max_examples=eval_examples, eval_step=eval_step)
          writer.write_scalars(step, evaluate.scalars("valid", ev["result"]))
          writer.write_images(
              step, {"valid/predictions": evaluate.truth_vs_prediction(ev["samples"])})
          backend.release_freed_memory()
        stopping = stop.agreed()
        if step % config.train.checkpoint_every_steps == 0 or step == total_steps or stopping:
          save(step, eta, eta_context)
        if stopping:
          logging.warning("stopped at step %d; rerun with the same workdir to continue.", step)
          raise run.Preempted(step, ckpt.directory)
      if last_saved != step:
        save(step, *schedule(mode, step, total_steps, steps_per_epoch))
      # The run is over once its last checkpoint is on disk: a failed save is reported as
      # such, before the evaluation's files meet the same full disk.
      ckpt.wait()

      def stop_on_signal() -> None:
        if stop.agreed():
          raise run.Preempted(step, ckpt.directory, during="the final evaluation")

      t0 = time.time()
      max_examples = None if config.eval.max_examples < 0 else config.eval.max_examples
      ev = evaluate.evaluate(config, state.params, mesh, config.eval.split,
                             max_examples=max_examples, eval_step=eval_step,
                             before_batch=stop_on_signal)
      if lead:
        paths = evaluate.write_evaluation(ev, workdir, config.eval.split)
        writer.write_scalars(step, evaluate.scalars(config.eval.split, ev["result"]))
        for name, result in ev["baselines"].items():
          writer.write_scalars(step, evaluate.scalars(f"{config.eval.split}_{name}", result))
        evaluate.log_summary(ev, config.eval.split, time.time() - t0, paths)
  return state
