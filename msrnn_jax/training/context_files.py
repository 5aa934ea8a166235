"""Reading the context frames a prediction starts from (``--mode=predict --input``).

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

Values are returned as float32 in [0, 1]: through the data's scaling where the data set was
scaled (``data.value_scaling``), else uint8 scaled by 1/255 or floats already in [0, 1].
"""

import os
from typing import Any

import numpy as np

from msrnn_jax.data import common, sequences

SHAPES = "(T, H, W), (T, H, W, C), (N, T, H, W) or (N, T, H, W, C)"


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
