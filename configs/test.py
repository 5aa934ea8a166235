"""Tiny configuration for tests: synthetic moving shapes, 16x16, 2 -> 2."""

import pathlib
import sys

import ml_collections

# The data-set configs build on configs/default.py; make it importable from any cwd.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import default  # noqa: E402
from msrnn_jax import data  # noqa: E402


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  del variant
  config = default.get_config()
  config.data.update(data.dataset_preset("synthetic", like="mmnist"))
  config.data.image_size = 16
  config.data.in_len, config.data.out_len = 2, 2
  config.data.synthetic_num_train = 32
  config.data.synthetic_num_test = 10
  config.model.name = "ms_convlstm"
  config.model.hidden = 4
  config.model.num_layers = 3
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.log_every_steps = 2
  config.train.eval_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.train.eval_examples = 8
  config.eval.batch_size = 4
  config.eval.num_visualize = 2
  return config
