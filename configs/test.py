"""Tiny configuration for tests: synthetic moving shapes, 16x16, 2 -> 2."""

import ml_collections

from configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  del variant
  config = default.get_config()
  # Synthetic data in the style of Moving MNIST: mmnist's channels and eval_out_len
  # (msrnn_jax/data/registry.py; tests check they agree), smaller frames and sequences.
  config.data.name = "synthetic"
  config.data.synthetic_like = "mmnist"
  config.data.image_size = 16
  config.data.channels = 1
  config.data.in_len, config.data.out_len = 2, 2
  config.data.eval_out_len = None
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
