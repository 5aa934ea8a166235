"""From a ``config.data`` to prepared builders, random-access sources and batches.

Training batches come from a grain ``MapDataset`` that is random access by step:
``ds[step]`` is always the same batch for a given config, seed and process, so a
trainer resumes by step number alone. Each epoch is a fresh permutation of the
examples (``shuffle`` reseeds per epoch), cut to a multiple of the global batch
(``drop_remainder``), and every process takes a strided share of each global batch,
so the union over processes of their step-``s`` batches is the same set of examples
whatever the number of processes.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from msrnn_jax.data import common, registry
from msrnn_jax.data import config as config_lib

# Splits that fall back to the test split when a data set has no validation set
# (the reference validates on the test set for all but HKO-7).
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "eval": "test"}


def _check_common(data_cfg: Any) -> None:
  if data_cfg.in_len < 1 or data_cfg.out_len < 1 or config_lib.eval_out_len(data_cfg) < 1:
    raise ValueError("in_len, out_len and eval_out_len must be >= 1.")
  if data_cfg.resize_method not in common.RESIZE_METHODS:
    raise ValueError(f"resize_method={data_cfg.resize_method!r} is unknown; use one of "
                     f"{common.RESIZE_METHODS}.")


def make_builder(data_cfg: Any) -> tfds.core.DatasetBuilder:
  """The builder for a ``config.data`` without preparing it."""
  _check_common(data_cfg)
  dataset = registry.get(data_cfg.name)
  kwargs = dict(config=dataset.module.builder_config(data_cfg),
                data_dir=os.path.expanduser(data_cfg.data_dir),
                manual_dir=config_lib.manual_dir(data_cfg), file_format="array_record")
  if dataset.in_memory is not None:
    kwargs["data_cfg"] = data_cfg
  return dataset.builder(**kwargs)


def get_builder(data_cfg: Any) -> tfds.core.DatasetBuilder:
  """The tfds builder of the named data set, prepared (generated on first use).

  Generation writes into a temporary folder that tfds renames on success, so a
  failure leaves no partial data set behind. Processes that need the same data
  at once (``experiments/reproduce.py``'s workers) take turns on a lock on the
  local ``data_dir``: the first prepares the data, the others then find them
  (each generating its own copy, all but one would fail to rename theirs into
  place).
  """
  builder = make_builder(data_cfg)
  if builder.data_path.exists():
    return builder
  data_dir = os.path.expanduser(data_cfg.data_dir)
  if "://" in data_dir:  # a remote store (gs://...): no local lock to share
    return _prepare(builder, data_cfg)
  os.makedirs(data_dir, exist_ok=True)
  # The lock is data_dir itself (no lock file to leave behind), so preparations of different
  # data sets in one data_dir also take turns.
  lock = os.open(data_dir, os.O_RDONLY)
  try:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = make_builder(data_cfg)  # another process may have prepared the data meanwhile
    return builder if builder.data_path.exists() else _prepare(builder, data_cfg)
  finally:
    os.close(lock)  # releases the lock


def _prepare(builder: tfds.core.DatasetBuilder, data_cfg: Any) -> tfds.core.DatasetBuilder:
  logging.info("Preparing %s/%s in %s", builder.name, builder.builder_config.name,
               builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=config_lib.manual_dir(data_cfg)),
      file_format="array_record")
  return builder


def resolve_split(data_cfg: Any, split: str, available: Any = None) -> str:
  """Canonical split name; 'validation' means 'test' where there is no validation split.

  A data set with its own validation split (``registry.DataSet.validation``) uses it
  when ``available`` (the prepared splits) holds it; otherwise it falls back to 'test'
  or, where the registry says so, raises.
  """
  split = _SPLIT_ALIASES.get(split, split)
  if split not in ("train", "validation", "test"):
    raise ValueError(f"split {split!r} is unknown; use 'train', 'validation' or 'test'.")
  if split == "validation":
    dataset = registry.get(data_cfg.name)
    if not dataset.validation:
      return "test"
    if available is not None and "validation" not in available:
      if dataset.no_validation:
        raise ValueError(dataset.no_validation)
      return "test"
  return split


def value_scaling(data_cfg: Any) -> common.Scaling | None:
  """The map between the data's original values and [0, 1]; None for data kept in [0, 1].

  Read from the prepared data's metadata, so the data set must have been prepared.
  """
  if not registry.get(data_cfg.name).scaled:
    return None
  builder = make_builder(data_cfg)
  if not builder.data_path.exists():
    raise FileNotFoundError(
        f"the {data_cfg.name} data are not prepared in {builder.data_path}; their value range "
        "is stored there: run python -m msrnn_jax.data.prepare with the training config.")
  meta = builder.info.metadata
  return common.Scaling(float(meta["scaler_min"]), float(meta["scaler_max"]),
                        str(meta["source_dtype"]))


class SequenceSource:
  """Examples stored one per record (feature ``frames``)."""

  def __init__(self, records: Any, seq_len: int):
    self.records = records
    self.seq_len = seq_len

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    frames = self.records[int(index)]["frames"]
    if frames.shape[0] < self.seq_len:
      raise ValueError(f"stored sequences have {frames.shape[0]} frames but {self.seq_len} are "
                       "needed; the data set was built with other lengths.")
    return {"frames": frames[:self.seq_len]}

  def __repr__(self) -> str:
    return f"SequenceSource(n={len(self)}, T={self.seq_len})"


class WindowSource:
  """Examples that are windows over frame records (feature ``frame``).

  ``source[i]`` is ``dict(frames=uint8 (T, H, W, C))`` read from the records
  ``starts[i] + steps[i] * arange(T)``.
  """

  def __init__(self, records: Any, groups: list[list[int]], seq_len: int):
    self.records = records
    self.seq_len = seq_len
    self.starts, self.steps = common.expand_windows(groups)

  def __len__(self) -> int:
    return len(self.starts)

  def indices(self, index: int) -> np.ndarray:
    """Record indices of window ``index``, int64 ``(T,)``."""
    return self.starts[index] + self.steps[index] * np.arange(self.seq_len)

  def keys(self, index: int) -> np.ndarray:
    """Frame identities (``key`` feature) of window ``index``, int64 ``(T,)``."""
    return np.array([self.records[int(i)]["key"] for i in self.indices(index)])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"window {index} out of range ({len(self)} windows)")
    recs = self.records.__getitems__([int(i) for i in self.indices(index)])
    return {"frames": np.stack([r["frame"] for r in recs])}

  def __repr__(self) -> str:
    return f"WindowSource(n={len(self)}, T={self.seq_len})"


def example_source(data_cfg: Any, split: str) -> Any:
  """Random-access source of uint8 examples ``dict(frames=(T, H, W, C))`` of a split."""
  in_memory = registry.get(data_cfg.name).in_memory
  if in_memory is not None:
    _check_common(data_cfg)
    return in_memory(data_cfg, resolve_split(data_cfg, split))
  builder = get_builder(data_cfg)
  records = builder.as_data_source()
  split = resolve_split(data_cfg, split, available=records.keys())
  seq_len = config_lib.split_seq_len(data_cfg, split)
  if builder.STORAGE == common.STORAGE_FRAMES:
    meta = builder.info.metadata
    return WindowSource(records[split], meta["windows"][split], int(meta["seq_len"][split]))
  return SequenceSource(records[split], seq_len)


def sequence_lengths(data_cfg: Any, split: str) -> tuple[int, int]:
  """``(in_len, out_len)`` of a split (evaluation splits use ``eval_out_len``)."""
  split = _SPLIT_ALIASES.get(split, split)
  if split == "train":
    return int(data_cfg.in_len), int(data_cfg.out_len)
  return int(data_cfg.in_len), config_lib.eval_out_len(data_cfg)


def num_examples(data_cfg: Any, split: str) -> int:
  """Number of examples (sequences or windows) in a split."""
  return len(example_source(data_cfg, split))


def steps_per_epoch(data_cfg: Any, global_batch: int) -> int:
  """Training steps that make one pass over the training set (remainder dropped)."""
  return num_examples(data_cfg, "train") // global_batch


def _to_float(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  # A true division, so that uint8 v maps to the float32 nearest v / 255 (255 -> 1.0 exactly).
  return {"frames": batch["frames"].astype(np.float32) / np.float32(255.0)}


def _local_batch(global_batch: int, process_index: int, process_count: int) -> int:
  if global_batch < 1 or process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need global_batch >= 1 and 0 <= process_index < process_count, got "
                     f"{global_batch}, {process_index}, {process_count}.")
  if global_batch % process_count:
    raise ValueError(f"global_batch={global_batch} is not divisible by process_count="
                     f"{process_count}; choose a multiple.")
  return global_batch // process_count


def process_rows(global_batch: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Positions in the global batch of this process's rows, int32 ``(local_batch,)``.

  Process p holds the examples ``p, p + P, p + 2P, ...`` of every global batch
  (training and evaluation alike), so row j of its batch is example
  ``p + P * j`` of the step's global batch. A per-example draw indexed by this
  position (scheduled sampling) is then the same however many processes share
  the batch.
  """
  local = _local_batch(global_batch, process_index, process_count)
  return (process_index + process_count * np.arange(local)).astype(np.int32)


def train_dataset(data_cfg: Any, *, global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Infinite, random-access training batches.

  Args:
    data_cfg: the ``config.data`` section.
    global_batch: examples per step over all processes.
    seed: shuffle seed (epoch e uses a permutation seeded by ``seed + e``).
    process_index: this process.
    process_count: number of processes.

  Returns:
    ``ds`` with ``ds[step] = dict(frames=float32 (global_batch // process_count, T, H, W, C))``
    in [0, 1], T = in_len + out_len.
  """
  local = _local_batch(global_batch, process_index, process_count)
  source = example_source(data_cfg, "train")
  per_epoch = len(source) // global_batch
  if per_epoch == 0:
    raise ValueError(f"the training set has {len(source)} examples, fewer than global_batch="
                     f"{global_batch}; lower the batch size or add data.")
  ds = grain.MapDataset.source(source).shuffle(seed=int(seed) % 2**32)
  # Cut each epoch to whole global batches, then give process p the examples
  # p, p + P, p + 2P, ... of every global batch (the slices keep the epoch offset).
  ds = ds[:per_epoch * global_batch][process_index::process_count]
  ds = ds.batch(local, drop_remainder=True).repeat().map(_to_float)
  return ds


def eval_batches(data_cfg: Any, split: str, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1, max_examples: int | None = None,
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example of a split exactly once, in a fixed order.

  Global batch b holds examples ``b * global_batch ... (b + 1) * global_batch - 1``; process
  p gets the rows ``p, p + P, ...`` of it (as in training). Positions past the end are
  zero frames with ``mask`` False, so every batch (and every process) has the same shape
  and the same number of batches.

  Args:
    data_cfg: the ``config.data`` section.
    split: 'test', 'validation' (= 'test' except for HKO-7) or 'train'.
    global_batch: examples per batch over all processes.
    process_index: this process.
    process_count: number of processes.
    max_examples: evaluate only the first this-many examples.

  Yields:
    ``dict(frames=float32 (local_batch, T, H, W, C), mask=bool (local_batch,))``.
  """
  rows = process_rows(global_batch, process_index, process_count)
  source = example_source(data_cfg, split)
  total = len(source) if max_examples is None else min(len(source), int(max_examples))
  for b in range(math.ceil(total / global_batch)):
    ids = b * global_batch + rows
    mask = ids < total
    frames = [source[int(i)]["frames"] if valid else None for i, valid in zip(ids, mask, strict=True)]
    # Padding rows are zeros of an example's shape (all padding: read one for it).
    template = next((f for f in frames if f is not None), None)
    template = source[0]["frames"] if template is None else template
    frames = [np.zeros_like(template) if f is None else f for f in frames]
    yield {"frames": _to_float({"frames": np.stack(frames)})["frames"], "mask": mask}
