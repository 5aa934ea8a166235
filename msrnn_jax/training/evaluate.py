"""Evaluation and its result files: periodic validation, the final test and ``--mode=eval``.

``evaluate`` scores parameters on a split with both protocols (all T-1
frames, future frames only) and the trivial baselines; ``write_evaluation``
writes the results JSON/CSV, the per-frame plot and the prediction grid;
``evaluate_checkpoint`` is what ``--mode=eval`` runs.
"""

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from msrnn_jax import data
from msrnn_jax.evaluation import metrics, visualize
from msrnn_jax.training import checkpointing, config_checks, run, sharding
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.step import create_model, make_eval_step


def _host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def evaluate(config: ml_collections.ConfigDict, params: Any, mesh: jax.sharding.Mesh, split: str,
             eval_step: Callable, max_examples: int | None = None,
             before_batch: Callable[[], None] | None = None) -> dict[str, Any]:
  """Evaluates ``params`` on a split with both protocols and the trivial baselines.

  Args:
    config: the configuration.
    params: model parameters (replicated over ``mesh``).
    mesh: the device mesh; each batch is sharded over it.
    split: 'validation', 'test' or 'train'.
    eval_step: ``make_eval_step`` of the model; one for every evaluation of a run
      reuses its compilation (every evaluation split has the same in/out lengths).
    max_examples: evaluate only the first this-many examples.
    before_batch: called before each batch; it may raise to stop (a signal).

  Returns:
    dict with ``result`` and ``baselines`` (name -> result; see
    ``metrics.EvalAccumulator.result`` and ``metrics.BASELINES``) and
    ``samples``: (context, truth, prediction) arrays of the first
    ``config.eval.num_visualize`` sequences.
  """
  # Every split has data.in_len context frames, the in_len of create_model.
  in_len, _ = data.sequence_lengths(config.data, split)
  acc = metrics.EvalAccumulator()
  base = {name: metrics.EvalAccumulator() for name in metrics.BASELINES}
  num_vis = config.eval.num_visualize
  vis = []
  batches = data.eval_batches(config.data, split, global_batch=config.eval.batch_size,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), max_examples=max_examples)
  for batch in batches:
    if before_batch is not None:
      before_batch()
    global_batch = sharding.shard_batch(batch, mesh)
    stats, base_stats, preds = eval_step(params, global_batch["frames"], global_batch["mask"])
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


def worse_than_baselines(evaluation: dict[str, Any]) -> bool:
  """Whether the model's future MSE is above every trivial baseline's: it learned nothing."""
  mse = evaluation["result"]["future"]["mse"]
  return bool(evaluation["baselines"]) and all(
      mse > b["future"]["mse"] for b in evaluation["baselines"].values())


def write_evaluation(evaluation: dict[str, Any], workdir: str, split: str) -> dict[str, str]:
  """Results JSON/CSV, per-frame plot and prediction grid (PNG + GIF) in ``workdir``.

  The JSON's ``worse_than_baselines`` says whether the model did worse than every
  trivial baseline (then a warning says so too).
  """
  worse = worse_than_baselines(evaluation)
  if worse:
    listed = ", ".join(f"{name} {b['future']['mse']:.4g}"
                       for name, b in evaluation["baselines"].items())
    logging.warning(
        "the %s evaluation is worse than every trivial baseline (future MSE %.4g; %s): the "
        "model has not learned to predict; check train.learning_rate and the training loss.",
        split, evaluation["result"]["future"]["mse"], listed)
  result = {**evaluation["result"], "worse_than_baselines": worse}
  try:
    paths = metrics.write_results(result, workdir, split, evaluation["baselines"])
    for name, result in evaluation["baselines"].items():
      metrics.write_results(result, workdir, f"{split}_{name}")
    paths["plot"] = os.path.join(workdir, f"{split}_per_frame.png")
    visualize.plot_per_frame(evaluation["result"], paths["plot"])
    paths["grid"] = os.path.join(workdir, f"{split}_predictions.png")
    paths["gif"] = os.path.join(workdir, f"{split}_predictions.gif")
    visualize.prediction_grid(*evaluation["samples"], paths["grid"], paths["gif"])
  except OSError as e:  # a full disk or quota: the checkpoint is intact, the files can be redone
    raise OSError(
        f"cannot write the {split} results in {workdir}: {e.strerror or e} "
        f"({workdir_lib.free_there(workdir)}). {workdir_lib.FULL_DISK_FIX}, then write them "
        "again with --mode=eval and this workdir.") from e
  return paths


def scalars(prefix: str, result: dict[str, Any], keys=("mse", "mae", "ssim", "psnr")
            ) -> dict[str, float]:
  """``{prefix}/{metric}_{protocol}`` summary scalars of a result."""
  return {f"{prefix}/{k}_{protocol}": result[protocol][k]
          for protocol in ("all", "future") for k in keys if k in result[protocol]}


def log_summary(ev: dict[str, Any], split: str, seconds: float, paths: dict[str, str]) -> None:
  """Prints the model's and the baselines' metrics and where the results are."""
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


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``--mode=eval``: evaluates the newest intact checkpoint and writes the results.

  The workdir is locked while the results are written.
  """
  config_checks.check_config(config)
  workdir = run.check_checkpoints(config, workdir, "eval")
  if not config.distributed.enabled:
    workdir_lib.check_unlocked(workdir)
  run.start_jax(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")
  in_len, out_len = data.sequence_lengths(config.data, "train")
  size = config.data.image_size
  shape = (jax.device_count(), in_len + out_len, size, size, config.data.channels)
  model = create_model(config)
  data.check_prepared(config.data)
  with run.locked_workdir(workdir), run.StopSignals() as stop:
    params, step = run.restore_params(config, workdir, mesh, shape, model=model)
    max_examples = None if config.eval.max_examples < 0 else config.eval.max_examples
    t0 = time.time()

    def stop_on_signal() -> None:
      if stop.agreed():
        raise run.Preempted(step, os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                            during="the evaluation")

    ev = evaluate(config, params, mesh, config.eval.split, max_examples=max_examples,
                  eval_step=make_eval_step(model, data.radar_metrics(config.data)),
                  before_batch=stop_on_signal)
    if jax.process_index() == 0:
      paths = write_evaluation(ev, workdir, config.eval.split)
      with open(os.path.join(workdir, f"{config.eval.split}_checkpoint.json"), "w") as f:
        json.dump({"step": step}, f)
      log_summary(ev, config.eval.split, time.time() - t0, paths)
  return ev
