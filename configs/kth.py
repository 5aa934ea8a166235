"""KTH actions (88x88 grayscale, 10 -> 10 in training, 10 -> 20 at test).

Raw videos go to ``data.manual_dir`` (see docs/data.md).

    python -m msrnn_jax.main --config=configs/kth.py --workdir=runs/kth
    python -m msrnn_jax.main --config=configs/kth.py:cpu --workdir=runs/kth_cpu
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
  config.data.update(data.dataset_preset("kth"))
  config.model.name = "ms_predrnn"
  config.train.epochs = 20
  if variant == "cpu":
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
