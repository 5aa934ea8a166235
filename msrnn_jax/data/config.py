"""The ``config.data`` section: every key and its default, and split lengths."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from ml_collections import config_dict

SYNTHETIC_STYLES = ("mmnist", "kth", "taxibj", "hko7", "blobs")


def default_config() -> ml_collections.ConfigDict:
  """Returns the whole ``config.data`` section with its defaults.

  The defaults describe the embedded Moving MNIST demo (no download needed).
  configs/default.py writes the same section out as values, with what each
  key means (also docs/data.md); tests/test_data_pipeline.py checks that the
  two agree. A data set's reference shapes are in ``registry.DATASETS``.
  """
  c = ml_collections.ConfigDict()
  c.name = "mmnist"
  c.data_dir = "./data/tfds"
  c.manual_dir = ""
  c.in_len = 10
  c.out_len = 10
  c.eval_out_len = config_dict.placeholder(int)
  c.image_size = 64
  c.channels = 1
  c.resize_method = "bilinear"
  # Moving MNIST.
  c.mmnist_digits = "auto"
  c.mmnist_num_train = 10000
  c.mmnist_num_test = 2000
  c.mmnist_seed = 0
  c.mmnist_train_fraction = 0.7
  c.mmnist_npy_file = "mnist_test_seq.npy"
  # TaxiBJ.
  c.taxibj_years = "13,14,15,16"
  c.taxibj_channels = "both"
  c.taxibj_reverse_time = False
  c.taxibj_num_test = 1344
  # KTH.
  c.kth_classes = "all"
  c.kth_train_stride = 1
  c.kth_test_stride_fast = 3
  c.kth_test_stride_slow = 20
  c.kth_train_list = ""
  c.kth_test_list = ""
  # HKO-7.
  c.hko_train_days = ""
  c.hko_valid_days = ""
  c.hko_test_days = ""
  c.hko_train_range = "20090101-20141231"
  c.hko_valid_range = ""
  c.hko_test_range = "20150101-20151231"
  c.hko_interval = 1
  c.hko_stride = 0
  c.hko_use_mask = True
  c.hko_mask_dir = ""
  # Synthetic moving shapes.
  c.synthetic_like = "mmnist"
  c.synthetic_num_train = 256
  c.synthetic_num_test = 64
  c.synthetic_seed = 0
  # Your own sequences.
  c.sequences_key = ""
  c.sequences_channels = "auto"
  c.sequences_fit = "crop"
  c.sequences_stride = 1
  c.sequences_eval_stride = 0
  c.sequences_train = ""
  c.sequences_valid = ""
  c.sequences_test = ""
  c.sequences_valid_fraction = 0.0
  c.sequences_test_fraction = 0.2
  c.sequences_seed = 0
  return c


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
