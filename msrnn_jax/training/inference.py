"""Prediction from a saved model: context frames in a ``.npy`` file -> future frames.

``predict_file`` is what ``--mode=predict`` runs; ``load_context`` and
``check_output`` validate the files before any JAX work. Input files are read
with ``allow_pickle=False``.

Input shapes (``C`` = ``config.data.channels``): one sequence ``(T, H, W)`` or
``(T, H, W, C)``, or a batch ``(N, T, H, W)`` (one-channel data) or
``(N, T, H, W, C)``. A 4-D array is one sequence when its last axis is ``C``,
otherwise (for one-channel data) a batch.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrnn_jax import model as model_lib
from msrnn_jax.evaluation import visualize
from msrnn_jax.training import config_checks, sharding
from msrnn_jax.training.run import check_checkpoints, restore_params, start_jax
from msrnn_jax.training.step import create_model

# Sequences drawn in the PNG/GIF beside the predictions (all are predicted).
MAX_PICTURE_ROWS = 16

# One jitted function for every call: a (model, horizon, batch shape) seen
# before reuses its compilation.
_predict = jax.jit(model_lib.predict, static_argnums=(0, 3))


def load_context(path: str, channels: int, size_multiple: int) -> tuple[np.ndarray, bool]:
  """Reads context sequences as float32 ``[N, T, H, W, C]`` in [0, 1].

  Accepts the shapes of the module docstring; uint8 is scaled by 1/255;
  floats must already lie in [0, 1].

  Returns:
    ``(context, batched)``: ``batched`` is False for a single-sequence file
    (then ``N = 1``).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"context file {path} does not exist; pass --input=<file>.npy.")
  try:
    arr = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path} is not a plain .npy array ({e}); save it with np.save.") from None
  shapes = "(T, H, W), (T, H, W, C), (N, T, H, W) or (N, T, H, W, C)"
  if arr.ndim == 3:
    arr, batched = arr[None, ..., None], False
  elif arr.ndim == 4 and arr.shape[-1] == channels:
    arr, batched = arr[None], False
  elif arr.ndim == 4 and channels == 1 and not (arr.shape[2] % size_multiple
                                                or arr.shape[3] % size_multiple):
    arr, batched = arr[..., None], True
  elif arr.ndim == 4:
    other = (f"; read as (N, T, H, W), its {arr.shape[2]}x{arr.shape[3]} frames are not "
             f"multiples of {size_multiple}" if channels == 1 else "")
    raise ValueError(f"context {path} has shape {arr.shape}: read as (T, H, W, C) it has "
                     f"{arr.shape[-1]} channels; the model expects {channels}{other}.")
  elif arr.ndim == 5:
    batched = True
  else:
    raise ValueError(f"context {path} has shape {arr.shape}; expected {shapes}.")
  if arr.shape[-1] != channels:
    raise ValueError(f"context {path} has {arr.shape[-1]} channels; the model expects {channels}.")
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f"context {path} has shape {arr.shape}: no sequences or no frames.")
  if arr.shape[2] % size_multiple or arr.shape[3] % size_multiple:
    raise ValueError(f"context frames are {arr.shape[2]}x{arr.shape[3]}; this model needs sides "
                     f"that are multiples of {size_multiple}.")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0, batched
  if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"context {path} has dtype {arr.dtype}; use uint8 or float in [0, 1].")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
    raise ValueError(f"context {path} has values outside [0, 1] (min {arr.min()}, max "
                     f"{arr.max()}); scale it to [0, 1] or save it as uint8.")
  return arr, batched


def check_output(output_path: str) -> None:
  """The output must be a ``.npy`` path in an existing folder (it is written as given)."""
  if not output_path.endswith(".npy"):
    raise ValueError(f"--output={output_path} must end in .npy (the predictions are a NumPy "
                     "array; a PNG and a GIF are written beside it).")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f"output folder {out_dir} does not exist; create it first.")


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

  Writes ``output_path`` (float32 ``[horizon, H, W, C]`` for one input
  sequence, ``[N, horizon, H, W, C]`` for a batch), and beside it a PNG
  (one row per sequence: context, then predictions) and a GIF (one frame
  per time step) of the first ``MAX_PICTURE_ROWS`` sequences. Every check of
  the arguments runs before JAX starts.
  """
  config_checks.check_config(config)
  horizon = check_horizon(horizon, config)
  check_output(output_path)
  model = create_model(config)
  context, batched = load_context(input_path, config.data.channels, model.config.size_multiple())
  workdir = check_checkpoints(config, workdir, "predict")
  start_jax(config)
  mesh = sharding.make_mesh()
  shape = (1, 2) + context.shape[2:]
  params, _ = restore_params(config, workdir, mesh, shape, mode="predict", model=model)
  # This process's copy: prediction runs on one device, whatever the mesh.
  params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  pred = predict_frames(config, {"params": params}, context, horizon, model=model)
  if jax.process_index() == 0:
    np.save(output_path, pred if batched else pred[0])
    stem = output_path[:-len(".npy")]
    rows = np.concatenate([context, pred], axis=1)[:MAX_PICTURE_ROWS]
    visualize.save_sequences(rows, stem + ".png", stem + ".gif", context_len=context.shape[1])
  return pred if batched else pred[0]
