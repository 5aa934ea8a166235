"""Your own sequences: arrays, HDF5 files, frame folders and videos as a data set.

Every entry of ``manual_dir`` (sorted by name, hidden ones skipped) holds sequences: a
``.npy`` / ``.npz`` / HDF5 array of one ``(T, H, W[, C])`` or many ``(N, T, H, W[, C])``
(a 4-D array is one sequence when its last axis is at most 4, a channel count), a folder of
image frames, or a video or GIF. The sections below follow the way to the stored data:
reading one entry; the frames (channels, value scaling, size); the survey of all files
(:func:`scan`: splits by file, value range, clips; every check runs on all files before
anything is written); the builder, which stores each frame once with the clips as windows.
What each setting does: docs/data.md, "Your own data".
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib

ARRAY_EXTS = (".npy", ".npz", ".h5", ".hdf5")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FITS = ("crop", "resize")
SPLITS = ("train", "validation", "test")
_LIST_KEYS = {"train": "sequences_train", "validation": "sequences_valid",
              "test": "sequences_test"}
# Luma weights of ITU-R BT.601 (what PIL's RGB -> 'L' conversion uses).
_LUMA = np.array([0.299, 0.587, 0.114])
# Record keys: (file * _KEY_BASE + sequence) * _KEY_BASE + frame (a frame's identity).
_KEY_BASE = 1 << 20
_FIX_ARRAY = "save it again with np.save / h5py"


# ----------------------------------------------------------------------------------------------
# Reading one entry.


def read_npy(path: str) -> np.ndarray:
  """A ``.npy`` array, memory-mapped; a zip (``.npz``) or text file is refused clearly."""
  try:
    with open(path, "rb") as f:
      magic = f.read(6)
  except OSError as e:
    raise ValueError(f"cannot read {path} ({e.strerror or e}); check the file.") from None
  if magic[:4] == b"PK\x03\x04":
    raise ValueError(f"{path} is a .npz archive named .npy; rename it to .npz, or save one "
                     "array with np.save.")
  if magic != b"\x93NUMPY":
    raise ValueError(f"{path} is not a NumPy .npy file (it starts with {magic!r}); save the "
                     "array with np.save.")
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"cannot read {path}: truncated or damaged .npy file ({e}); "
                     f"{_FIX_ARRAY}.") from None


def _choose_key(keys: Sequence[str], key: str, path: str) -> str:
  if key:
    if key not in keys:
      raise ValueError(f"{path} has no array {key!r} (it has {list(keys)}); set "
                       "data.sequences_key to one of them.")
    return key
  if len(keys) != 1:
    raise ValueError(f"{path} holds {len(keys)} arrays {list(keys)[:8]}; name the one to use "
                     "with data.sequences_key.")
  return keys[0]


def read_npz(path: str, key: str) -> np.ndarray:
  try:
    with np.load(path, allow_pickle=False) as npz:
      return np.asarray(npz[_choose_key(list(npz.keys()), key, path)])
  except Exception as e:  # noqa: BLE001  (zipfile, zlib and OS errors of a damaged file)
    if "sequences_key" in str(e):  # _choose_key's own message
      raise
    raise ValueError(f"cannot read {path}: truncated or damaged .npz file ({e}); "
                     f"{_FIX_ARRAY}.") from None


def read_h5(path: str, key: str) -> np.ndarray:
  import h5py  # Imported here: only HDF5 files need it.

  with common.open_h5(path, _FIX_ARRAY) as f:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    name = _choose_key(names, key, path)
    try:
      return np.asarray(f[name][()])
    except OSError as e:
      raise ValueError(f"cannot read the array {name!r} in {path}: the file is truncated or "
                       f"damaged ({e}); {_FIX_ARRAY}.") from None


def read_video(path: str) -> np.ndarray:
  """All frames of a video or GIF, uint8 ``(T, H, W, C)``."""
  import imageio.v3 as iio  # Imported here: only video input needs it.

  try:
    frames = np.asarray(iio.imread(path, index=None))
  except Exception as e:  # noqa: BLE001  (ffmpeg and pillow raise many types for a bad file)
    raise ValueError(f"cannot read the video {path}: unreadable or truncated "
                     f"({' '.join(str(e).split())[:200]}); re-encode it (e.g. ffmpeg -i "
                     "<file> out.mp4) or remove it.") from None
  if frames.ndim == 3:  # (T, H, W) grey
    frames = frames[..., None]
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f"the video {path} gave frames of shape {frames.shape}; re-encode it.")
  return frames


def read_frame_folder(path: str) -> np.ndarray:
  """The image frames of a folder, sorted by name, ``(T, H, W, C)``."""
  import imageio.v3 as iio

  names = sorted(n for n in os.listdir(path)
                 if not n.startswith(".") and n.lower().endswith(IMAGE_EXTS))
  if not names:
    raise ValueError(f"the folder {path} holds no image frames ({', '.join(IMAGE_EXTS)}); put "
                     "one sequence's frames in it or remove it.")
  frames, shape = [], None
  for name in names:
    where = os.path.join(path, name)
    try:
      frame = np.asarray(iio.imread(where))
    except Exception as e:  # noqa: BLE001  (pillow raises many types for a bad image)
      raise ValueError(f"cannot read the image {where}: unreadable or truncated "
                       f"({' '.join(str(e).split())[:200]}); replace or remove it.") from None
    frame = frame[..., None] if frame.ndim == 2 else frame
    if shape is not None and frame.shape != shape:
      raise ValueError(f"frames of mixed sizes or channels: {where} is {frame.shape} but "
                       f"{os.path.join(path, names[0])} is {shape}; make every frame the same.")
    shape = frame.shape
    frames.append(frame)
  return np.stack(frames)


def as_sequences(arr: np.ndarray, where: str) -> list[np.ndarray]:
  """Arrays of one or many sequences as a list of ``(T, H, W, C)`` arrays (views).

  A 4-D array is one ``(T, H, W, C)`` sequence when its last axis is at most 4, else
  ``(N, T, H, W)`` one-channel sequences.
  """
  if arr.ndim == 3:
    return [arr[..., None]]
  if arr.ndim == 4 and arr.shape[-1] <= 4:
    return [arr]
  if arr.ndim == 4:
    return [a[..., None] for a in arr]
  if arr.ndim == 5:
    return list(arr)
  raise ValueError(f"{where} has shape {arr.shape}; expected one sequence (T, H, W[, C]) or "
                   "many (N, T, H, W[, C]).")


def read_entry(path: str, key: str = "") -> list[np.ndarray]:
  """The sequences of one entry of ``manual_dir``: raw ``(T, H, W, C)`` arrays."""
  if os.path.isdir(path):
    return [read_frame_folder(path)]
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    arr = read_npy(path)
  elif ext == ".npz":
    arr = read_npz(path, key)
  elif ext in (".h5", ".hdf5"):
    arr = read_h5(path, key)
  elif ext in VIDEO_EXTS:
    return [read_video(path)]
  else:
    raise ValueError(f"{path} is not a supported file ({', '.join(ARRAY_EXTS + VIDEO_EXTS)}, "
                     "or a folder of images); move it out of the data folder.")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise ValueError(f"{path} holds {arr.dtype} values; save numbers (uint8 or float).")
  return as_sequences(arr, path)


# ----------------------------------------------------------------------------------------------
# Frames: channels, value scaling, size.


def select_channels(frames: np.ndarray, spec: str, channels: int, where: str) -> np.ndarray:
  """Picks ``channels`` channels of raw ``(..., C)`` frames as ``spec`` says.

  Args:
    frames: raw frames, any numeric dtype, channels last.
    spec: 'auto', 'grey' or comma-separated channel indices (module docstring).
    channels: ``config.data.channels``.
    where: the file, for messages.

  Returns:
    ``(..., channels)`` frames; uint8 stays uint8 (grey is rounded).
  """
  have = frames.shape[-1]
  spec = str(spec).strip().lower()
  if spec == "auto":
    if have == channels:
      return frames
    if channels == 1 and have in (3, 4):
      spec = "grey"
    elif channels == 3 and have == 4:
      return frames[..., :3]
    else:
      raise ValueError(f"{where} has {have} channels but data.channels={channels}; set "
                       f"data.channels={have}, or choose channels with data.sequences_channels "
                       "(e.g. '0' or 'grey').")
  if spec in ("grey", "gray"):
    if channels != 1:
      raise ValueError(f"data.sequences_channels='grey' gives 1 channel but data.channels="
                       f"{channels}; set data.channels=1.")
    if have == 1:
      return frames
    if have not in (3, 4):
      raise ValueError(f"{where} has {have} channels; 'grey' needs RGB(A) frames. Choose "
                       "channels by index with data.sequences_channels (e.g. '0').")
    grey = np.tensordot(np.asarray(frames[..., :3], np.float64), _LUMA, axes=([-1], [0]))
    grey = grey[..., None]
    if frames.dtype == np.uint8:
      return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return grey
  try:
    index = [int(i) for i in spec.split(",") if i.strip()]
  except ValueError:
    raise ValueError(f"data.sequences_channels={spec!r}: use 'auto', 'grey' or channel indices "
                     "such as '0,2'.") from None
  if len(index) != channels:
    raise ValueError(f"data.sequences_channels={spec!r} picks {len(index)} channels but "
                     f"data.channels={channels}; make them agree.")
  if any(not 0 <= i < have for i in index):
    raise ValueError(f"data.sequences_channels={spec!r}: {where} has channels 0..{have - 1}.")
  return frames[..., index]


def fit_frames(frames: np.ndarray, size: int, fit: str, method: str) -> np.ndarray:
  """Fits uint8 ``(..., H, W, C)`` frames to ``size`` x ``size``.

  'crop' keeps the central square (side ``min(H, W)``) and resizes it; 'resize'
  stretches the whole frame.
  """
  if fit not in FITS:
    raise ValueError(f"data.sequences_fit={fit!r} is unknown; use one of {FITS}.")
  h, w = frames.shape[-3:-1]
  if fit == "crop" and h != w:
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[..., top:top + side, left:left + side, :]
  return common.resize_frames(np.ascontiguousarray(frames), size, method)


def to_stored(frames: np.ndarray, scaling: common.Scaling, size: int, fit: str,
              method: str) -> np.ndarray:
  """Raw frames (channels chosen) -> stored uint8 ``(..., size, size, C)``."""
  return fit_frames(scaling.quantize(frames), size, fit, method)


# ----------------------------------------------------------------------------------------------
# The survey of all files: shapes, lengths, splits, value range, clips.


@dataclasses.dataclass(frozen=True)
class Unit:
  """One sequence: ``entry`` (a name in manual_dir) and its index there (0 for one)."""

  entry: str
  index: int
  frames: int

  @property
  def label(self) -> str:
    return self.entry if self.index < 0 else f"{self.entry}[{self.index}]"


@dataclasses.dataclass(frozen=True)
class Survey:
  """What :func:`scan` found: sequences per split, clip windows and the value scaling."""

  folder: str
  splits: dict[str, list[Unit]]
  seq_len: dict[str, int]
  stride: dict[str, int]
  scaling: common.Scaling
  frame_shape: tuple[int, int, int]
  image_size: int
  unused: list[str]

  def clips(self, split: str) -> int:
    return sum(clip_count(u.frames, self.seq_len[split], self.stride[split])
               for u in self.splits[split])

  def lines(self) -> list[str]:
    """The summary the prepare CLI prints before writing."""
    h, w, c = self.frame_shape
    out = [f"Sequences in {self.folder}: frames {h}x{w} -> {self.image_size}x{self.image_size}, "
           f"{c} channel(s)"]
    for split, units in self.splits.items():
      files = len({u.entry for u in units})
      out.append(f"  {split}: {files} file(s), {len(units)} sequence(s), "
                 f"{sum(u.frames for u in units)} frames, {self.clips(split)} clips of "
                 f"{self.seq_len[split]} frames (stride {self.stride[split]})")
    s = self.scaling
    rule = "uint8 / 255" if s.dtype == "uint8" else "min/max of the training split"
    out.append(f"  values: [{s.lo:g}, {s.hi:g}] -> [0, 1] ({rule})")
    if self.unused:
      out.append(f"  not in any split list: {', '.join(self.unused)}")
    return out


def _chunks(raw: np.ndarray, size: int = 64) -> Iterator[tuple[int, np.ndarray]]:
  """``(first frame, frames)`` pieces of a sequence, so long videos never sit in float64."""
  for t in range(0, raw.shape[0], size):
    yield t, np.asarray(raw[t:t + size])


def clip_count(frames: int, seq_len: int, stride: int) -> int:
  """Clips of ``seq_len`` frames, ``stride`` apart, in a sequence of ``frames`` frames."""
  return 0 if frames < seq_len else (frames - seq_len) // stride + 1


def list_entries(folder: str, data_dir: str = "") -> list[str]:
  """The names in ``folder`` that hold sequences (sorted; hidden ones and ``data_dir``,
  where the prepared data go, skipped)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"the data folder {folder} does not exist; put your sequences there "
                            "or set data.manual_dir (docs/data.md).")
  output = os.path.realpath(data_dir) if data_dir else ""

  def holds_output(name: str) -> bool:
    path = os.path.realpath(os.path.join(folder, name))
    return bool(output) and (output == path or output.startswith(path + os.sep))

  names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and not holds_output(n))
  if not names:
    raise ValueError(f"the data folder {folder} is empty; put .npy/.npz/.h5 arrays, videos, "
                     "GIFs or folders of frames there (docs/data.md).")
  return names


