"""Prediction from a saved model: context frames in a ``.npy`` file -> future frames.

``predict_file`` is what ``--mode=predict`` runs; ``load_context`` validates
the input. Files are read with ``allow_pickle=False``.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrnn_jax import models, sharding, visualize
from msrnn_jax.train import create_model, restore_params


def load_context(path: str, channels: int, size_multiple: int) -> np.ndarray:
  """Reads a context sequence as float32 ``[T, H, W, C]`` in [0, 1].

  Accepts ``(T, H, W)`` or ``(T, H, W, C)`` arrays; uint8 is scaled by 1/255;
  floats must already lie in [0, 1].
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"context file {path} does not exist; pass --input=<file>.npy.")
  try:
    arr = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path} is not a plain .npy array ({e}); save it with np.save.") from None
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.ndim != 4:
    raise ValueError(f"context {path} has shape {arr.shape}; expected (T, H, W) or (T, H, W, C).")
  if arr.shape[-1] != channels:
    raise ValueError(f"context {path} has {arr.shape[-1]} channels; the model expects {channels}.")
  if arr.shape[0] < 1:
    raise ValueError(f"context {path} has no frames.")
  if arr.shape[1] % size_multiple or arr.shape[2] % size_multiple:
    raise ValueError(f"context frames are {arr.shape[1]}x{arr.shape[2]}; this model needs sides "
                     f"that are multiples of {size_multiple}.")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0
  if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"context {path} has dtype {arr.dtype}; use uint8 or float in [0, 1].")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
    raise ValueError(f"context {path} has values outside [0, 1] (min {arr.min()}, max "
                     f"{arr.max()}); scale it to [0, 1] or save it as uint8.")
  return arr


def predict_frames(config: ml_collections.ConfigDict, variables: Any,
                   context: np.ndarray, horizon: int) -> np.ndarray:
  """Predicts ``horizon`` frames ``[horizon, H, W, C]`` (clipped to [0, 1])."""
  model = create_model(config, in_len=context.shape[0])
  fn = jax.jit(models.predict, static_argnums=(0, 3))
  out = fn(model, variables, jnp.asarray(context)[None], horizon)
  return np.clip(np.asarray(out[0]), 0.0, 1.0)


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str,
                 output_path: str, horizon: int | None = None) -> np.ndarray:
  """Loads the latest checkpoint in ``workdir`` and writes predictions.

  Writes ``output_path`` (``.npy``, float32 ``[horizon, H, W, C]``) and a PNG
  strip (context then predictions) beside it.
  """
  horizon = horizon or config.data.out_len
  model = create_model(config)
  context = load_context(input_path, config.data.channels, model.size_multiple())
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f"output folder {out_dir} does not exist; create it first.")
  mesh = sharding.make_mesh()
  shape = (1,) + context.shape[:1] + context.shape[1:]
  params, _ = restore_params(config, workdir, mesh, (1, 2) + shape[2:])
  pred = predict_frames(config, {"params": params}, context, horizon)
  np.save(output_path, pred)
  visualize.save_strip(np.concatenate([context, pred]), os.path.splitext(output_path)[0] + ".png")
  return pred
