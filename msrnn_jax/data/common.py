"""Shared pieces of the data-set builders: configs, storage layouts, windows, resizing.

Two storage layouts (docs/data.md, "Storage"): ``sequences``, one ArrayRecord record per
example (feature ``frames`` ``(T, H, W, C)`` uint8), where examples share no frames; and
``frames``, one record per video frame (features ``frame`` ``(H, W, C)`` uint8 and ``key``,
an int64 frame identity), where windows overlap and storing each would multiply the disk
size by the window length. Its examples are windows listed in the builder metadata as
groups: ``[start, count, stride, step]`` stands for ``count`` windows; window ``k`` reads
the records ``start + k * stride + j * step`` for ``j = 0 .. T-1`` (``step = -1`` gives
time-reversed clips).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

VERSION = tfds.core.Version("1.0.0")
STORAGE_SEQUENCES = "sequences"
STORAGE_FRAMES = "frames"
RESIZE_METHODS = ("bilinear", "antialias")


@dataclasses.dataclass(eq=False)
class MsrnnBuilderConfig(tfds.core.BuilderConfig):
  """A builder config whose name is derived from every setting that changes the stored data.

  Attributes:
    params: the settings (JSON-serialisable); part of the name through a hash,
      so two different settings never share a directory in ``data_dir``.
  """

  params: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


class _QuietCustomConfig(logging.Filter):
  """Drops tfds' "Using custom data configuration" warning for msrnn_jax configs.

  Every config here is custom by design (named from its settings), so the warning,
  logged on every builder construction, carries no information.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not (msg.startswith("Using custom data configuration")
                and "MsrnnBuilderConfig" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietCustomConfig())


def make_builder_config(prefix: str, params: dict[str, Any]) -> MsrnnBuilderConfig:
  """Returns a config named ``<prefix>_<hash of params>``.

  The readable prefix shows the main settings; the hash covers all of them
  (including e.g. the contents of day-list files) so that nothing collides.
  """
  blob = json.dumps(params, sort_keys=True, default=str).encode()
  digest = hashlib.sha1(blob).hexdigest()[:10]
  name = f"{prefix}_{digest}".replace("/", "-")
  return MsrnnBuilderConfig(name=name, version=VERSION, params=dict(params),
                            description=json.dumps(params, sort_keys=True, default=str))


class MsrnnBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class of the msrnn_jax builders (ArrayRecord output, raw files in a manual dir).

  Subclasses set ``STORAGE``, ``HOMEPAGE`` and ``DESCRIPTION`` and implement
  ``_split_generators``, which returns the split generators. The config ``params`` must
  hold ``image_size`` and ``channels``.
  """

  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "First msrnn_jax release."}
  STORAGE = STORAGE_SEQUENCES
  HOMEPAGE = ""
  DESCRIPTION = ""

  def __init__(self, *, manual_dir: str | os.PathLike | None = None, **kwargs):
    # ArrayRecord is the only format that can be read back without TensorFlow.
    kwargs.setdefault("file_format", "array_record")
    self.raw_dir = os.fspath(manual_dir) if manual_dir else ""
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # tfds looks for a checksums file next to the builder's code, which for a class
    # inside a package needs the optional `importlib_resources`; these builders
    # download nothing, so there is no code path to look in.
    return None

  @property
  def params(self) -> dict[str, Any]:
    return self.builder_config.params

  def _info(self) -> tfds.core.DatasetInfo:
    size, channels = self.params["image_size"], self.params["channels"]
    if self.STORAGE == STORAGE_FRAMES:
      features = {
          "frame": tfds.features.Tensor(shape=(size, size, channels), dtype=np.uint8,
                                        encoding="zlib"),
          "key": tfds.features.Tensor(shape=(), dtype=np.int64),
      }
    else:
      # T may differ between splits (e.g. longer test sequences), hence None.
      features = {
          "frames": tfds.features.Tensor(shape=(None, size, size, channels), dtype=np.uint8,
                                         encoding="zlib"),
      }
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
        # Record order is meaningful (frame windows, split order): never shuffle on write.
        disable_shuffling=True,
    )

  def _generate_examples(self, **kwargs):
    # Abstract in tfds; every builder here returns its generators from _split_generators.
    raise NotImplementedError

  def set_windows(self, split: str, groups: Sequence[Sequence[int]], seq_len: int) -> None:
    """Records the window groups and window length of a frame-storage split."""
    meta = self.info.metadata
    meta["windows"] = {**meta.get("windows", {}), split: [[int(v) for v in g] for g in groups]}
    meta["seq_len"] = {**meta.get("seq_len", {}), split: int(seq_len)}


# ----------------------------------------------------------------------------------------------
# Windows.


def expand_windows(groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Expands window groups into per-window first records and steps.

  Args:
    groups: ``[start, count, stride, step]`` rows.

  Returns:
    ``(starts, steps)``, two int64 arrays of shape ``(num_windows,)``.
  """
  starts, steps = [], []
  for start, count, stride, step in groups:
    starts.append(start + stride * np.arange(count, dtype=np.int64))
    steps.append(np.full(count, step, dtype=np.int64))
  if not starts:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(starts), np.concatenate(steps)