def assign_splits(entries: Sequence[str], units: Sequence[Unit], params: dict[str, Any],
                  ) -> tuple[dict[str, list[Unit]], list[str]]:
  """Puts whole files (or, for one many-sequence file, sequences) into splits.

  Returns:
    ``(splits, unused)``: split -> units in file order, and the files no list names.
  """
  lists = {split: [p.strip() for p in str(params[key]).split(",") if p.strip()]
           for split, key in _LIST_KEYS.items()}
  if any(lists.values()):
    chosen: dict[str, str] = {}
    for split in ("test", "validation", "train"):  # a file listed twice goes to test first
      for pattern in lists[split]:
        hits = [e for e in entries if fnmatch.fnmatchcase(e, pattern)]
        if not hits:
          raise ValueError(f"data.{_LIST_KEYS[split]}: {pattern!r} matches no file in the data "
                           "folder; list names as they appear there (patterns like '*.mp4').")
        for e in hits:
          chosen.setdefault(e, split)
    unused = [e for e in entries if e not in chosen]
    if not lists["train"]:  # Files no list names are the training set.
      chosen.update({e: "train" for e in unused})
      unused = []
    split_of = {u: chosen.get(u.entry) for u in units}
  else:
    # One file of many sequences: its sequences are the split unit (there is no other).
    by_sequence = len(entries) == 1
    keys = [u.label for u in units] if by_sequence else list(entries)
    order = np.random.default_rng(int(params["seed"])).permutation(len(keys))
    n = len(keys)
    n_test = _fraction_count(params["test_fraction"], n, "sequences_test_fraction")
    n_valid = _fraction_count(params["valid_fraction"], n, "sequences_valid_fraction")
    if n_test < 1 or n - n_test - n_valid < 1:
      what = "sequences in the one file" if by_sequence else "files"
      raise ValueError(f"{n} {what}: too few for a training and a test split "
                       f"(test_fraction={params['test_fraction']}, valid_fraction="
                       f"{params['valid_fraction']}); add files or adjust the fractions.")
    role = {}
    for rank, k in enumerate(order):
      role[keys[k]] = ("test" if rank < n_test else
                       "validation" if rank < n_test + n_valid else "train")
    split_of = {u: role[u.label if by_sequence else u.entry] for u in units}
    unused = []
  splits = {s: [u for u in units if split_of[u] == s] for s in SPLITS}
  for split in ("train", "test"):
    if not splits[split]:
      raise ValueError(f"the {split} split is empty; list files in data.{_LIST_KEYS[split]} "
                       "or use the fractions (docs/data.md).")
  if not splits["validation"]:
    del splits["validation"]
  return splits, unused


