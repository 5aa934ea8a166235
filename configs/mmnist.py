"""Moving MNIST (64x64, 10 -> 10), the paper's Table I setting.

    python -m msrnn_jax.main --config=configs/mmnist.py --workdir=runs/mmnist
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo

``:cpu`` is the small variant for 2 CPU cores (32x32 frames, 5 -> 5, 16
channels, a few minutes); the embedded digits need no download either way.
"""

import ml_collections

from configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = "mmnist"
  # The reference protocol's shapes (msrnn_jax/data/registry.py; tests check they agree).
  config.data.image_size = 64
  config.data.channels = 1
  config.data.in_len, config.data.out_len = 10, 10
  config.data.eval_out_len = None
  config.train.epochs = 20
  if variant == "cpu":
    config.model.dtype = "auto"  # CPU-sized: the fast dtype here (configs/default.py)
    # The demo: 32x32 frames, 5 -> 5, 6 x 16 channels, 1200 steps at Adam 3e-3 (a few
    # minutes on 2 cores); future MSE 0.47x the blank frame's (experiments/README.md).
    config.data.image_size = 32
    config.data.in_len, config.data.out_len = 5, 5
    config.data.mmnist_num_train = 3000
    config.data.mmnist_num_test = 200
    config.model.hidden = 16
    config.train.batch_size = 8
    config.train.num_steps = 1200
    config.train.learning_rate = 3e-3
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 600
    config.train.eval_examples = 64
    config.train.checkpoint_every_steps = 600
    config.eval.batch_size = 8
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/mmnist.py; valid: 'cpu'.")
  return config
