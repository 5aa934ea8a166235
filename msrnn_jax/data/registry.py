"""The data sets: name -> builder module, tfds builder class and reference shapes.

The one table of data sets and what sets each apart: ``pipeline`` builds from
it, ``prepare`` lists raw files, training asks how to evaluate
(``radar_metrics``), and ``dataset_preset`` gives reference shapes. ``configs/<name>.py`` write the same shape
values out as plain data; tests/test_data_pipeline.py checks that they agree.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from msrnn_jax.data import common, hko7, kth, mmnist, sequences, synthetic, taxibj


@dataclasses.dataclass(frozen=True)
class DataSet:
  """One data set.

  Attributes:
    module: its module, with ``builder_config(data_cfg)`` and
      ``describe_sources(data_cfg)`` (raw files: ``[(path, where to get it)]``).
    builder: its tfds builder class.
    preset: the ``config.data`` shape keys of its reference protocol; None for
      synthetic data, which take the shapes of the data set they imitate.
    radar: evaluation adds the radar metrics (``metrics.frame_stats``).
    validation: it has its own validation split (else the test split
      validates, as in the reference).
    no_validation: with ``validation``: the error when no validation split is
      configured; '' falls back to the test split.
    imitates: the ``config.data`` key naming the data set whose shapes and
      evaluation it takes.
    in_memory: a source ``(data_cfg, split)`` of examples drawn when read,
      used instead of the tfds records; its builder takes ``data_cfg=``.
    summarize: ``summarize(data_cfg) -> lines`` that check every raw file and
      describe the data before anything is written; None when there is nothing to check.
    scaled: its values were scaled to [0, 1] with a ``common.Scaling`` kept in the
      prepared data's metadata (``scaler_min``, ``scaler_max``, ``source_dtype``);
      prediction reads and writes the original values.
  """

  module: types.ModuleType
  builder: type[common.MsrnnBuilder]
  preset: Mapping[str, Any] | None
  radar: bool = False
  validation: bool = False
  no_validation: str = ""
  imitates: str | None = None
  in_memory: Callable[[Any, str], Any] | None = None
  summarize: Callable[[Any], list[str]] | None = None
  scaled: bool = False


DATASETS: dict[str, DataSet] = {
    "mmnist": DataSet(mmnist, mmnist.MsrnnMovingMnist,
                      dict(image_size=64, channels=1, in_len=10, out_len=10, eval_out_len=None)),
    "kth": DataSet(kth, kth.MsrnnKth,
                   dict(image_size=88, channels=1, in_len=10, out_len=10, eval_out_len=20)),
    "taxibj": DataSet(taxibj, taxibj.MsrnnTaxibj,
                      dict(image_size=32, channels=2, in_len=4, out_len=4, eval_out_len=None)),
    "hko7": DataSet(hko7, hko7.MsrnnHko7,
                    dict(image_size=88, channels=1, in_len=10, out_len=10, eval_out_len=None),
                    radar=True, validation=True,
                    no_validation=("HKO-7 has no validation days configured; set hko_valid_days "
                                   "or hko_valid_range, or evaluate on 'test'.")),
    # Your own files: no reference protocol; these are the shapes of configs/sequences.py.
    "sequences": DataSet(sequences, sequences.MsrnnSequences,
                         dict(image_size=64, channels=1, in_len=10, out_len=10,
                              eval_out_len=None),
                         validation=True, summarize=sequences.summarize, scaled=True),
    "synthetic": DataSet(synthetic, synthetic.MsrnnSynthetic, None, imitates="synthetic_like",
                         in_memory=synthetic.SyntheticSource),
}
NAMES: tuple[str, ...] = tuple(DATASETS)


def get(name: str) -> DataSet:
  """The data set called ``name`` (``config.data.name``)."""
  if name not in DATASETS:
    raise ValueError(f"config.data.name={name!r} is unknown; use one of {NAMES}.")
  return DATASETS[name]


def radar_metrics(data_cfg: Any) -> bool:
  """Whether ``data_cfg``'s evaluation adds the radar metrics."""
  dataset = get(data_cfg.name)
  if dataset.imitates:
    dataset = DATASETS.get(data_cfg[dataset.imitates], dataset)
  return dataset.radar


def dataset_preset(name: str, like: str | None = None) -> dict[str, Any]:
  """Shape keys (image_size, channels, in/out lengths) of a data set's reference protocol.

  ``cfg.data.update(dataset_preset('kth'))`` applies one.

  Args:
    name: a data-set name; for 'synthetic' the shapes of ``like`` are returned.
    like: the data set that synthetic data imitate (default 'mmnist'; styles
      without a data set of their own, such as 'blobs', take mmnist's shapes).

  Returns:
    A dict to ``update`` a ``config.data`` with (includes ``name``, and
    ``synthetic_like`` for synthetic data).
  """
  dataset = get(name)
  if dataset.imitates:
    like = like or "mmnist"
    preset = DATASETS[like].preset if like in DATASETS else None
    return dict(preset or DATASETS["mmnist"].preset, name=name, **{dataset.imitates: like})
  preset = dataset.preset
  assert preset is not None, name
  return dict(preset, name=name)
