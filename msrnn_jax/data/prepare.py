r"""Prepares a data set: reads the raw files and writes the tfds ArrayRecord data.

Usage::

  python -m msrnn_jax.data.prepare --dataset=taxibj --manual_dir=~/raw/taxibj \
      --data_dir=./data/tfds
  python -m msrnn_jax.data.prepare --dataset=kth --manual_dir=~/raw/kth \
      --set=kth_classes=run_jog_walk --set=image_size=88

The shape settings of the data set's reference protocol are applied first
(``dataset_preset``), then every ``--set key=value``. Training reads the data back
with the same ``config.data``, so pass the same settings there. Missing files are
listed with the place to obtain them.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from typing import Any

from absl import app, flags

from msrnn_jax.data import config as config_lib
from msrnn_jax.data import pipeline, registry

_DATASET = flags.DEFINE_enum("dataset", "mmnist", list(registry.NAMES), "Data set to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Folder with the raw files ('' = "
                                  "<data_dir>/downloads/manual).")
_DATA_DIR = flags.DEFINE_string("data_dir", "./data/tfds", "Where the prepared data go.")
_SET = flags.DEFINE_multi_string("set", [], "Overrides of config.data keys, key=value.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete and regenerate existing data.")


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare string such as run_jog_walk.


def build_config(dataset: str, manual_dir: str, data_dir: str, overrides: list[str]) -> Any:
  """The ``config.data`` of the command line."""
  cfg = config_lib.default_config()
  like = [item.partition("=")[2] for item in overrides if item.startswith("synthetic_like=")]
  cfg.update(registry.dataset_preset(dataset, like=like[-1] if like else None))
  cfg.manual_dir = manual_dir
  cfg.data_dir = data_dir
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep or key not in cfg:
      raise app.UsageError(f"--set {item!r}: expected key=value with a config.data key.")
    setattr(cfg, key, _parse_value(value))
  return cfg


def print_sources(cfg: Any) -> None:
  rows = registry.get(cfg.name).module.describe_sources(cfg)
  if not rows:
    return
  print(f"Raw files for {cfg.name} (manual_dir = {config_lib.manual_dir(cfg)}):")
  for path, source in rows:
    mark = "found  " if os.path.exists(path) else "missing"
    print(f"  [{mark}] {path}\n            from {source}")


def prepare(cfg: Any, overwrite: bool = False) -> Any:
  """Generates (or reuses) the data of ``cfg`` and prints a summary; returns the builder."""
  if cfg.name == "synthetic":
    print("synthetic data are generated in memory when read; writing a tfds copy anyway.")
  builder = pipeline.make_builder(cfg)
  if overwrite and builder.data_path.exists():
    shutil.rmtree(os.fspath(builder.data_path))
  builder = pipeline.get_builder(cfg)
  print(f"Prepared {builder.name}/{builder.builder_config.name} in {builder.data_path}")
  for split, info in sorted(builder.info.splits.items()):
    n = pipeline.num_examples(cfg, split)
    print(f"  {split}: {n} examples ({info.num_examples} records), "
          f"(in, out) = {pipeline.sequence_lengths(cfg, split)}")
  meta = builder.info.metadata or {}
  if "scaler_min" in meta:
    print(f"  scaler: value = uint8 / 255 * ({meta['scaler_max']} - {meta['scaler_min']}) + "
          f"{meta['scaler_min']}")
  return builder


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  cfg = build_config(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _SET.value)
  print_sources(cfg)
  try:
    prepare(cfg, _OVERWRITE.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
