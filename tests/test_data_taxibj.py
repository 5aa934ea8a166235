"""TaxiBJ: complete days, windows, chronological/reverse order, split, train-only scaling."""

import datetime

import numpy as np
import pytest
from data_fixtures import data_config, taxibj_dates, write_taxibj

import msrnn_jax.data as data_lib
from msrnn_jax.data import taxibj

NUM_TEST = 20


def _write_raw(raw, extreme: float | None = None):
  """BJ13: 4 complete days + 1 day missing a slot; BJ14: 2 complete days.

  Flows are 0..100 with some negatives; ``extreme`` goes into the very last frame
  (a test frame).
  """
  rng = np.random.default_rng(0)
  d13 = taxibj_dates(datetime.date(2013, 7, 1), 5, drop={(4, 17)})
  d14 = taxibj_dates(datetime.date(2014, 3, 1), 2)
  x13 = rng.uniform(-5, 100, (len(d13), 2, 32, 32))
  x14 = rng.uniform(-5, 100, (len(d14), 2, 32, 32))
  x13[-1] = 5000.0  # On the incomplete day: dropped, so it must not reach the scaler.
  if extreme is not None:
    x14[-1, 0, 3, 4] = extreme
  write_taxibj(raw / "BJ13_M32x32_T30_InOut.h5", x13, d13)
  write_taxibj(raw / "BJ14_M32x32_T30_InOut.h5", x14, d14)
  return x13, x14


def _cfg(tmp_path, **kw):
  base = dict(image_size=32, channels=2, in_len=4, out_len=4, taxibj_years="13,14",
              taxibj_num_test=NUM_TEST)
  base.update(kw)
  return data_config(tmp_path, "taxibj", **base)


def _key_minutes(keys):
  keys = np.asarray(keys)
  days = np.array([f"{k // 10**8:04d}-{k // 10**6 % 100:02d}-{k // 10**4 % 100:02d}"
                   for k in keys], dtype="datetime64[D]").astype("datetime64[m]").astype(np.int64)
  return days + keys // 100 % 100 * 60 + keys % 100


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("taxibj")
  x13, x14 = _write_raw(tmp / "raw", extreme=1e4)
  cfg = _cfg(tmp)
  builder = data_lib.get_builder(cfg)
  return tmp, cfg, builder, x13, x14


def test_windows_split_and_order(prepared):
  _, cfg, builder, _, _ = prepared
  train = data_lib.example_source(cfg, "train")
  test = data_lib.example_source(cfg, "test")
  # 4 complete days (192 slots) -> 185 windows; 2 days (96) -> 89. The last 20 are test;
  # the 7 windows straddling the boundary are dropped.
  assert len(test) == NUM_TEST and len(train) == 185 + 89 - NUM_TEST - 7
  assert builder.info.metadata["dropped_days"] == 1
  train_keys = [train.keys(i) for i in range(len(train))]
  test_keys = [test.keys(i) for i in range(len(test))]
  for keys in train_keys + test_keys:
    assert np.all(np.diff(_key_minutes(keys)) == 30)  # Chronological, no gap.
  assert not set(np.concatenate(train_keys)) & set(np.concatenate(test_keys))
  # The test set is the last windows in time.
  assert _key_minutes(test_keys[0])[0] > _key_minutes(train_keys[-1])[-1]
  assert test_keys[-1][-1] == 201403022330
  # The incomplete day contributes nothing.
  assert not any(str(k).startswith("20130705") for k in np.concatenate(train_keys))
  x = train[0]["frames"]
  assert x.shape == (8, 32, 32, 2) and x.dtype == np.uint8


