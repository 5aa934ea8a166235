"""KTH actions (88x88 grayscale, 10 -> 10 in training, 10 -> 20 at test).

Raw videos go to ``data.manual_dir`` (see docs/data.md).

    python -m msrnn_jax.main --config=configs/kth.py --workdir=runs/kth
    python -m msrnn_jax.main --config=configs/kth.py:cpu --workdir=runs/kth_cpu
"""

import ml_collections

from configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = "kth"
  # The reference protocol's shapes (msrnn_jax/data/registry.py; tests check they agree).
  config.data.image_size = 88
  config.data.channels = 1
  config.data.in_len, config.data.out_len = 10, 10
  config.data.eval_out_len = 20
  config.model.name = "ms_predrnn"
  config.train.epochs = 20
  if variant == "cpu":
    config.model.dtype = "auto"  # CPU-sized: the fast dtype here (configs/default.py)
    config.data.image_size = 32
    config.data.in_len, config.data.out_len, config.data.eval_out_len = 5, 5, 10
    config.model.hidden = 16
    config.train.batch_size = 8
    config.train.num_steps = 400
    config.train.learning_rate = 1e-3
    config.train.log_every_steps = 20
    config.train.eval_every_steps = 200
    config.train.eval_examples = 64
    config.eval.batch_size = 8
    config.eval.max_examples = 256
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/kth.py; valid: 'cpu'.")
  return config
