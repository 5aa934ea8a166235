"""HKO-7 radar echoes (Hong Kong Observatory, 480x480 grey PNGs every 6 minutes).

Raw PNGs anywhere under ``manual_dir``, named ``YYYYMMDDHHMM.png`` or as released,
``RADYYMMDDHHMMSS.png``, with optional HKO ``.mask`` files (next to each PNG or under
``hko_mask_dir``). Days go to splits by day lists or date ranges; sequences come only from
runs of scans exactly 6 minutes apart; each scan is one record (key ``YYYYMMDDHHMM``),
resized to ``image_size`` (docs/data.md, "HKO-7"). The unit conversions of
:mod:`msrnn_jax.data.rainfall` are re-exported here.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

import numpy as np
import tqdm

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib
from msrnn_jax.data.rainfall import (  # noqa: F401  (re-exported: HKO-7 unit conversions)
    BALANCING_WEIGHTS,
    THRESHOLDS,
    ZR_A,
    ZR_B,
    dbz_to_pixel,
    dbz_to_rainfall,
    pixel_to_dbz,
    pixel_to_rainfall,
    rainfall_to_dbz,
    rainfall_to_pixel,
)

SOURCE = ("https://github.com/sxjscience/HKO-7 (fill in the HKO data request form linked "
          "there; the PNGs and masks are sent on approval)")
SCAN_MINUTES = 6
SPLITS = ("train", "validation", "test")
_PLAIN = re.compile(r"^(\d{12})\.png$")
_RAD = re.compile(r"^RAD(\d{10})\d\d\.png$")


def parse_timestamp(name: str) -> int | None:
  """File name -> ``YYYYMMDDHHMM`` int (None if the name is not a radar frame)."""
  m = _PLAIN.match(name)
  if m:
    return int(m.group(1))
  m = _RAD.match(name)
  if m:
    return int("20" + m.group(1))
  return None


def key_to_minutes(keys: np.ndarray) -> np.ndarray:
  """``YYYYMMDDHHMM`` ints -> minutes since 1970 (int64)."""
  keys = np.asarray(keys, np.int64)
  days = np.array([f"{k // 10**8:04d}-{k // 10**6 % 100:02d}-{k // 10**4 % 100:02d}"
                   for k in keys], dtype="datetime64[D]")
  return days.astype("datetime64[m]").astype(np.int64) + (keys // 100 % 100) * 60 + keys % 100


def find_frames(folder: str) -> tuple[np.ndarray, list[str]]:
  """All radar PNGs under ``folder``, sorted by time.

  Returns:
    ``(keys, paths)``: int64 ``YYYYMMDDHHMM`` ``(N,)`` and the N paths.
  """
  found: dict[int, str] = {}
  for root, _, files in os.walk(folder):
    for name in files:
      key = parse_timestamp(name)
      if key is None:
        continue
      path = os.path.join(root, name)
      if key in found:
        raise ValueError(f"two radar files for time {key}: {found[key]} and {path}; "
                         "remove one.")
      found[key] = path
  keys = np.array(sorted(found), np.int64)
  return keys, [found[int(k)] for k in keys]


def read_day_list(path: str) -> set[int]:
  """Dates (``YYYYMMDD`` ints) of a day-list text file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"day list {path} not found; fix the hko_*_days path or set it to ''.")
  days = set()
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      tokens = line.replace(",", " ").split()
      if not tokens or tokens[0].startswith("#"):
        continue
      digits = re.sub(r"\D", "", tokens[0])
      if len(digits) != 8:
        raise ValueError(f"{path}:{line_no}: {tokens[0]!r} is not a date YYYYMMDD.")
      days.add(int(digits))
  return days


def parse_range(text: str, key: str) -> tuple[int, int] | None:
  """``'YYYYMMDD-YYYYMMDD'`` -> inclusive (lo, hi); '' -> None."""
  if not text:
    return None
  m = re.fullmatch(r"\s*(\d{8})\s*-\s*(\d{8})\s*", text)
  if not m:
    raise ValueError(f"{key}={text!r} is not a range 'YYYYMMDD-YYYYMMDD'.")
  return int(m.group(1)), int(m.group(2))


def assign_days(days: np.ndarray, lists: dict[str, set[int] | None],
                ranges: dict[str, tuple[int, int] | None]) -> np.ndarray:
  """Split name per day (test first, then validation, then train; '' = unused).

  A split with a day list uses the list only; otherwise its range.
  """
  out = np.full(len(days), "", dtype=object)
  for split in ("train", "validation", "test"):  # Later assignments win: test > valid > train.
    if lists.get(split) is not None:
      member = np.isin(days, sorted(lists[split]))
    elif ranges.get(split) is not None:
      lo, hi = ranges[split]
      member = (days >= lo) & (days <= hi)
    else:
      continue
    out[member] = split
  return out


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  """Reads an HKO ``.mask`` file: zlib-compressed bool ``(H, W)``, True = valid."""
  try:
    with open(path, "rb") as f:
      raw = zlib.decompress(f.read())
  except zlib.error as e:
    raise ValueError(f"{path} is not a zlib-compressed HKO mask ({e}); get it again or set "
                     "hko_use_mask=False.") from e
  if len(raw) != shape[0] * shape[1]:
    raise ValueError(f"{path} holds {len(raw)} mask values but the image is {shape}; "
                     "the mask belongs to another image size.")
  return np.frombuffer(raw, dtype=bool).reshape(shape)


