"""Prediction from a saved model: context frames -> future frames.

``predict_file`` is what ``--mode=predict`` runs; ``load_context`` and
``check_output`` validate the files before any JAX work.

Inputs (``C`` = ``config.data.channels``):

* an array in a ``.npy`` file (or ``.npz`` / HDF5: ``data.sequences_key`` or the only
  array; all read with ``allow_pickle=False``): one sequence ``(T, H, W)`` or
  ``(T, H, W, C)``, or a batch ``(N, T, H, W)`` (one-channel data) or
  ``(N, T, H, W, C)``. A 4-D array is one sequence when its last axis is ``C``; for
  one-channel data it is a batch when its last axis is longer than 4 (not a channel
  count); anything else is refused, naming the layouts, rather than guessed.
* a video, GIF or folder of image frames: one sequence, prepared like the
  ``sequences`` data (``data.sequences_channels``, ``data.sequences_fit`` to
  ``data.image_size``).

Values are in the data's original range where the data set was scaled to [0, 1]
(``data.value_scaling``: your own sequences); otherwise uint8 (scaled by 1/255) or
floats in [0, 1]. The predictions are written in the same range.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrnn_jax import data
from msrnn_jax import model as model_lib
from msrnn_jax.data import common, sequences
from msrnn_jax.evaluation import visualize
from msrnn_jax.training import config_checks, sharding
from msrnn_jax.training.run import check_checkpoints, restore_params, start_jax
from msrnn_jax.training.step import create_model, model_config

# Sequences drawn in the PNG/GIF beside the predictions (all are predicted).
MAX_PICTURE_ROWS = 16
# Files written for --output=<stem>.npy.
PICTURE_SUFFIXES = (".png", ".gif")
SHAPES = "(T, H, W), (T, H, W, C), (N, T, H, W) or (N, T, H, W, C)"

# One jitted function for every call: a (model, horizon, batch shape) seen
# before reuses its compilation.
_predict = jax.jit(model_lib.predict, static_argnums=(0, 3))


def _is_frames(path: str) -> bool:
  """A video, GIF or frame folder (anything else is read as a .npy array)."""
  return os.path.isdir(path) or os.path.splitext(path)[1].lower() in sequences.VIDEO_EXTS


def _layout(arr: np.ndarray, channels: int, path: str) -> tuple[np.ndarray, bool]:
  """``arr`` as ``[N, T, H, W, C]`` and whether it was a batch, decided by ``channels``."""
  shape = tuple(arr.shape)
  if arr.ndim == 3 and channels == 1:
    return arr[None, ..., None], False
  if arr.ndim == 3:
    raise ValueError(f"context {path} has shape {shape}, frames without a channel axis; the "
                     f"model expects {channels} channels: save (T, H, W, {channels}).")
  if arr.ndim == 4 and shape[-1] == channels:
    return arr[None], False
  if arr.ndim == 4 and channels == 1 and shape[-1] > 4:
    return arr[..., None], True
  if arr.ndim == 4:
    batch = (" or a batch as (N, T, H, W) / (N, T, H, W, 1)" if channels == 1
             else f" or a batch as (N, T, H, W, {channels})")
    raise ValueError(f"context {path} has shape {shape}: read as one sequence (T, H, W, C) it "
                     f"has {shape[-1]} channels; the model expects {channels}. Save one "
                     f"sequence as (T, H, W, {channels}){batch}.")
  if arr.ndim == 5:
    if shape[-1] != channels:
      raise ValueError(f"context {path} has shape {shape}: {shape[-1]} channels; the model "
                       f"expects {channels} ((N, T, H, W, {channels})).")
    return arr, True
  raise ValueError(f"context {path} has shape {shape}; expected {SHAPES}.")


def _read_array(path: str, data_cfg: Any) -> np.ndarray:
  """A ``.npz`` / HDF5 array (``data.sequences_key`` or the only one), else a ``.npy``."""
  ext = os.path.splitext(path)[1].lower()
  key = str(data_cfg.sequences_key) if data_cfg is not None else ""
  if ext == ".npz":
    return sequences.read_npz(path, key)
  if ext in (".h5", ".hdf5"):
    return sequences.read_h5(path, key)
  return sequences.read_npy(path)


def _read_frames(path: str, channels: int, data_cfg: Any,
                 scaling: common.Scaling | None) -> np.ndarray:
  """A video/GIF/frame folder as ``[1, T, S, S, C]`` in [0, 1], as the data were prepared."""
  raw = sequences.read_frame_folder(path) if os.path.isdir(path) else sequences.read_video(path)
  frames = sequences.select_channels(raw, data_cfg.sequences_channels, channels, path)
  stored = sequences.to_stored(frames, scaling or common.Scaling(0.0, 255.0, "uint8"),
                               int(data_cfg.image_size), data_cfg.sequences_fit,
                               data_cfg.resize_method)
  return stored[None].astype(np.float32) / 255.0


def load_context(path: str, channels: int, size_multiple: int, data_cfg: Any = None,
                 scaling: common.Scaling | None = None) -> tuple[np.ndarray, bool]:
  """Reads context sequences as float32 ``[N, T, H, W, C]`` in [0, 1].

  Args:
    path: a ``.npy`` file, a video, a GIF or a folder of frames (module docstring).
    channels: the model's channels.
    size_multiple: frame sides must be multiples of this.
    data_cfg: ``config.data``; how a video/GIF/frame folder is prepared (needed for those).
    scaling: the data's value scaling (``data.value_scaling``); None: uint8 is
      scaled by 1/255 and floats must already lie in [0, 1].

  Returns:
    ``(context, batched)``: ``batched`` is False for a single sequence (then ``N = 1``).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"context file {path} does not exist; pass --input=<file>.npy, a "
                            "video, a GIF or a folder of frames.")
  if _is_frames(path):
    if data_cfg is None:
      raise ValueError(f"context {path}: reading a video or frame folder needs config.data.")
    arr = _read_frames(path, channels, data_cfg, scaling)
    batched = False
  else:
    arr, batched = _layout(_read_array(path, data_cfg), channels, path)
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f"context {path} has shape {arr.shape}: no sequences or no frames.")
  if arr.shape[2] % size_multiple or arr.shape[3] % size_multiple:
    raise ValueError(f"context frames are {arr.shape[2]}x{arr.shape[3]}; this model needs sides "
                     f"that are multiples of {size_multiple}.")
  if _is_frames(path):
    return arr, batched
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f"context {path} has dtype {arr.dtype}; use uint8 or float numbers.")
  arr = np.asarray(arr)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"context {path} holds NaN or Inf; replace them (e.g. np.nan_to_num).")
  if scaling is not None:
    return scaling.to_unit(arr), batched
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0, batched
  arr = arr.astype(np.float32)
  if arr.min() < 0.0 or arr.max() > 1.0:
    raise ValueError(f"context {path} has values outside [0, 1] (min {arr.min()}, max "
                     f"{arr.max()}); scale it to [0, 1] or save it as uint8.")
  return arr, batched


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
    np.save(output_path, values)
    _, png, gif = output_paths(output_path)
    rows = np.concatenate([context, pred], axis=1)[:MAX_PICTURE_ROWS]
    visualize.save_sequences(rows, png, gif, context_len=context.shape[1])
  return values
