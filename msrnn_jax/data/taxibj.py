"""TaxiBJ crowd flows (inflow/outflow on a 32x32 grid of Beijing, every 30 minutes).

Raw files: ``BJ{13,14,15,16}_M32x32_T30_InOut.h5`` with datasets ``data`` (float,
``(N, 2, 32, 32)``) and ``date`` (bytes ``YYYYMMDDSS``, slot SS = 01..48 of the day).
Incomplete days are dropped and windows never span a gap; the last ``taxibj_num_test``
windows are the test set, and training keeps only the windows that share no frame with it.
One min-max scaler fitted on the training frames maps to uint8 (:func:`denormalize` undoes
it). The steps and where they deviate from the reference: docs/data.md, "TaxiBJ".
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib

FILE_PATTERN = "BJ{yy}_M32x32_T30_InOut.h5"
SOURCE = ("the ST-ResNet authors' TaxiBJ release (github.com/lucktroy/DeepST, "
          "folder data/TaxiBJ; mirrors are linked from OpenSTL's data docs)")
SLOTS_PER_DAY = 48
SLOT_MINUTES = 30


def year_paths(data_cfg: Any) -> list[str]:
  folder = config_lib.manual_dir(data_cfg)
  years = [y.strip() for y in str(data_cfg.taxibj_years).split(",") if y.strip()]
  if not years:
    raise ValueError("taxibj_years is empty; list the years to read, e.g. '13,14,15,16'.")
  return [os.path.join(folder, FILE_PATTERN.format(yy=y)) for y in years]


def read_h5(path: str) -> tuple[np.ndarray, list[str]]:
  """Reads one year file.

  Returns:
    ``(data, dates)``: float32 ``(N, 2, 32, 32)`` and N strings ``YYYYMMDDSS``.
  """
  with common.open_h5(path, f"download it again from {SOURCE}") as f:
    missing = [k for k in ("data", "date") if k not in f]
    if missing:
      raise ValueError(f"{path} lacks the key(s) {missing} (has {sorted(f.keys())}); "
                       "expected 'data' (N,2,32,32) and 'date' (N,) as in the ST-ResNet release.")
    try:
      data = np.asarray(f["data"][()], dtype=np.float32)
      raw_dates = f["date"][()]
    except OSError as e:
      raise ValueError(f"cannot read the arrays in {path} ({e}); the file is truncated, "
                       "download it again.") from e
  if data.ndim != 4 or data.shape[1] < 2 or data.shape[0] != len(raw_dates):
    raise ValueError(f"{path}: 'data' has shape {data.shape} and 'date' {len(raw_dates)} "
                     "entries; expected data (N, 2, H, W) with one date per frame.")
  dates = [d.decode() if isinstance(d, bytes) else str(d) for d in np.ravel(raw_dates)]
  return data, dates


def slot_times(dates: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
  """Converts ``YYYYMMDDSS`` strings.

  Returns:
    ``(minutes, keys)``: int64 minutes since 1970 of each slot's start, and int64
    ``YYYYMMDDHHMM`` keys.
  """
  try:
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:8]}" for d in dates], dtype="datetime64[D]")
    slots = np.array([int(d[8:]) for d in dates], np.int64)
  except ValueError as e:
    raise ValueError(f"{where}: a 'date' entry is not YYYYMMDDSS ({e}).") from e
  if any(len(d) != 10 for d in dates) or slots.min(initial=1) < 1 or slots.max(
      initial=1) > SLOTS_PER_DAY:
    raise ValueError(f"{where}: 'date' entries must be YYYYMMDDSS with slot SS in 01..48.")
  minutes = days.astype("datetime64[m]").astype(np.int64) + (slots - 1) * SLOT_MINUTES
  hhmm = ((slots - 1) * SLOT_MINUTES // 60) * 100 + ((slots - 1) * SLOT_MINUTES) % 60
  keys = np.array([int(d[:8]) for d in dates], np.int64) * 10000 + hhmm
  return minutes, keys


def load_frames(paths: list[str], channels: str) -> dict[str, Any]:
  """Reads, cleans and sorts all year files.

  Returns:
    dict with ``frames`` float32 ``(N, 32, 32, C)`` (negatives set to 0),
    ``minutes`` and ``keys`` int64 ``(N,)`` sorted by time, and ``dropped_days``.
  """
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise common.missing_files_error("taxibj", missing, SOURCE)
  frames, minutes, keys, dropped = [], [], [], 0
  for path in paths:
    data, dates = read_h5(path)
    mins, ks = slot_times(dates, path)
    day = mins // (24 * 60)
    keep = np.zeros(len(dates), bool)
    for d in np.unique(day):
      idx = np.nonzero(day == d)[0]
      # Complete = every slot exactly once (duplicates make a day ambiguous: drop it).
      if len(idx) == SLOTS_PER_DAY and len(np.unique(mins[idx])) == SLOTS_PER_DAY:
        keep[idx] = True
      else:
        dropped += 1
    data = data[keep][:, :1] if channels == "inflow" else data[keep][:, :2]
    frames.append(np.maximum(data, 0.0).transpose(0, 2, 3, 1))
    minutes.append(mins[keep])
    keys.append(ks[keep])
  minutes_all = np.concatenate(minutes)
  order = np.argsort(minutes_all, kind="stable")
  if len(order) == 0:
    raise ValueError(f"no complete day (all 48 slots) in {paths}; check the files.")
  twice = np.nonzero(np.diff(minutes_all[order]) == 0)[0]
  if len(twice):
    key = np.concatenate(keys)[order][twice[0]]
    raise ValueError(f"the half-hour {key} appears twice across {paths}; list each year file "
                     "once in taxibj_years.")
  return dict(frames=np.concatenate(frames)[order], minutes=minutes_all[order],
              keys=np.concatenate(keys)[order], dropped_days=dropped)


def window_groups(minutes: np.ndarray, seq_len: int, reverse: bool) -> list[list[int]]:
  """All windows of ``seq_len`` consecutive slots, in time order.

  Args:
    minutes: sorted slot times, int64 ``(N,)``.
    seq_len: T.
    reverse: False: window = frames ``[s, s+1, ..., s+T-1]``. True: the reference's
      clip for anchor slot ``a`` (which must exist) = frames ``[a-1, a-2, ..., a-T]``.

  Returns:
    window groups ``[start, count, 1, step]`` in frame indices.
  """
  groups = []
  for first, length in common.runs_of_constant_spacing(minutes, SLOT_MINUTES):
    if reverse and length > seq_len:
      groups.append([first + seq_len - 1, length - seq_len, 1, -1])
    elif not reverse and length >= seq_len:
      groups.append([first, length - seq_len + 1, 1, 1])
  return groups


def split_windows(minutes: np.ndarray, train_len: int, test_len: int, reverse: bool,
                  num_test: int) -> tuple[list[list[int]], list[list[int]]]:
  """Train and test window groups (frame indices); they share no frame."""
  step = -1 if reverse else 1
  test_starts, _ = common.expand_windows(window_groups(minutes, test_len, reverse))
  if len(test_starts) <= num_test:
    raise ValueError(
        f"window longer than the data: only {len(test_starts)} windows of {test_len} "
        f"consecutive half-hours exist but taxibj_num_test={num_test} are needed for the test "
        "set plus some for training; add year files or lower taxibj_num_test.")
  test_starts = test_starts[-num_test:]
  first_test_frame = int(test_starts.min() - (test_len - 1 if reverse else 0))
  train_starts, _ = common.expand_windows(window_groups(minutes, train_len, reverse))
  last_frame = train_starts if reverse else train_starts + train_len - 1
  train_starts = train_starts[last_frame < first_test_frame]
  if len(train_starts) == 0:
    raise ValueError("no training window is left before the test windows; add year files or "
                     "lower taxibj_num_test.")
  return (common.groups_from_starts(train_starts, step),
          common.groups_from_starts(test_starts, step))


def fit_scaler(frames: np.ndarray) -> tuple[float, float]:
  """Single global (min, max) over all pixels and channels."""
  lo, hi = float(frames.min()), float(frames.max())
  if not hi > lo:
    raise ValueError("the training frames are constant; the min-max scaler is undefined.")
  return lo, hi


def quantize(frames: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Scales with the training min/max and stores as uint8 (values above max saturate)."""
  scaled = (frames - lo) / (hi - lo)
  return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def denormalize(x: Any, metadata: Any) -> Any:
  """Maps model values in [0, 1] back to flows with the stored scaler.

  Args:
    x: array in [0, 1] (any shape).
    metadata: ``builder.info.metadata`` of the TaxiBJ builder.
  """
  lo, hi = metadata["scaler_min"], metadata["scaler_max"]
  return x * (hi - lo) + lo


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  mode = data_cfg.taxibj_channels
  if mode not in ("both", "inflow"):
    raise ValueError(f"taxibj_channels={mode!r} is unknown; use 'both' or 'inflow'.")
  want = 2 if mode == "both" else 1
  if data_cfg.channels != want:
    raise ValueError(f"config.data.channels={data_cfg.channels} but taxibj_channels={mode!r} "
                     f"gives {want}; set channels={want}.")
  if data_cfg.image_size != 32:
    raise ValueError(f"config.data.image_size={data_cfg.image_size} but TaxiBJ is a 32x32 grid "
                     "that is not resized; set image_size=32.")
  paths = year_paths(data_cfg)
  params = dict(files=[os.path.basename(p) for p in paths],
                bytes=[os.path.getsize(p) if os.path.isfile(p) else -1 for p in paths],
                channels_mode=mode, image_size=32, channels=want,
                reverse=bool(data_cfg.taxibj_reverse_time),
                num_test=int(data_cfg.taxibj_num_test),
                train_len=config_lib.split_seq_len(data_cfg, "train"),
                test_len=config_lib.split_seq_len(data_cfg, "test"))
  years = "-".join(str(data_cfg.taxibj_years).replace(" ", "").split(","))
  prefix = (f"y{years}_{mode}_{'rev' if params['reverse'] else 'fwd'}"
            f"_t{params['train_len']}-{params['test_len']}_test{params['num_test']}")
  return common.make_builder_config(prefix, params)