def runs_of_constant_spacing(times: np.ndarray, spacing: int) -> list[tuple[int, int]]:
  """Splits sorted times into maximal runs with exactly ``spacing`` between neighbours.

  Args:
    times: sorted int64 ``(N,)`` (e.g. minutes).
    spacing: the expected difference between consecutive entries.

  Returns:
    ``[(first, length), ...]`` index ranges covering ``times``.
  """
  if len(times) == 0:
    return []
  breaks = np.nonzero(np.diff(times) != spacing)[0] + 1
  edges = np.concatenate([[0], breaks, [len(times)]])
  return [(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def remap_to_split(groups: Sequence[Sequence[int]], seq_len: int,
                   ) -> tuple[np.ndarray, list[list[int]]]:
  """Chooses which global frames a split stores and re-indexes its windows.

  Every group's covering range ``[first frame, last frame]`` is stored whole,
  so consecutive frames stay consecutive records and the group's stride still
  holds after re-indexing.

  Args:
    groups: window groups in global frame indices.
    seq_len: window length T.

  Returns:
    ``(frames, new_groups)``: the sorted global frame indices to store in the
    split (int64 ``(M,)``), and the groups in split-record indices.
  """
  spans = []
  for start, count, stride, step in groups:
    first = start
    last = start + stride * (count - 1)
    ends = [first, first + step * (seq_len - 1), last, last + step * (seq_len - 1)]
    spans.append((min(ends), max(ends)))
  if not spans:
    return np.zeros(0, np.int64), []
  frames = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in spans]))
  position = {int(f): i for i, f in enumerate(frames)}
  new_groups = [[position[int(g[0])], int(g[1]), int(g[2]), int(g[3])] for g in groups]
  return frames, new_groups


