"""The ``config.data`` section: every key, its default, and per-data-set presets."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from ml_collections import config_dict

DATASETS = ("mmnist", "kth", "taxibj", "hko7", "synthetic")
SYNTHETIC_STYLES = ("mmnist", "kth", "taxibj", "hko7", "blobs")

# Shape settings that make a config match each data set's reference protocol (§7 of the
# reference notes). `cfg.data.update(dataset_preset('kth'))` applies one.
_PRESETS: dict[str, dict[str, Any]] = {
    "mmnist": dict(image_size=64, channels=1, in_len=10, out_len=10, eval_out_len=None),
    "kth": dict(image_size=88, channels=1, in_len=10, out_len=10, eval_out_len=20),
    "taxibj": dict(image_size=32, channels=2, in_len=4, out_len=4, eval_out_len=None),
    "hko7": dict(image_size=88, channels=1, in_len=10, out_len=10, eval_out_len=None),
}


def default_config() -> ml_collections.ConfigDict:
  """Returns the whole ``config.data`` section with its defaults.

  The defaults describe the embedded Moving MNIST demo (no download needed).
  """
  c = ml_collections.ConfigDict()
  # Which data set: 'mmnist' | 'kth' | 'taxibj' | 'hko7' | 'synthetic'.
  c.name = "mmnist"
  # Where the prepared tfds ArrayRecord data are written (one sub-folder per builder config).
  c.data_dir = "./data/tfds"
  # Raw files placed by hand; '' means <data_dir>/downloads/manual.
  c.manual_dir = ""
  # Input and predicted frames per training example.
  c.in_len = 10
  c.out_len = 10
  # Predicted frames at evaluation (None = out_len); the paper's KTH protocol uses 20.
  c.eval_out_len = config_dict.placeholder(int)
  # Frame side in pixels (frames are square). Resized where the data set allows
  # (Moving MNIST, KTH, HKO-7); TaxiBJ must be 32.
  c.image_size = 64
  # Channels per frame; must match the data (TaxiBJ 'both' = 2, everything else 1).
  c.channels = 1
  # Resampling: 'bilinear' (2x2 taps like cv2.resize, as the reference) or 'antialias' (PIL).
  c.resize_method = "bilinear"

  # Moving MNIST. Digit source: 'auto' (MNIST idx files in manual_dir if both are there,
  # else scikit-learn's bundled 8x8 digits), 'sklearn', 'idx', or 'npy' (a fixed
  # (20, N, 64, 64) file such as the canonical mnist_test_seq.npy).
  c.mmnist_digits = "auto"
  # Sequences generated for train and test (ignored for 'npy').
  c.mmnist_num_train = 10000
  c.mmnist_num_test = 2000
  # Seed of the sequence generator (sequence i of a split depends only on this and i).
  c.mmnist_seed = 0
  # Share of the sklearn digit pool (or of the .npy sequences) used for training.
  c.mmnist_train_fraction = 0.7
  # File name of the fixed sequences in manual_dir for mmnist_digits='npy'.
  c.mmnist_npy_file = "mnist_test_seq.npy"

  # TaxiBJ. Year files BJ<yy>_M32x32_T30_InOut.h5 to read (comma-separated yy).
  c.taxibj_years = "13,14,15,16"
  # 'both' (inflow and outflow, C=2) or 'inflow' (C=1, as the reference trains).
  c.taxibj_channels = "both"
  # True reproduces the reference's clips [t-30min, t-60min, ..., t-240min] (newest first).
  c.taxibj_reverse_time = False
  # The last this-many windows form the test set (1344 = 4 weeks of half-hours).
  c.taxibj_num_test = 1344

  # KTH. 'all' six classes or 'run_jog_walk' (the reference's KTH_Only).
  c.kth_classes = "all"
  # Window strides: train; test for running/jogging; test for the other classes (paper §V-D).
  c.kth_train_stride = 1
  c.kth_test_stride_fast = 3
  c.kth_test_stride_slow = 20
  # Optional MCnet-style lists "personXX_class_dY start end" restricting windows to those
  # frame ranges (paths; '' = whole videos, persons 1-16 train and 17-25 test).
  c.kth_train_list = ""
  c.kth_test_list = ""

  # HKO-7. Day lists (text files, one YYYYMMDD per line; '' = unused) and date ranges
  # ('YYYYMMDD-YYYYMMDD'; '' = unused). A day goes to test if listed/in range there, else
  # to validation, else to train.
  c.hko_train_days = ""
  c.hko_valid_days = ""
  c.hko_test_days = ""
  c.hko_train_range = "20090101-20141231"
  c.hko_valid_range = ""
  c.hko_test_range = "20150101-20151231"
  # Radar scans (6 minutes apart) between frames of a sequence: 1 = 6 min (2022 reference),
  # 6 = 36 min (reference HEAD).
  c.hko_interval = 1
  # Scans between the starts of consecutive sequences; 0 = non-overlapping (reference).
  c.hko_stride = 0
  # Apply the HKO .mask files (zeroing invalid pixels) when they are present.
  c.hko_use_mask = True
  # Folder holding the .mask files mirroring the PNG tree; '' = next to each PNG, or
  # <manual_dir>/radarPNG_mask when that exists.
  c.hko_mask_dir = ""

  # Synthetic moving shapes (name='synthetic'); shapes come from in_len/out_len/
  # eval_out_len/image_size/channels, the style from synthetic_like:
  # 'mmnist' | 'kth' | 'taxibj' | 'hko7' | 'blobs'.
  c.synthetic_like = "mmnist"
  c.synthetic_num_train = 256
  c.synthetic_num_test = 64
  c.synthetic_seed = 0
  return c


def dataset_preset(name: str, like: str | None = None) -> dict[str, Any]:
  """Shape keys (image_size, channels, in/out lengths) of a data set's reference protocol.

  Args:
    name: a data-set name; for 'synthetic' the shapes of ``like`` are returned.
    like: the data set that synthetic data imitates.

  Returns:
    A dict to ``update`` a ``config.data`` with (includes ``name``).
  """
  if name == "synthetic":
    like = like or "mmnist"
    base = _PRESETS.get(like, _PRESETS["mmnist"])
    return dict(base, name="synthetic", synthetic_like=like)
  if name not in _PRESETS:
    raise ValueError(f"config.data.name={name!r} is unknown; use one of {DATASETS}.")
  return dict(_PRESETS[name], name=name)


def manual_dir(data_cfg: Any) -> str:
  """The raw-file folder: ``manual_dir`` or ``<data_dir>/downloads/manual``."""
  if data_cfg.manual_dir:
    return os.path.expanduser(data_cfg.manual_dir)
  return os.path.join(os.path.expanduser(data_cfg.data_dir), "downloads", "manual")


def eval_out_len(data_cfg: Any) -> int:
  return data_cfg.out_len if data_cfg.eval_out_len is None else int(data_cfg.eval_out_len)


def split_seq_len(data_cfg: Any, split: str) -> int:
  """Frames per example of a split (train: in+out; others: in+eval_out)."""
  if split == "train":
    return int(data_cfg.in_len + data_cfg.out_len)
  return int(data_cfg.in_len + eval_out_len(data_cfg))
