"""Data sets of msrnn_jax: Moving MNIST, KTH, TaxiBJ, HKO-7, your own sequences, synthetic.

Each real data set is a tfds ``GeneratorBasedBuilder`` that reads raw files from
``config.data.manual_dir`` and writes ArrayRecord files under ``config.data.data_dir``
(no TensorFlow needed); batches come from grain. See docs/data.md. Imports nothing
else from msrnn_jax (``rainfall`` holds HKO-7's unit conversions).

Public API::

  default_config()                       # the config.data section
  dataset_preset(name, like=None)        # a data set's reference shapes (registry.DATASETS)
  get_builder(data_cfg)                  # prepared tfds builder
  manual_dir(data_cfg)                   # the folder of raw files
  train_dataset(data_cfg, global_batch=, seed=, process_index=, process_count=)
  eval_batches(data_cfg, split, global_batch=, process_index=, process_count=, max_examples=)
  sequence_lengths(data_cfg, split)      # (in_len, out_len)
  radar_metrics(data_cfg)                # whether evaluation adds the radar metrics
  process_rows(global_batch, process_index, process_count)  # this process's rows of a batch
  value_scaling(data_cfg)                # original values <-> [0, 1] (None: kept in [0, 1])
  check_prepared(data_cfg)               # every prepared file whole (verify.DamagedDataError)
"""

from msrnn_jax.data.config import default_config, manual_dir
from msrnn_jax.data.pipeline import (
    eval_batches,
    example_source,
    get_builder,
    num_examples,
    process_rows,
    sequence_lengths,
    steps_per_epoch,
    train_dataset,
    value_scaling,
)
from msrnn_jax.data.registry import dataset_preset, radar_metrics
from msrnn_jax.data.verify import check_prepared

__all__ = [
    "check_prepared",
    "dataset_preset",
    "default_config",
    "eval_batches",
    "example_source",
    "get_builder",
    "manual_dir",
    "num_examples",
    "process_rows",
    "radar_metrics",
    "sequence_lengths",
    "steps_per_epoch",
    "train_dataset",
    "value_scaling",
]