def _fraction_count(fraction: float, n: int, key: str) -> int:
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"data.{key}={fraction}: use a fraction in [0, 1).")
  return 0 if fraction == 0 else max(1, int(round(fraction * n)))


def scan(params: dict[str, Any], folder: str) -> Survey:
  """Reads every file once and checks everything (before anything is written).

  Raises:
    ValueError / FileNotFoundError with one line naming the file and the fix.
  """
  return _scan_cached(json.dumps(params, sort_keys=True), folder)


@functools.lru_cache(maxsize=4)
def _scan_cached(params_json: str, folder: str) -> Survey:
  params = json.loads(params_json)
  entries = [e for e, _ in params["entries"]]
  units, shape, first, all_uint8 = [], None, "", True
  stats: dict[Unit, tuple[float, float]] = {}
  for entry in entries:
    path = os.path.join(folder, entry)
    seqs = read_entry(path, params["key"])
    if not seqs:
      raise ValueError(f"{path} holds no sequence (N = 0); remove it.")
    for i, raw in enumerate(seqs):
      unit = Unit(entry, i if len(seqs) > 1 else -1, int(raw.shape[0]))
      where = f"{path}" if unit.index < 0 else f"{path} (sequence {i})"
      if shape is not None and raw.shape[1:] != shape:
        raise ValueError(f"frames of mixed sizes or channels: {where} has (H, W, C) = "
                         f"{raw.shape[1:]} but {first} has {shape}; give every file the same "
                         "frame size and channels.")
      shape, first = raw.shape[1:], first or where
      lo, hi = np.inf, -np.inf
      for t, chunk in _chunks(raw):
        frames = select_channels(chunk, params["channels_spec"], params["channels"], where)
        all_uint8 = all_uint8 and frames.dtype == np.uint8
        if frames.dtype != np.uint8 and not np.all(np.isfinite(frames)):
          bad = t + np.argwhere(~np.isfinite(frames))[0][0]
          raise ValueError(f"{where} holds NaN or Inf (first at frame {bad}); replace them "
                           "(e.g. np.nan_to_num) or remove the file.")
        lo, hi = min(lo, float(frames.min())), max(hi, float(frames.max()))
      stats[unit] = (lo, hi)
      units.append(unit)
  splits, unused = assign_splits(entries, units, params)
  seq_len = {s: params["test_len"] if s != "train" else params["train_len"] for s in splits}
  stride = {s: params["train_stride"] if s == "train" else params["eval_stride"] or seq_len[s]
            for s in splits}
  for split, members in splits.items():
    for u in members:
      if u.frames < seq_len[split]:
        raise ValueError(
            f"{os.path.join(folder, u.label)} has {u.frames} frames, fewer than one {split} clip "
            f"of {seq_len[split]} (in_len + {'out_len' if split == 'train' else 'eval_out_len'})"
            "; lower the lengths or remove the file.")
  lo = min(stats[u][0] for u in splits["train"])
  hi = max(stats[u][1] for u in splits["train"])
  if not hi > lo:
    raise ValueError(f"the training split is constant (every value is {lo:g}); scaling to [0, 1] "
                     "is undefined. Check the files (or the split lists).")
  scaling = (common.Scaling(0.0, 255.0, "uint8") if all_uint8
             else common.Scaling(lo, hi, "float32"))
  frame_shape = (int(shape[0]), int(shape[1]), int(params["channels"]))
  return Survey(folder, splits, seq_len, stride, scaling, frame_shape, int(params["image_size"]),
                unused)


