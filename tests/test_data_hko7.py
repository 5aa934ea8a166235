"""HKO-7: file names, day splits, gap-free windows, masks, unit re-exports, bad inputs."""

import datetime

import numpy as np
import pytest
from data_fixtures import data_config, hko_name, write_hko_mask
from PIL import Image

import msrnn_jax.data as data_lib
import msrnn_jax.data.rainfall as rainfall
from msrnn_jax.data import hko7

SIZE = 24


def _scan(when: datetime.datetime) -> np.ndarray:
  # Grey level = minutes since midnight / 6 + 50, so values identify the scan.
  level = 50 + (when.hour * 60 + when.minute) // 6
  return np.full((SIZE, SIZE), level, np.uint8)


def _write_day(raw, day: datetime.date, scans: int, skip=(), rad=False):
  for k in range(scans):
    if k in skip:
      continue
    when = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(minutes=6 * k)
    folder = raw / "radarPNG" / f"{day:%Y}" / f"{day:%m%d}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_scan(when)).save(folder / hko_name(when, rad=rad))


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("hko")
  raw = tmp / "raw"
  _write_day(raw, datetime.date(2014, 1, 1), 30, skip={12})  # Train, with a gap.
  _write_day(raw, datetime.date(2014, 1, 2), 9, rad=True)  # Validation (day list).
  _write_day(raw, datetime.date(2015, 1, 1), 10)  # Test (range).
  # Mask for 2014-01-01 00:00: left half invalid.
  mask = np.ones((SIZE, SIZE), bool)
  mask[:, : SIZE // 2] = False
  write_hko_mask(raw / "radarPNG_mask" / "2014" / "0101" / "201401010000.mask", mask)
  (tmp / "valid_days.txt").write_text("2014-01-02\n")
  return tmp


def _cfg(tmp, **kw):
  base = dict(image_size=SIZE, channels=1, in_len=2, out_len=2,
              hko_valid_days=str(tmp / "valid_days.txt"))
  base.update(kw)
  return data_config(tmp, "hko7", **base)


def _minutes(keys):
  return hko7.key_to_minutes(np.asarray(keys))


def test_splits_windows_and_masks(raw_dir):
  cfg = _cfg(raw_dir)
  train = data_lib.example_source(cfg, "train")
  valid = data_lib.example_source(cfg, "validation")
  test = data_lib.example_source(cfg, "test")
  # Train day: scans 0..11 and 13..29 (gap at 12) -> 3 + 4 non-overlapping windows of 4.
  assert len(train) == 3 + 4
  assert len(valid) == 2 and len(test) == 2
  for src in (train, valid, test):
    for i in range(len(src)):
      assert np.all(np.diff(_minutes(src.keys(i))) == 6)  # No window spans the gap.
  assert {k // 10000 for i in range(len(valid)) for k in valid.keys(i)} == {20140102}
  assert {k // 10000 for i in range(len(test)) for k in test.keys(i)} == {20150101}
  assert train.keys(3)[0] == 201401010118  # The run after the gap starts at scan 13.
  first = train[0]["frames"]
  assert first.shape == (4, SIZE, SIZE, 1) and first.dtype == np.uint8
  # The mask zeroes the left half of the first scan only.
  assert np.all(first[0, :, : SIZE // 2] == 0) and np.all(first[0, :, SIZE // 2:] == 50)
  assert np.all(first[1] == 51)


def test_resize_interval_and_units(raw_dir):
  cfg = _cfg(raw_dir, image_size=8, hko_interval=2, hko_stride=1, hko_use_mask=False)
  train = data_lib.example_source(cfg, "train")
  # Span of 4 frames 2 scans apart = 7 scans; stride 1: runs of 12 and 17 -> 6 + 11.
  assert len(train) == 6 + 11
  assert np.all(np.diff(_minutes(train.keys(0))) == 12)
  assert train[0]["frames"].shape == (4, 8, 8, 1)
  assert int(train[0]["frames"][0, 0, 0, 0]) == 50  # Unmasked this time.
  # The unit conversions are those of msrnn_jax.data.rainfall, not copies.
  assert hko7.pixel_to_dbz is rainfall.pixel_to_dbz
  assert hko7.rainfall_to_pixel is rainfall.rainfall_to_pixel
  assert hko7.dbz_to_rainfall is rainfall.dbz_to_rainfall


def test_names_and_bad_inputs(tmp_path):
  assert hko7.parse_timestamp("RAD150101123600.png") == 201501011236
  assert hko7.parse_timestamp("201501011236.png") == 201501011236
  assert hko7.parse_timestamp("201501011236.mask") is None
  cfg = _cfg(tmp_path)
  (tmp_path / "valid_days.txt").write_text("20140102\n")
  with pytest.raises(FileNotFoundError, match="HKO-7"):
    data_lib.get_builder(cfg)
  raw = tmp_path / "raw"
  _write_day(raw, datetime.date(2014, 1, 1), 3)
  with pytest.raises(ValueError, match="window longer than the data"):
    data_lib.get_builder(cfg)
  _write_day(raw, datetime.date(2014, 1, 1), 8)
  _write_day(raw, datetime.date(2014, 1, 2), 8)
  _write_day(raw, datetime.date(2015, 1, 1), 8)
  write_hko_mask(raw / "radarPNG" / "2014" / "0101" / "201401010006.mask",
                 np.ones((5, 5), bool))
  with pytest.raises(ValueError, match="mask"):
    data_lib.get_builder(cfg)
  (raw / "radarPNG" / "2014" / "0101" / "201401010006.mask").unlink()
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(
      raw / "radarPNG" / "2014" / "0101" / "201401010012.png")
  with pytest.raises(ValueError, match="mixed sizes"):
    data_lib.get_builder(cfg)
  (raw / "radarPNG" / "2014" / "0101" / "201401010012.png").unlink()
  with pytest.raises(ValueError, match="YYYYMMDD-YYYYMMDD"):
    data_lib.get_builder(_cfg(tmp_path, hko_test_range="2015"))
  no_valid = _cfg(tmp_path, hko_valid_days="")
  with pytest.raises(ValueError, match="no validation days"):
    data_lib.example_source(no_valid, "validation")
