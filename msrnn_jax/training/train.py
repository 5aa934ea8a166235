"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

The loop follows the reference (msrnn_reference.md section 5): Adam with a
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
before the workdir is created or changed; the workdir is locked for the run;
only finite states are checkpointed; damaged checkpoints are skipped; SIGTERM
and SIGINT save a checkpoint and raise ``Preempted``.
"""

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from msrnn_jax import backend, data
from msrnn_jax import model as model_lib
from msrnn_jax.evaluation import metrics, visualize
from msrnn_jax.training import checkpointing, config_checks, sharding, summary
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.checkpointing import Checkpointer
from msrnn_jax.training.step import (
    TrainState,
    create_model,
    create_optimizer,
    create_train_state,
    is_radar,
    make_eval_step,
    make_train_step,
    sampling_mode,
    schedule,
)


def _host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def evaluate(config: ml_collections.ConfigDict, params: Any, mesh: jax.sharding.Mesh, split: str,
             max_examples: int | None = None, eval_step: Callable | None = None
             ) -> dict[str, Any]:
  """Evaluates ``params`` on a split with both protocols and the trivial baselines.

  Args:
    config: the configuration.
    params: model parameters (replicated over ``mesh``).
    mesh: the device mesh; each batch is sharded over it.
    split: 'validation', 'test' or 'train'.
    max_examples: evaluate only the first this-many examples.
    eval_step: ``make_eval_step`` of the model, passed by a caller that
      evaluates more than once so that every evaluation reuses its
      compilation (every evaluation split has the same in/out lengths); None
      builds one for this call.

  Returns:
    dict with ``result`` and ``baselines`` (name -> result; see
    ``metrics.EvalAccumulator.result`` and ``metrics.BASELINES``) and
    ``samples``: (context, truth, prediction) arrays of the first
    ``config.eval.num_visualize`` sequences.
  """
  # Every split has data.in_len context frames, the in_len of create_model.
  in_len, _ = data.sequence_lengths(config.data, split)
  step = eval_step
  if step is None:
    step = make_eval_step(create_model(config), is_radar(config.data))
  acc = metrics.EvalAccumulator()
  base = {name: metrics.EvalAccumulator() for name in metrics.BASELINES}
  num_vis = config.eval.num_visualize
  vis = []
  batches = data.eval_batches(config.data, split, global_batch=config.eval.batch_size,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), max_examples=max_examples)
  for batch in batches:
    global_batch = sharding.shard_batch(batch, mesh)
    stats, base_stats, preds = step(params, global_batch["frames"], global_batch["mask"])
    acc.update(stats)
    for name, b in base_stats.items():
      base[name].update(b)
    if sum(len(v[0]) for v in vis) < num_vis:
      frames = _host(global_batch["frames"])
      keep = _host(global_batch["mask"])
      vis.append((frames[keep], _host(preds)[keep]))
  if acc.count == 0:
    raise ValueError(f"the {split!r} split yielded no examples; check config.data.")
  frames = np.concatenate([v[0] for v in vis])[:num_vis]
  preds = np.concatenate([v[1] for v in vis])[:num_vis]
  samples = (frames[:, :in_len], frames[:, in_len:], np.clip(preds[:, in_len - 1:], 0.0, 1.0))
  return {"result": acc.result(in_len),
          "baselines": {name: b.result(in_len) for name, b in base.items()}, "samples": samples}


def truth_vs_prediction(samples: tuple[np.ndarray, ...]) -> np.ndarray:
  """uint8 RGB image of the first sequence: truth frames above predicted frames."""
  _, truth, pred = samples
  rows = [np.concatenate(list(visualize.to_rgb(x[0])), axis=1) for x in (truth, pred)]
  return np.concatenate(rows, axis=0)


def write_evaluation(evaluation: dict[str, Any], workdir: str, split: str) -> dict[str, str]:
  """Results JSON/CSV, per-frame plot and prediction grid (PNG + GIF) in ``workdir``."""
  paths = metrics.write_results(evaluation["result"], workdir, split, evaluation["baselines"])
  for name, result in evaluation["baselines"].items():
    metrics.write_results(result, workdir, f"{split}_{name}")
  paths["plot"] = os.path.join(workdir, f"{split}_per_frame.png")
  visualize.plot_per_frame(evaluation["result"], paths["plot"])
  paths["grid"] = os.path.join(workdir, f"{split}_predictions.png")
  paths["gif"] = os.path.join(workdir, f"{split}_predictions.gif")
  visualize.prediction_grid(*evaluation["samples"], paths["grid"], paths["gif"])
  return paths


def _scalars(prefix: str, result: dict[str, Any], keys=("mse", "mae", "ssim", "psnr")):
  out = {}
  for protocol in ("all", "future"):
    for k in keys:
      if k in result[protocol]:
        out[f"{prefix}/{k}_{protocol}"] = result[protocol][k]
  return out


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint; rerun to continue.

  Attributes:
    step: the step of the checkpoint just saved.
  """

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by a signal at step {step}; the checkpoint of step {step} is in "
                     f"{directory}; rerun the same command to continue.")
    self.step = step