class MsrnnTaxibj(common.MsrnnBuilder):
  """TaxiBJ frames (one record per half-hour) with train/test windows in the metadata."""

  STORAGE = common.STORAGE_FRAMES
  HOMEPAGE = "https://github.com/lucktroy/DeepST"
  DESCRIPTION = "TaxiBJ crowd inflow/outflow, 32x32, 30-minute slots, min-max scaled to uint8."

  def _split_generators(self, dl_manager):
    p = self.params
    folder = self.raw_dir
    paths = [os.path.join(folder, name) for name in p["files"]]
    raw = load_frames(paths, p["channels_mode"])
    train_groups, test_groups = split_windows(raw["minutes"], p["train_len"], p["test_len"],
                                              p["reverse"], p["num_test"])
    train_frames, train_groups = common.remap_to_split(train_groups, p["train_len"])
    test_frames, test_groups = common.remap_to_split(test_groups, p["test_len"])
    lo, hi = fit_scaler(raw["frames"][train_frames])
    meta = self.info.metadata
    meta.update(scaler_min=lo, scaler_max=hi, dropped_days=int(raw["dropped_days"]),
                channel_names=["inflow", "outflow"][:p["channels"]],
                reverse_time=p["reverse"])
    self.set_windows("train", train_groups, p["train_len"])
    self.set_windows("test", test_groups, p["test_len"])
    return {"train": self._generate(raw, train_frames, lo, hi),
            "test": self._generate(raw, test_frames, lo, hi)}

  def _generate(self, raw, frame_ids, lo, hi):
    for i, f in enumerate(frame_ids):
      yield i, {"frame": quantize(raw["frames"][f], lo, hi), "key": raw["keys"][f]}


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  return [(p, SOURCE) for p in year_paths(data_cfg)]