# ----------------------------------------------------------------------------------------------
# Images.


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  # Half-pixel centres and edge clamping, as cv2.resize(INTER_LINEAR) does; the
  # reference resizes KTH and HKO-7 frames with cv2.
  pos = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  pos = np.clip(pos, 0.0, in_size - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, (pos - lo).astype(np.float32)


def resize_frames(frames: np.ndarray, size: int | tuple[int, int],
                  method: str = "bilinear") -> np.ndarray:
  """Resizes uint8 frames.

  Args:
    frames: uint8 ``(..., H, W, C)``.
    size: output side (square) or ``(h, w)``.
    method: ``'bilinear'`` (2x2 taps like cv2 INTER_LINEAR, the reference's
      choice; aliases when shrinking a lot) or ``'antialias'`` (PIL bilinear
      with a widened filter when shrinking).

  Returns:
    uint8 ``(..., h, w, C)``.
  """
  h, w = (size, size) if isinstance(size, int) else size
  if frames.shape[-3:-1] == (h, w):
    return frames
  if method == "bilinear":
    y0, y1, wy = _linear_taps(frames.shape[-3], h)
    x0, x1, wx = _linear_taps(frames.shape[-2], w)
    f = frames.astype(np.float32)
    top, bot = f[..., y0, :, :], f[..., y1, :, :]
    rows = top + (bot - top) * wy[:, None, None]
    left, right = rows[..., x0, :], rows[..., x1, :]
    out = left + (right - left) * wx[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  if method == "antialias":
    flat = frames.reshape((-1,) + frames.shape[-3:])
    out = np.empty((flat.shape[0], h, w, flat.shape[-1]), np.uint8)
    for i, frame in enumerate(flat):
      for c in range(frame.shape[-1]):
        out[i, :, :, c] = np.asarray(
            Image.fromarray(frame[:, :, c]).resize((w, h), Image.Resampling.BILINEAR))
    return out.reshape(frames.shape[:-3] + (h, w, frames.shape[-1]))
  raise ValueError(f"resize_method={method!r} is unknown; use one of {RESIZE_METHODS}.")


def open_h5(path: str, fix: str) -> Any:
  """``h5py.File(path, 'r')``; a file that is not HDF5 (or is truncated) raises a one-line
  ``ValueError`` ending in ``fix`` (what the user should do)."""
  import h5py  # Imported here: only HDF5 inputs need it.

  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"cannot read {path}: truncated or not an HDF5 file ({e}); {fix}.") from None


def read_gray_png(path: str | os.PathLike) -> np.ndarray:
  """Reads a PNG as uint8 ``(H, W)``; colour images keep channel 0 like the reference."""
  with Image.open(path) as img:
    arr = np.asarray(img)
  if arr.ndim == 3:
    arr = arr[:, :, 0]
  if arr.dtype != np.uint8:
    if arr.max(initial=0) > 255:
      raise ValueError(f"{path} is not an 8-bit image (dtype {arr.dtype}); convert it to 8-bit PNG.")
    arr = arr.astype(np.uint8)
  return arr


def check_same_size(shape: tuple[int, ...], expected: tuple[int, ...] | None, where: str,
                    ) -> tuple[int, ...]:
  """Raises a clear error when frames of one data set have mixed sizes."""
  if expected is not None and shape != expected:
    raise ValueError(
        f"frames of mixed sizes: {where} has shape {shape} but earlier frames have {expected}; "
        "re-extract the frames so that they all have the same size.")
  return shape


def list_file_param(key: str, path: str) -> list[str]:
  """``[absolute path, SHA-1 of the contents]`` of the list file a config key names, so that
  editing the list gives the data a new config name."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{key}={path!r} does not exist; fix the path or set it to ''.")
  with open(path, "rb") as f:
    return [os.path.abspath(path), hashlib.sha1(f.read()).hexdigest()]


def missing_files_error(dataset: str, expected: Sequence[str], source: str) -> FileNotFoundError:
  """One-line error listing the expected paths and where to obtain them."""
  shown = ", ".join(str(p) for p in expected[:6])
  more = f" (and {len(expected) - 6} more)" if len(expected) > 6 else ""
  return FileNotFoundError(
      f"{dataset}: missing raw files, expected {shown}{more}; obtain them from {source} "
      f"and place them there (see docs/data.md).")


def groups_from_starts(starts: np.ndarray, step: int) -> list[list[int]]:
  """Compresses sorted window starts into ``[start, count, 1, step]`` groups of stride 1."""
  starts = np.asarray(starts, np.int64)
  return [[int(starts[first]), length, 1, int(step)]
          for first, length in runs_of_constant_spacing(starts, 1)]


# ----------------------------------------------------------------------------------------------
# Value scaling.


@dataclasses.dataclass(frozen=True)
class Scaling:
  """A data set's map between its original values and the model's [0, 1].

  ``unit = (value - lo) / (hi - lo)``, stored as ``round(255 * unit)`` clipped to
  [0, 255], so values beyond ``[lo, hi]`` saturate.

  Attributes:
    lo: the value that maps to 0.
    hi: the value that maps to 1.
    dtype: the original values' type, 'uint8' (then lo, hi = 0, 255) or 'float32'.
  """

  lo: float
  hi: float
  dtype: str

  def quantize(self, values: np.ndarray) -> np.ndarray:
    """Original values -> stored uint8."""
    if self.dtype == "uint8" and values.dtype == np.uint8:
      return values
    unit = (np.asarray(values, np.float64) - self.lo) / (self.hi - self.lo)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)

  def to_unit(self, values: np.ndarray) -> np.ndarray:
    """Original values -> float32 in [0, 1] (clipped)."""
    unit = (np.asarray(values, np.float64) - self.lo) / (self.hi - self.lo)
    return np.clip(unit, 0.0, 1.0).astype(np.float32)

  def from_unit(self, unit: np.ndarray) -> np.ndarray:
    """Model values in [0, 1] -> original values (uint8 rounded, else float32)."""
    values = np.asarray(unit, np.float64) * (self.hi - self.lo) + self.lo
    if self.dtype == "uint8":
      return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(np.float32)
