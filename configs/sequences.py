"""Your own sequences (arrays, HDF5, frame folders, videos in data.manual_dir), 64x64, 10 -> 10.

    python -m msrnn_jax.data.prepare --config=configs/sequences.py:cpu \\
        --config.data.manual_dir=~/my_videos
    python -m msrnn_jax.main --config=configs/sequences.py:cpu --workdir=runs/mine \\
        --config.data.manual_dir=~/my_videos

``:cpu`` is the small variant for 2 CPU cores (32x32 frames, 5 -> 5, 6 x 16 channels,
300 steps). The data keys (formats, channels, crop, strides, splits) are in
configs/default.py and docs/data.md.
"""

import ml_collections

from configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = "sequences"
  # The shapes of the registry entry (msrnn_jax/data/registry.py; tests check they agree).
  config.data.image_size = 64
  config.data.channels = 1
  config.data.in_len, config.data.out_len = 10, 10
  config.data.eval_out_len = None
  config.train.epochs = 20
  if variant == "cpu":
    config.model.dtype = "auto"  # CPU-sized: the fast dtype here (configs/default.py)
    config.data.image_size = 32
    config.data.in_len, config.data.out_len = 5, 5
    config.model.hidden = 16
    config.train.batch_size = 8
    config.train.num_steps = 300
    config.train.learning_rate = 3e-3
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 150
    config.train.eval_examples = 64
    config.train.checkpoint_every_steps = 150
    config.eval.batch_size = 8
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/sequences.py; valid: 'cpu'.")
  return config
