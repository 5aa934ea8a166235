"""TaxiBJ crowd flows (32x32, inflow + outflow, 4 -> 4).

The four BJ{13,14,15,16}_M32x32_T30_InOut.h5 files go to ``data.manual_dir``
(see docs/data.md). ``data.taxibj_reverse_time=True`` and
``data.taxibj_channels='inflow'`` (with ``data.channels=1``) reproduce the
reference's clips.

    python -m msrnn_jax.main --config=configs/taxibj.py --workdir=runs/taxibj
    python -m msrnn_jax.main --config=configs/taxibj.py:cpu --workdir=runs/taxibj_cpu
"""

import ml_collections

from configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = "taxibj"
  # The reference protocol's shapes (msrnn_jax/data/registry.py; tests check they agree).
  config.data.image_size = 32
  config.data.channels = 2
  config.data.in_len, config.data.out_len = 4, 4
  config.data.eval_out_len = None
  config.train.epochs = 20
  if variant == "cpu":
    config.model.dtype = "auto"  # CPU-sized: the fast dtype here (configs/default.py)
    config.model.hidden = 16
    config.train.batch_size = 8
    config.train.num_steps = 600
    config.train.learning_rate = 1e-3
    config.train.log_every_steps = 20
    config.train.eval_every_steps = 200
    config.train.eval_examples = 128
    config.eval.batch_size = 8
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/taxibj.py; valid: 'cpu'.")
  return config