def test_scaler_uses_training_frames_only(prepared, tmp_path):
  _, cfg, builder, x13, _ = prepared
  meta = builder.info.metadata
  train_part = np.maximum(x13[:192], 0)  # Train windows use exactly the 4 complete days ...
  # ... plus BJ14's first 62 + 7 frames.
  assert meta["scaler_min"] == 0.0
  assert taxibj.denormalize(1.0, meta) == meta["scaler_max"]
  assert meta["scaler_max"] < 101 and meta["scaler_max"] >= train_part.max()
  # Same data without the extreme test value: the scaler is unchanged.
  _write_raw(tmp_path / "raw", extreme=None)
  other = data_lib.get_builder(_cfg(tmp_path))
  assert other.info.metadata["scaler_max"] == meta["scaler_max"]
  # The extreme test value saturates at 255 instead of wrapping around.
  test = data_lib.example_source(cfg, "test")
  last = test[len(test) - 1]["frames"][-1]
  assert last[3, 4, 0] == 255
  # Values are round(255 * (x - min) / (max - min)).
  train = data_lib.example_source(cfg, "train")
  raw0 = np.maximum(x13[0].transpose(1, 2, 0), 0)
  expect = np.rint(255 * (raw0 - meta["scaler_min"]) / (meta["scaler_max"] - meta["scaler_min"]))
  np.testing.assert_array_equal(train[0]["frames"][0], expect.astype(np.uint8))


def test_reverse_time_and_inflow(prepared, tmp_path):
  tmp, _, _, _, _ = prepared
  cfg = _cfg(tmp, taxibj_reverse_time=True, taxibj_channels="inflow", channels=1)
  train = data_lib.example_source(cfg, "train")
  test = data_lib.example_source(cfg, "test")
  keys = train.keys(0)
  # Clip for anchor t = 2013-07-01 04:00 (the 9th slot) is [t-30min, ..., t-240min].
  assert list(keys) == [201307010330, 201307010300, 201307010230, 201307010200,
                        201307010130, 201307010100, 201307010030, 201307010000]
  assert train[0]["frames"].shape == (8, 32, 32, 1)
  assert len(test) == NUM_TEST and len(train) == 184 + 88 - NUM_TEST - 7
  # The last test clip ends (newest first) at the second-to-last slot.
  assert test.keys(len(test) - 1)[0] == 201403022300


def test_bad_inputs(tmp_path):
  cfg = _cfg(tmp_path, taxibj_years="13")
  with pytest.raises(FileNotFoundError, match="BJ13_M32x32_T30_InOut.h5.*DeepST"):
    data_lib.get_builder(cfg)
  raw = tmp_path / "raw"
  d = taxibj_dates(datetime.date(2013, 7, 1), 1)
  path = raw / "BJ13_M32x32_T30_InOut.h5"
  write_taxibj(path, np.ones((48, 2, 32, 32)), d, keys=("data",))
  with pytest.raises(ValueError, match="lacks the key.*date"):
    data_lib.get_builder(cfg)
  write_taxibj(path, np.ones((48, 2, 32, 32)), d)
  good = path.read_bytes()
  path.write_bytes(good[: len(good) // 3])
  with pytest.raises(ValueError, match="truncated"):
    data_lib.get_builder(cfg)
  write_taxibj(path, np.arange(48 * 2 * 32 * 32).reshape(48, 2, 32, 32), d)
  # One day holds 48 slots: a 30 + 30 window cannot fit.
  with pytest.raises(ValueError, match="window longer than the data"):
    data_lib.get_builder(_cfg(tmp_path, taxibj_years="13", in_len=30, out_len=30))
  with pytest.raises(ValueError, match="set image_size=32"):
    data_lib.get_builder(_cfg(tmp_path, image_size=64))
  with pytest.raises(ValueError, match="set channels=1"):
    data_lib.get_builder(_cfg(tmp_path, taxibj_channels="inflow"))
  write_taxibj(raw / "BJ14_M32x32_T30_InOut.h5", np.ones((48, 2, 32, 32)), d)
  with pytest.raises(ValueError, match="appears twice"):
    data_lib.get_builder(_cfg(tmp_path, taxibj_years="13,14"))