# ----------------------------------------------------------------------------------------------
# Builder.


def _entry_size(path: str) -> int:
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in sorted(os.listdir(path))
               if os.path.isfile(os.path.join(path, n)))
  return os.path.getsize(path)


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  """The builder config: every setting plus the names and sizes of the raw files."""
  folder = config_lib.manual_dir(data_cfg)
  names = list_entries(folder, os.path.expanduser(data_cfg.data_dir))
  for key in ("sequences_stride", "sequences_eval_stride"):
    if data_cfg[key] < (1 if key == "sequences_stride" else 0):
      raise ValueError(f"data.{key}={data_cfg[key]} must be >= "
                       f"{1 if key == 'sequences_stride' else '0 (0 = one clip length)'}.")
  if data_cfg.sequences_fit not in FITS:
    raise ValueError(f"data.sequences_fit={data_cfg.sequences_fit!r} is unknown; use one of "
                     f"{FITS}.")
  params = dict(
      entries=[[n, _entry_size(os.path.join(folder, n))] for n in names],
      image_size=int(data_cfg.image_size), channels=int(data_cfg.channels),
      channels_spec=str(data_cfg.sequences_channels), key=str(data_cfg.sequences_key),
      fit=str(data_cfg.sequences_fit), resize=str(data_cfg.resize_method),
      train_len=config_lib.split_seq_len(data_cfg, "train"),
      test_len=config_lib.split_seq_len(data_cfg, "test"),
      train_stride=int(data_cfg.sequences_stride),
      eval_stride=int(data_cfg.sequences_eval_stride),
      sequences_train=str(data_cfg.sequences_train), sequences_valid=str(data_cfg.sequences_valid),
      sequences_test=str(data_cfg.sequences_test),
      valid_fraction=float(data_cfg.sequences_valid_fraction),
      test_fraction=float(data_cfg.sequences_test_fraction), seed=int(data_cfg.sequences_seed))
  prefix = (f"s{params['image_size']}c{params['channels']}_t{params['train_len']}-"
            f"{params['test_len']}_n{len(names)}")
  return common.make_builder_config(prefix, params)


