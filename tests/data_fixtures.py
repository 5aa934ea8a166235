"""Writers of tiny raw data files in the real formats, for the data tests."""

from __future__ import annotations

import datetime
import gzip
import os
import struct
import zlib

import h5py
import numpy as np
from PIL import Image

import msrnn_jax.data as data_lib


def data_config(tmp_path, name: str, **overrides):
  """A ``config.data`` for ``name`` writing under ``tmp_path`` (raw files in tmp_path/raw)."""
  cfg = data_lib.default_config()
  cfg.name = name
  cfg.data_dir = str(tmp_path / "tfds")
  cfg.manual_dir = str(tmp_path / "raw")
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def write_idx_images(path, images: np.ndarray) -> None:
  """An MNIST idx3 file (gzip-compressed when ``path`` ends in .gz)."""
  n, rows, cols = images.shape
  blob = struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(blob)


def taxibj_dates(first_day: datetime.date, num_days: int, drop=()) -> list[bytes]:
  """``YYYYMMDDSS`` byte strings for whole days, minus the (day, slot) pairs in ``drop``."""
  out = []
  for d in range(num_days):
    day = first_day + datetime.timedelta(days=d)
    for slot in range(1, 49):
      if (d, slot) not in drop:
        out.append(f"{day:%Y%m%d}{slot:02d}".encode())
  return out


def write_taxibj(path, data: np.ndarray, dates: list[bytes], keys=("data", "date")) -> None:
  """A TaxiBJ year file: ``data`` float64 (N, 2, 32, 32), ``date`` |S10 (N,)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    if "data" in keys:
      f.create_dataset("data", data=data.astype(np.float64))
    if "date" in keys:
      f.create_dataset("date", data=np.array(dates, dtype="S10"))


def write_png_frames(folder, frames: np.ndarray) -> None:
  """Frames ``1.png, 2.png, ...`` (uint8 (T, H, W) grey)."""
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames, 1):
    Image.fromarray(frame).save(os.path.join(folder, f"{i}.png"))


def write_avi(path, frames: np.ndarray) -> None:
  """A short grey ``.avi`` (uint8 (T, H, W)) through imageio's ffmpeg plugin."""
  import imageio.v2 as imageio

  os.makedirs(os.path.dirname(path), exist_ok=True)
  rgb = np.repeat(frames[..., None], 3, axis=-1)
  # ffv1 is lossless; macro_block_size=1 keeps the odd test frame size.
  imageio.mimwrite(path, list(rgb), format="FFMPEG", fps=25, codec="ffv1",
                   macro_block_size=1, pixelformat="bgr0", ffmpeg_log_level="error")


def write_hko_mask(path, mask: np.ndarray) -> None:
  """An HKO ``.mask``: zlib-compressed raw numpy bool bytes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(zlib.compress(mask.astype(bool).tobytes()))


def hko_name(when: datetime.datetime, rad: bool = False) -> str:
  if rad:
    return f"RAD{when:%y%m%d%H%M}00.png"
  return f"{when:%Y%m%d%H%M}.png"
