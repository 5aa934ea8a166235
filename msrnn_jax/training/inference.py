"""Prediction from a saved model: context frames -> future frames.

``predict_file`` is what ``--mode=predict`` runs; ``context_files.load_context``
and ``check_output`` validate the files before any JAX work.

Inputs: :mod:`msrnn_jax.training.context_files`.

Values are in the data's original range where the data set was scaled to [0, 1]
(``data.value_scaling``: your own sequences); otherwise uint8 (scaled by 1/255) or
floats in [0, 1]. The predictions are written in the same range.
"""

import contextlib
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrnn_jax import data
from msrnn_jax import model as model_lib
from msrnn_jax.evaluation import visualize
from msrnn_jax.training import config_checks, sharding
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.context_files import load_context
from msrnn_jax.training.run import check_checkpoints, restore_params, start_jax
from msrnn_jax.training.step import create_model, model_config

# Sequences drawn in the PNG/GIF beside the predictions (all are predicted).
MAX_PICTURE_ROWS = 16
# Files written for --output=<stem>.npy.
PICTURE_SUFFIXES = (".png", ".gif")

# One jitted function for every call: a (model, horizon, batch shape) seen
# before reuses its compilation.
_predict = jax.jit(model_lib.predict, static_argnums=(0, 3))


def output_paths(output_path: str) -> list[str]:
  """The files ``--output`` writes: the ``.npy`` and its pictures beside it."""
  stem = output_path[:-len(".npy")]
  return [output_path] + [stem + suffix for suffix in PICTURE_SUFFIXES]


def check_output(output_path: str, input_path: str | None = None,
                 data_folder: str | None = None) -> None:
  """The output must be a ``.npy`` path in an existing folder that overwrites no input.

  Raises:
    ValueError: when the ``.npy`` or a picture beside it is the input, lies in the
      input's frame folder, or lies in ``data_folder`` (the data set's raw files).
  """
  if not output_path.endswith(".npy"):
    raise ValueError(f"--output={output_path} must end in .npy (the predictions are a NumPy "
                     "array; a PNG and a GIF are written beside it).")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f"output folder {out_dir} does not exist; create it first.")
  if data_folder and os.path.isdir(data_folder):
    raw = os.path.realpath(data_folder)
    if any(os.path.realpath(p).startswith(raw + os.sep) for p in output_paths(output_path)):
      raise ValueError(f"--output={output_path} lies in the data folder {data_folder} "
                       "(data.manual_dir), whose files are the data set; choose an --output "
                       "outside it.")
  if not input_path or not os.path.exists(input_path):
    return
  source = os.path.realpath(input_path)
  for path in output_paths(output_path):
    real = os.path.realpath(path)
    inside = os.path.isdir(source) and real.startswith(source + os.sep)
    if real == source or inside or (os.path.exists(path) and os.path.samefile(path, source)):
      raise ValueError(f"--output={output_path} would overwrite the input {input_path} (it "
                       f"writes {path}); choose an --output outside the input.")


def check_horizon(horizon: int | None, config: ml_collections.ConfigDict) -> int:
  """``horizon``, or ``data.out_len`` when None; it must be >= 1."""
  if horizon is None:
    return int(config.data.out_len)
  if horizon < 1:
    raise ValueError(f"--horizon={horizon}: the number of frames to predict must be >= 1 "
                     f"(leave it out for data.out_len={config.data.out_len}).")
  return int(horizon)


