"""TaxiBJ crowd flows (32x32, inflow + outflow, 4 -> 4).

The four BJ{13,14,15,16}_M32x32_T30_InOut.h5 files go to ``data.manual_dir``
(see docs/data.md). ``data.taxibj_reverse_time=True`` and
``data.taxibj_channels='inflow'`` (with ``data.channels=1``) reproduce the
reference's clips.

    python -m msrnn_jax.main --config=configs/taxibj.py --workdir=runs/taxibj
    python -m msrnn_jax.main --config=configs/taxibj.py:cpu --workdir=runs/taxibj_cpu
"""

import pathlib
import sys

import ml_collections

# The data-set configs build on configs/default.py; make it importable from any cwd.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import default  # noqa: E402
from msrnn_jax import data  # noqa: E402


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.update(data.dataset_preset("taxibj"))
  config.train.epochs = 20
  if variant == "cpu":
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