def summarize(data_cfg: Any) -> list[str]:
  """Checks every file and describes the data (files, frames, clips, values) in lines."""
  config = builder_config(data_cfg)
  return scan(config.params, config_lib.manual_dir(data_cfg)).lines()


class MsrnnSequences(common.MsrnnBuilder):
  """The user's sequences: one record per frame, clips as windows in the metadata."""

  STORAGE = common.STORAGE_FRAMES
  DESCRIPTION = ("Sequences from the user's arrays, HDF5 files, frame folders or videos, "
                 "scaled to [0, 1] and stored as uint8.")

  def _split_generators(self, dl_manager):
    p = self.params
    survey = scan(p, self.raw_dir)
    scaling = survey.scaling
    meta = self.info.metadata
    meta.update(scaler_min=scaling.lo, scaler_max=scaling.hi, source_dtype=scaling.dtype,
                files={s: sorted({u.entry for u in us}) for s, us in survey.splits.items()})
    generators = {}
    for split, units in survey.splits.items():
      groups, start = [], 0
      for u in units:
        count = clip_count(u.frames, survey.seq_len[split], survey.stride[split])
        groups.append([start, count, survey.stride[split], 1])
        start += u.frames
      self.set_windows(split, groups, survey.seq_len[split])
      generators[split] = self._generate(units, scaling)
    return generators

  def _generate(self, units: list[Unit], scaling: common.Scaling,
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    p = self.params
    entries = [e for e, _ in p["entries"]]
    record, cache = 0, {}
    for u in units:
      if u.entry not in cache:  # Keeps one file's sequences while they are written.
        cache = {u.entry: read_entry(os.path.join(self.raw_dir, u.entry), p["key"])}
      raw = cache[u.entry][max(u.index, 0)]
      # The key names the frame: (file, sequence in the file, frame index).
      unit_id = entries.index(u.entry) * _KEY_BASE + max(u.index, 0)
      for t0, chunk in _chunks(raw):
        frames = select_channels(chunk, p["channels_spec"], p["channels"], u.entry)
        stored = to_stored(frames, scaling, p["image_size"], p["fit"], p["resize"])
        for dt, frame in enumerate(stored):
          yield record, {"frame": frame, "key": unit_id * _KEY_BASE + t0 + dt}
          record += 1


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  """No fixed file names: ``manual_dir`` holds whatever sequences the user has."""
  del data_cfg
  return []