def mask_path(png: str, manual: str, mask_dir: str) -> str | None:
  """The ``.mask`` of a PNG: next to it, or at the same relative path under ``mask_dir``."""
  stem = os.path.splitext(png)[0]
  candidates = [stem + ".mask"]
  rel = os.path.relpath(stem, manual)
  parts = rel.split(os.sep)
  candidates.append(os.path.join(mask_dir, rel + ".mask"))
  if len(parts) > 1:  # radarPNG/2009/... -> <mask_dir>/2009/...
    candidates.append(os.path.join(mask_dir, *parts[1:]) + ".mask")
  return next((c for c in candidates if os.path.isfile(c)), None)


def split_windows(minutes: np.ndarray, seq_len: int, interval: int, stride: int,
                  ) -> list[list[int]]:
  """Window groups over sorted scan times, never crossing a gap in the 6-minute grid."""
  span = (seq_len - 1) * interval + 1
  groups = []
  for first, length in common.runs_of_constant_spacing(minutes, SCAN_MINUTES):
    if length >= span:
      groups.append([first, (length - span) // stride + 1, stride, interval])
  return groups


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  if data_cfg.channels != 1:
    raise ValueError(f"config.data.channels={data_cfg.channels} but HKO-7 is grayscale; "
                     "set channels=1.")
  lists = {split: common.list_file_param(key, getattr(data_cfg, key))
           for split, key in (("train", "hko_train_days"), ("validation", "hko_valid_days"),
                              ("test", "hko_test_days")) if getattr(data_cfg, key)}
  ranges = {split: parse_range(getattr(data_cfg, key), key)
            for split, key in (("train", "hko_train_range"), ("validation", "hko_valid_range"),
                               ("test", "hko_test_range"))}
  interval = int(data_cfg.hko_interval)
  train_len = config_lib.split_seq_len(data_cfg, "train")
  if interval < 1 or data_cfg.hko_stride < 0:
    raise ValueError("hko_interval must be >= 1 and hko_stride >= 0.")
  manual = config_lib.manual_dir(data_cfg)
  params = dict(image_size=int(data_cfg.image_size), channels=1, resize=data_cfg.resize_method,
                train_len=train_len, test_len=config_lib.split_seq_len(data_cfg, "test"),
                interval=interval, stride=int(data_cfg.hko_stride),
                use_mask=bool(data_cfg.hko_use_mask),
                mask_dir=data_cfg.hko_mask_dir or os.path.join(manual, "radarPNG_mask"),
                lists=lists, ranges=ranges)
  prefix = (f"s{params['image_size']}_t{train_len}-{params['test_len']}_every{interval}"
            f"_stride{params['stride']}{'_mask' if params['use_mask'] else ''}")
  return common.make_builder_config(prefix, params)


class MsrnnHko7(common.MsrnnBuilder):
  """HKO-7 radar frames (one record per scan) with windows per split in the metadata."""

  STORAGE = common.STORAGE_FRAMES
  HOMEPAGE = "https://github.com/sxjscience/HKO-7"
  DESCRIPTION = "HKO-7 radar reflectivity PNGs (pixel/255 -> dBZ = 70 p - 10), masked, resized."

  def _split_generators(self, dl_manager):
    p = self.params
    keys, paths = find_frames(self.raw_dir)
    if len(keys) == 0:
      raise common.missing_files_error(
          "hko7", [os.path.join(self.raw_dir, "radarPNG/2009/0101/RAD090101000000.png"),
                   os.path.join(self.raw_dir, "<YYYYMMDDHHMM>.png")], SOURCE)
    lists = {s: read_day_list(v[0]) for s, v in p["lists"].items()}
    ranges = {s: tuple(v) if v else None for s, v in p["ranges"].items()}
    assigned = assign_days(keys // 10000, lists, ranges)
    generators = {}
    for split in SPLITS:
      seq_len = p["train_len"] if split == "train" else p["test_len"]
      idx = np.nonzero(assigned == split)[0]
      configured = split in lists or ranges.get(split) is not None
      if split == "validation" and not configured:
        continue  # No validation days asked for; the pipeline reports this if it is read.
      stride = p["stride"] or seq_len * p["interval"]
      groups = split_windows(key_to_minutes(keys[idx]), seq_len, p["interval"], stride)
      if not groups:
        raise ValueError(
            f"window longer than the data: the {split} days ({len(idx)} scans) hold no run of "
            f"{(seq_len - 1) * p['interval'] + 1} scans 6 minutes apart; add days, check the "
            "hko_*_days/hko_*_range settings or shorten the sequences.")
      local, groups = common.remap_to_split(groups, seq_len)
      self.set_windows(split, groups, seq_len)
      generators[split] = self._generate([paths[i] for i in idx[local]], keys[idx[local]])
    return generators

  def _generate(self, paths, keys):
    p = self.params
    shape = None
    scans = zip(paths, keys, strict=True)
    for i, (path, key) in enumerate(tqdm.tqdm(scans, total=len(paths), desc="HKO-7 scans",
                                              unit="scan", leave=False)):
      img = common.read_gray_png(path)
      shape = common.check_same_size(img.shape, shape, path)
      if p["use_mask"]:
        found = mask_path(path, self.raw_dir, p["mask_dir"])
        if found:
          img = np.where(read_mask(found, img.shape), img, 0).astype(np.uint8)
      frame = common.resize_frames(img[:, :, None], p["image_size"], p["resize"])
      yield i, {"frame": frame, "key": int(key)}


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  folder = config_lib.manual_dir(data_cfg)
  return [(os.path.join(folder, "radarPNG/<YYYY>/<MMDD>/RAD<YYMMDDHHMM>00.png or "
                                "<YYYYMMDDHHMM>.png"), SOURCE),
          (os.path.join(folder, "radarPNG_mask/<YYYY>/<MMDD>/RAD<YYMMDDHHMM>00.mask "
                                "(optional)"), SOURCE)]