class _Stop:
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
  """Initialises ``jax.distributed`` if configured; the first JAX call of every mode."""
  sharding.initialize_distributed(config.distributed)
  logging.info("JAX process %d/%d, local devices: %s; %s", jax.process_index(),
               jax.process_count(), jax.local_devices(), backend.summary(config.backend.conv_impl))


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


def _nonfinite(what: str, step: int, last_saved: int | None, directory: str) -> FloatingPointError:
  if last_saved is None:
    kept = "no checkpoint has been written yet"
    resume = "start from step 0"
  else:
    kept = (f"the last good checkpoint (step {last_saved}, finite) is kept in {directory} and "
            "none after it was written")
    resume = f"resume from step {last_saved}"
  return FloatingPointError(
      f"{what} at step {step}; {kept}. Lower train.learning_rate or check the data for NaNs, "
      f"then rerun with this workdir to {resume}.")


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
    Preempted: SIGTERM/SIGINT stopped training after a checkpoint was saved.
    FloatingPointError: the loss or the parameters became non-finite; only
      finite checkpoints are ever written.
    ValueError, OSError: a config, workdir, checkpoint or data problem (one
      line saying what to do).
  """
  config_checks.check_config(config)
  workdir = workdir_lib.check_workdir(workdir)
  checkpointing.check_settings(workdir, config, "train")
  if not config.distributed.enabled:
    workdir_lib.check_unlocked(workdir)
  start_jax(config)
  lead = jax.process_index() == 0
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")
  mode = sampling_mode(config)
  in_len = config.data.in_len

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
  train_step = make_train_step(model, tx, in_len, config.train.decouple_weight)
  eval_step = make_eval_step(model, is_radar(config.data))

  with locked_workdir(workdir), contextlib.ExitStack() as cleanup:
    ckpt = Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                        keep=config.train.keep_checkpoints)
    # Pending asynchronous saves finish whatever ends the run.
    cleanup.callback(ckpt.close)
    restored = ckpt.restore_intact(
        state, quarantine=os.path.join(workdir, checkpointing.DAMAGED_DIR))
    meta = {}
    if restored is not None:
      state, meta = restored
      logging.info("resumed from step %d (data position %d).", int(state.step),
                   meta.get("data_position", int(state.step)))
    step = int(state.step)
    last_saved = step if restored is not None else None

    writer = summary.Writer(workdir, enabled=lead, backend=config.summary_backend,
                            resume_step=step if restored is not None else None,
                            resume_lines=meta.get("log_lines"))
    cleanup.callback(writer.close)
    writer.write_hparams(config.to_dict())
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    logging.info("model %s: %d parameters; %d steps (%d per epoch); devices: %s",
                 config.model.name, n_params, total_steps, steps_per_epoch, jax.devices())
    progress = summary.Progress(total_steps, step)
    running = None
    settings = config_checks.settings(config)

    def save(step: int, eta: float, eta_context: float) -> None:
      nonlocal last_saved
      # A checkpoint must be one a rerun can continue from.
      if not checkpointing.all_finite((state.params, state.opt_state)):
        raise _nonfinite("non-finite parameters or optimizer state after the update", step,
                         last_saved, ckpt.directory)
      meta = {"step": step, "data_position": step, "eta": eta, "eta_context": eta_context,
              "total_steps": total_steps, "seed": config.seed, "model": config.model.name,
              "settings": settings, "log_lines": writer.lines}
      ckpt.save(step, state, meta)
      last_saved = step

    with _Stop() as stop:
      while step < total_steps:
        eta, eta_context = schedule(mode, step, total_steps, steps_per_epoch)
        batch = sharding.shard_batch({"frames": train_ds[step]["frames"], "rows": rows}, mesh)
        state, batch_metrics = train_step(state, batch["frames"], jnp.float32(eta),
                                          jnp.float32(eta_context), batch["rows"])
        step += 1
        loss = float(batch_metrics.loss.compute())
        if not np.isfinite(loss):
          raise _nonfinite(f"non-finite training loss ({loss})", step, last_saved,
                           ckpt.directory)
        running = batch_metrics if running is None else running.merge(batch_metrics)
        if step % config.train.log_every_steps == 0 or step == total_steps:
          values = {f"train/{k}": v for k, v in running.compute().items()}
          values["train/eta"] = eta
          values["train/steps_per_s"] = progress.rate(step)
          writer.write_scalars(step, values)
          progress.report(step, loss=values["train/loss"], eta=eta)
          running = None
        if step % eval_every == 0 and step < total_steps:
          ev = evaluate(config, state.params, mesh, "validation", max_examples=eval_examples,
                        eval_step=eval_step)
          writer.write_scalars(step, _scalars("valid", ev["result"]))
          writer.write_images(step, {"valid/predictions": truth_vs_prediction(ev["samples"])})
        stopping = stop.agreed()
        if step % config.train.checkpoint_every_steps == 0 or step == total_steps or stopping:
          save(step, eta, eta_context)
        if stopping:
          logging.warning("stopped at step %d; rerun with the same workdir to continue.", step)
          raise Preempted(step, ckpt.directory)
    if last_saved != step:
      save(step, *schedule(mode, step, total_steps, steps_per_epoch))

    t0 = time.time()
    max_examples = None if config.eval.max_examples < 0 else config.eval.max_examples
    ev = evaluate(config, state.params, mesh, config.eval.split, max_examples=max_examples,
                  eval_step=eval_step)
    if lead:
      paths = write_evaluation(ev, workdir, config.eval.split)
      writer.write_scalars(step, _scalars(config.eval.split, ev["result"]))
      for name, result in ev["baselines"].items():
        writer.write_scalars(step, _scalars(f"{config.eval.split}_{name}", result))
      _log_summary(ev, config.eval.split, time.time() - t0, paths)
  return state


def _log_summary(ev: dict[str, Any], split: str, seconds: float, paths: dict[str, str]) -> None:
  rows = []
  for label, res in [("model", ev["result"])] + list(ev["baselines"].items()):
    for protocol in ("all", "future"):
      r = res[protocol]
      rows.append(f"  {label:9s} {protocol:6s} MSE {r['mse']:9.3f}  MAE {r['mae']:9.3f}  "
                  f"SSIM {r['ssim']:.4f}  PSNR {r['psnr']:.2f}")
  mse = ev["result"]["future"]["mse"]
  ratios = ", ".join(f"{mse / b['future']['mse']:.2f}x {name}"
                     for name, b in ev["baselines"].items() if b["future"]["mse"] > 0)
  rows.append(f"  model future MSE = {ratios} (below 1 = better than that baseline)")
  print(f"{split} evaluation ({ev['result']['num_examples']} sequences, {seconds:.0f} s):\n"
        + "\n".join(rows) + f"\n  results: {paths['json']}\n  pictures: {paths['grid']}",
        flush=True)


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
  checkpointing.check_settings(workdir, config, mode)
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


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``--mode=eval``: evaluates the newest intact checkpoint and writes the results.

  The workdir is locked while the results are written.
  """
  config_checks.check_config(config)
  workdir = check_checkpoints(config, workdir, "eval")
  if not config.distributed.enabled:
    workdir_lib.check_unlocked(workdir)
  start_jax(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")
  in_len, out_len = data.sequence_lengths(config.data, "train")
  size = config.data.image_size
  shape = (jax.device_count(), in_len + out_len, size, size, config.data.channels)
  model = create_model(config)
  with locked_workdir(workdir):
    params, step = restore_params(config, workdir, mesh, shape, model=model)
    max_examples = None if config.eval.max_examples < 0 else config.eval.max_examples
    t0 = time.time()
    ev = evaluate(config, params, mesh, config.eval.split, max_examples=max_examples,
                  eval_step=make_eval_step(model, is_radar(config.data)))
    if jax.process_index() == 0:
      paths = write_evaluation(ev, workdir, config.eval.split)
      with open(os.path.join(workdir, f"{config.eval.split}_checkpoint.json"), "w") as f:
        json.dump({"step": step}, f)
      _log_summary(ev, config.eval.split, time.time() - t0, paths)
  return ev
