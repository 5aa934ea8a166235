r"""Prepares a data set: reads the raw files and writes the tfds ArrayRecord data.

Usage (the same config file and overrides as training, so both see the same
``config.data``; run from the repository root)::

  python -m msrnn_jax.data.prepare --config=configs/taxibj.py \
      --config.data.manual_dir=~/raw/taxibj
  python -m msrnn_jax.data.prepare --config=configs/kth.py \
      --config.data.manual_dir=~/raw/kth --config.data.kth_classes=run_jog_walk

  python -m msrnn_jax.data.prepare --config=configs/sequences.py \
      --config.data.manual_dir=~/my_videos

Missing files are listed with the place to obtain them; bad input ends in one
``error: ...`` line (exit status 2) and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from msrnn_jax.data import config as config_lib
from msrnn_jax.data import pipeline, registry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file[:variant] (configs/*.py); its data section is prepared.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete and regenerate existing data.")
flags.mark_flags_as_required(["config"])


def print_sources(cfg: Any) -> None:
  rows = registry.get(cfg.name).module.describe_sources(cfg)
  if not rows:
    return
  print(f"Raw files for {cfg.name} (manual_dir = {config_lib.manual_dir(cfg)}):")
  for path, source in rows:
    mark = "found  " if os.path.exists(path) else "missing"
    print(f"  [{mark}] {path}\n            from {source}")


def prepare(cfg: Any, overwrite: bool = False) -> Any:
  """Generates (or reuses) the data of ``cfg`` and prints a summary; returns the builder.

  A data set whose registry entry has ``summarize`` checks every raw file and prints what
  it found first, so bad input stops before anything is written.
  """
  if registry.get(cfg.name).in_memory is not None:
    print(f"{cfg.name} data are generated in memory when read; writing a tfds copy anyway.")
  builder = pipeline.make_builder(cfg)
  summarize = registry.get(cfg.name).summarize
  if summarize is not None and (overwrite or not builder.data_path.exists()):
    print("\n".join(summarize(cfg)), flush=True)
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
  cfg = _CONFIG.value.data
  print_sources(cfg)
  try:
    prepare(cfg, _OVERWRITE.value)
  except (FileNotFoundError, ValueError) as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a mistake in a flag or a ``--config.*`` override as one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    print(f"error: a --config.* override names no key of the config ({e}); the keys are in "
          "configs/default.py.", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # noqa: BLE001  (any other parse failure is the user's input)
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
