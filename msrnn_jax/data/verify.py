"""Checks that prepared ArrayRecord files are whole, before a run reads them.

A truncated file or flipped bytes surface in the middle of training as a
Riegeli error that names neither the file nor the fix. ``check_prepared``
opens every file of a prepared data set and compares its record count with
the one tfds recorded; when the data set is small enough to read in a few
seconds (``FULL_READ_BYTES``), it also reads every record, which verifies
Riegeli's per-block hashes and so finds flipped bytes too.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from array_record.python import array_record_module

from msrnn_jax.data import pipeline

# Data sets up to this size are read in full before every run.
FULL_READ_BYTES = 1 << 30


class DamagedDataError(ValueError):
  """A prepared data file that cannot be read; the message is one line with the fix."""


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else type(error).__name__


def check_file(path: str, num_records: int, full: bool) -> None:
  """Raises ``DamagedDataError`` if ``path`` does not hold ``num_records`` readable records."""
  reader = None
  try:
    reader = array_record_module.ArrayRecordReader(path)
    found = reader.num_records() if reader.ok() else 0
    if found != num_records:
      raise ValueError(f"{found} records where {num_records} were written")
    if full:
      reader.read_all()
  except Exception as e:  # the reader raises RuntimeError, ValueError or OSError
    raise DamagedDataError(
        f"prepared data file {path} is damaged ({_first_line(e)}); rebuild the data set: "
        "python -m msrnn_jax.data.prepare with the same --config and overrides, plus "
        "--overwrite.") from None
  finally:
    if reader is not None:
      with contextlib.suppress(Exception):  # a damaged reader raises its error again
        reader.close()


def check_prepared(data_cfg: Any) -> None:
  """Checks every ArrayRecord file of ``data_cfg``'s prepared data set (nothing if synthetic
  or not prepared yet).

  Raises:
    DamagedDataError: a file is truncated, missing records or (read in full) corrupt.
  """
  if data_cfg.name == "synthetic":
    return
  builder = pipeline.make_builder(data_cfg)
  if not builder.data_path.exists():
    return
  files = []
  for split in builder.info.splits.values():
    files += [(str(p), n) for p, n in zip(split.filepaths, split.shard_lengths, strict=True)]
  total = sum(os.path.getsize(p) for p, _ in files if os.path.exists(p))
  for path, num_records in files:
    check_file(path, num_records, full=total <= FULL_READ_BYTES)