def predict_frames(config: ml_collections.ConfigDict, variables: Any, context: np.ndarray,
                   horizon: int, batch_size: int | None = None,
                   model: model_lib.Predictor | None = None) -> np.ndarray:
  """Predicts ``horizon`` frames, clipped to [0, 1].

  Args:
    config: the configuration (model and data sections).
    variables: ``{'params': ...}``.
    context: ``[T, H, W, C]`` (one sequence) or ``[N, T, H, W, C]``.
    horizon: frames to predict.
    batch_size: sequences per call (default ``config.eval.batch_size``); the
      last call is padded so that one compilation serves all.
    model: ``create_model(config)`` when the caller has it already; None
      builds it. Its ``in_len`` does not matter: ``model_lib.predict`` takes
      the context length from ``context``.

  Returns:
    ``[horizon, H, W, C]`` or ``[N, horizon, H, W, C]``, as ``context``.
  """
  single = context.ndim == 4
  context = context[None] if single else context
  if model is None:
    model = create_model(config)
  n = context.shape[0]
  chunk = min(n, batch_size or config.eval.batch_size)
  out = []
  for i in range(0, n, chunk):
    part = context[i:i + chunk]
    pad = chunk - part.shape[0]
    if pad:
      part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
    pred = np.asarray(_predict(model, variables, jnp.asarray(part), horizon))
    out.append(pred[:chunk - pad])
  pred = np.clip(np.concatenate(out), 0.0, 1.0)
  return pred[0] if single else pred


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str,
                 output_path: str, horizon: int | None = None) -> np.ndarray:
  """Loads the newest intact checkpoint in ``workdir`` and writes predictions.

  Writes ``output_path`` (``[horizon, H, W, C]`` for one input sequence,
  ``[N, horizon, H, W, C]`` for a batch; float32 in [0, 1], or the data's original
  range and type where it was scaled), and beside it a PNG (one row per sequence:
  context, then predictions) and a GIF (one frame per time step) of the first
  ``MAX_PICTURE_ROWS`` sequences. No input is ever overwritten. Every check of the
  arguments runs before JAX starts.

  Returns:
    What was written to ``output_path``.
  """
  config_checks.check_config(config)
  horizon = check_horizon(horizon, config)
  check_output(output_path, input_path, data.manual_dir(config.data))
  multiple = model_config(config).size_multiple()
  scaling = data.value_scaling(config.data)
  context, batched = load_context(input_path, config.data.channels, multiple,
                                  data_cfg=config.data, scaling=scaling)
  workdir = check_checkpoints(config, workdir, "predict")
  start_jax(config)
  model = create_model(config)
  mesh = sharding.make_mesh()
  shape = (1, 2) + context.shape[2:]
  params, _ = restore_params(config, workdir, mesh, shape, mode="predict", model=model)
  # This process's copy: prediction runs on one device, whatever the mesh.
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  pred = predict_frames(config, {"params": params}, context, horizon, model=model)
  values = pred if scaling is None else scaling.from_unit(pred)
  values = values if batched else values[0]
  if jax.process_index() == 0:
    rows = np.concatenate([context, pred], axis=1)[:MAX_PICTURE_ROWS]
    write_outputs(output_path, values, rows, context.shape[1])
  return values


def write_outputs(output_path: str, values: np.ndarray, rows: np.ndarray,
                  context_len: int) -> None:
  """Writes the predictions and their pictures (:func:`output_paths`), all or none.

  Each file is written under a temporary name beside it and renamed over its
  path once all three are complete, so a full disk leaves the previous files
  (say, of an earlier prediction) as they were.

  Args:
    output_path: the ``.npy`` path.
    values: what the ``.npy`` holds.
    rows: ``[N, T, H, W, C]`` in [0, 1], context then predictions, for the pictures.
    context_len: frames of each row that were given.

  Raises:
    OSError: a file could not be written; one line naming the output and the free space.
  """
  paths = output_paths(output_path)
  temps = [os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.partial{os.path.splitext(p)[1]}")
           for p in paths]
  try:
    # Serialised first: np.save into a file writes through C stdio and drops an error of
    # the final flush (a full disk would leave a truncated .npy and no error).
    encoded = io.BytesIO()
    np.save(encoded, values)
    with open(temps[0], "wb") as f:
      f.write(encoded.getbuffer())
    visualize.save_sequences(rows, temps[1], temps[2], context_len=context_len)
    for temp, path in zip(temps, paths, strict=True):
      os.replace(temp, path)
  except OSError as e:
    for temp in temps:
      with contextlib.suppress(FileNotFoundError):
        os.remove(temp)
    folder = os.path.dirname(os.path.abspath(output_path))
    raise OSError(
        f"cannot write the predictions {output_path} and their pictures: {e.strerror or e} "
        f"({workdir_lib.free_there(folder)}); no file was changed. {workdir_lib.FULL_DISK_FIX}, then "
        "rerun the same command.") from e
