"""Config, synthetic sources, grain batching, multi-process shards, eval padding, atomicity."""

import hashlib
import importlib
import os

import numpy as np
import pytest
from data_fixtures import data_config

import msrnn_jax.data as data_lib
from msrnn_jax.data import common, mmnist, registry, synthetic


def _ids(frames: np.ndarray) -> list[str]:
  """A content hash per example of a batch (B, T, H, W, C), float in [0, 1] or uint8."""
  if frames.dtype != np.uint8:
    frames = np.rint(frames * 255.0).astype(np.uint8)
  return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in frames]


def _synthetic(tmp_path, **kw):
  base = dict(image_size=16, in_len=3, out_len=2, synthetic_num_train=10, synthetic_num_test=7)
  base.update(kw)
  return data_config(tmp_path, "synthetic", **base)


def test_default_config_and_presets():
  cfg = data_lib.default_config()
  for key in ("name", "data_dir", "manual_dir", "in_len", "out_len", "eval_out_len",
              "image_size", "channels", "mmnist_num_train", "mmnist_num_test", "mmnist_digits",
              "taxibj_reverse_time", "taxibj_channels", "kth_classes", "synthetic_like"):
    assert key in cfg
  assert cfg.eval_out_len is None and cfg.taxibj_reverse_time is False
  assert data_lib.sequence_lengths(cfg, "test") == (10, 10)
  cfg.update(data_lib.dataset_preset("kth"))
  assert data_lib.sequence_lengths(cfg, "train") == (10, 10)
  assert data_lib.sequence_lengths(cfg, "test") == (10, 20)
  assert data_lib.dataset_preset("synthetic", like="taxibj")["channels"] == 2
  cfg.lock()
  with pytest.raises(AttributeError):
    cfg.no_such_key = 1


@pytest.mark.parametrize("name", ["default", *(n for n in registry.NAMES if n != "synthetic"),
                                  "test"])
def test_config_files_agree_with_the_code(name):
  """configs/*.py are plain data: their data section repeats default_config() and each
  data set's reference shapes from the registry (one table), and must agree with both."""
  config = importlib.import_module(f"configs.{name}").get_config()
  got = config.data.to_dict()
  expected = data_lib.default_config()
  assert got.keys() == expected.to_dict().keys()
  if name == "default":
    assert got == expected.to_dict()
  elif name == "test":  # Synthetic data: the shapes of the imitated data set, smaller.
    preset = data_lib.dataset_preset("synthetic", like=got["synthetic_like"])
    for key in ("name", "synthetic_like", "channels", "eval_out_len"):
      assert got[key] == preset[key], key
  else:
    expected.update(data_lib.dataset_preset(name))
    assert got == expected.to_dict()


@pytest.mark.parametrize("style,channels", [("mmnist", 1), ("blobs", 1), ("kth", 1),
                                            ("taxibj", 2), ("hko7", 1)])
def test_synthetic_styles_are_deterministic_and_move(tmp_path, style, channels):
  cfg = _synthetic(tmp_path, synthetic_like=style, channels=channels)
  src = synthetic.SyntheticSource(cfg, "train")
  a, b = src[3]["frames"], synthetic.SyntheticSource(cfg, "train")[3]["frames"]
  assert a.shape == (5, 16, 16, channels) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, src[4]["frames"])
  assert a.std() > 5  # Structure, not a blank frame.
  x = a.astype(np.float32)
  change = np.abs(np.diff(x, axis=0)).mean()
  assert change > 0  # It moves ...
  # ... smoothly: consecutive frames are far closer than frames of other sequences.
  other = src[5]["frames"].astype(np.float32)
  assert change < np.abs(x - other).mean()


def test_train_batches_are_restartable_and_cover_each_epoch(tmp_path):
  cfg = _synthetic(tmp_path)
  ds = data_lib.train_dataset(cfg, global_batch=4, seed=7)
  again = data_lib.train_dataset(cfg, global_batch=4, seed=7)
  batch = ds[5]
  assert batch["frames"].shape == (4, 5, 16, 16, 1) and batch["frames"].dtype == np.float32
  assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
  np.testing.assert_array_equal(batch["frames"], again[5]["frames"])
  assert not np.array_equal(ds[5]["frames"],
                            data_lib.train_dataset(cfg, global_batch=4, seed=8)[5]["frames"])
  # 10 examples, batch 4: 2 steps per epoch (2 examples dropped), all distinct; the next
  # epoch is another permutation.
  epoch0 = _ids(ds[0]["frames"]) + _ids(ds[1]["frames"])
  epoch1 = _ids(ds[2]["frames"]) + _ids(ds[3]["frames"])
  assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8 and epoch0 != epoch1
  all_ids = set(_ids(np.stack([synthetic.SyntheticSource(cfg, "train")[i]["frames"]
                               for i in range(10)])))
  assert set(epoch0) <= all_ids
  assert data_lib.steps_per_epoch(cfg, 4) == 2


def test_process_shards_are_disjoint_and_form_the_global_batch(tmp_path):
  cfg = _synthetic(tmp_path, synthetic_num_train=13)
  whole = data_lib.train_dataset(cfg, global_batch=6, seed=3)
  shards = [data_lib.train_dataset(cfg, global_batch=6, seed=3, process_index=p,
                                   process_count=3) for p in range(3)]
  for step in (0, 1, 2, 9):
    parts = [_ids(s[step]["frames"]) for s in shards]
    assert all(len(p) == 2 for p in parts)
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 6  # Disjoint ...
    assert set(flat) == set(_ids(whole[step]["frames"]))  # ... and together the global batch.
  with pytest.raises(ValueError, match="divisible"):
    data_lib.train_dataset(cfg, global_batch=6, seed=3, process_count=4)
  with pytest.raises(ValueError, match="fewer than global_batch"):
    data_lib.train_dataset(cfg, global_batch=16, seed=3)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_pad_and_visit_each_example_once(tmp_path, process_count):
  cfg = _synthetic(tmp_path, eval_out_len=4)
  source = synthetic.SyntheticSource(cfg, "test")
  expected = _ids(np.stack([source[i]["frames"] for i in range(7)]))
  seen, batches = [], []
  for p in range(process_count):
    batches.append(list(data_lib.eval_batches(cfg, "test", global_batch=4, process_index=p,
                                              process_count=process_count)))
  assert all(len(b) == 2 for b in batches)  # Same number of batches on every process.
  for per_process in batches:
    for batch in per_process:
      assert batch["frames"].shape == (4 // process_count, 7, 16, 16, 1)
      assert batch["mask"].dtype == bool
      seen += [i for i, m in zip(_ids(batch["frames"]), batch["mask"], strict=True) if m]
      assert np.all(batch["frames"][~batch["mask"]] == 0)
  assert sorted(seen) == sorted(expected)  # Every example exactly once.
  masks = np.concatenate([b["mask"] for per in batches for b in per])
  assert masks.sum() == 7 and (~masks).sum() == 1
  limited = list(data_lib.eval_batches(cfg, "test", global_batch=4, max_examples=5))
  assert [int(b["mask"].sum()) for b in limited] == [4, 1]


def test_tfds_backed_batches_are_identical_across_objects(tmp_path):
  cfg = data_config(tmp_path, "mmnist", image_size=32, in_len=2, out_len=2,
                    mmnist_num_train=9, mmnist_num_test=3, mmnist_digits="sklearn")
  first = data_lib.train_dataset(cfg, global_batch=2, seed=0)
  second = data_lib.train_dataset(cfg, global_batch=2, seed=0)
  for step in (0, 3, 11):
    np.testing.assert_array_equal(first[step]["frames"], second[step]["frames"])
  assert first[0]["frames"].shape == (2, 4, 32, 32, 1)
  builder = data_lib.get_builder(cfg)
  assert set(builder.as_data_source()) == {"train", "test"}
  # The validation split of data sets without one is the test split (as the reference).
  assert data_lib.num_examples(cfg, "validation") == 3


def test_config_names_follow_settings(tmp_path):
  a = data_config(tmp_path, "mmnist", mmnist_digits="sklearn")
  b = data_config(tmp_path, "mmnist", mmnist_digits="sklearn", mmnist_num_train=5)
  c = data_config(tmp_path, "mmnist", mmnist_digits="sklearn", image_size=32)
  names = {mmnist.builder_config(x).name for x in (a, b, c)}
  assert len(names) == 3
  assert mmnist.builder_config(a).name == mmnist.builder_config(
      data_config(tmp_path, "mmnist", mmnist_digits="sklearn")).name


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
  cfg = _synthetic(tmp_path)
  original = synthetic.SyntheticSource.__getitem__

  def failing(self, index):
    if self.split == "test" and index == 3:
      raise RuntimeError("disk on fire")
    return original(self, index)

  monkeypatch.setattr(synthetic.SyntheticSource, "__getitem__", failing)
  with pytest.raises(RuntimeError, match="disk on fire"):
    data_lib.get_builder(cfg)
  root = tmp_path / "tfds" / "msrnn_synthetic"
  leftovers = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
  assert leftovers == []  # Neither a finished-looking version folder nor temp files.
  assert not any("1.0.0" in d for d, _, _ in os.walk(root))
  monkeypatch.setattr(synthetic.SyntheticSource, "__getitem__", original)
  builder = data_lib.get_builder(cfg)
  assert builder.info.splits["test"].num_examples == 7
  np.testing.assert_array_equal(builder.as_data_source()["train"][2]["frames"],
                                synthetic.SyntheticSource(cfg, "train")[2]["frames"])


def test_resize_matches_bilinear_half_pixel_rule():
  x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
  # Halving with 2x2 taps at half-pixel centres averages each 2x2 block.
  out = common.resize_frames(x, 2, "bilinear")[0, :, :, 0]
  np.testing.assert_array_equal(out, [[25, 45], [105, 125]])
  assert common.resize_frames(x, 8, "antialias").shape == (1, 8, 8, 1)
  with pytest.raises(ValueError, match="resize_method"):
    common.resize_frames(x, 2, "cubic")


def test_window_helpers():
  groups = [[10, 3, 2, 1], [40, 2, 1, -1]]
  starts, steps = common.expand_windows(groups)
  idx = starts[:, None] + steps[:, None] * np.arange(3)[None, :]
  np.testing.assert_array_equal(idx, [[10, 11, 12], [12, 13, 14], [14, 15, 16],
                                      [40, 39, 38], [41, 40, 39]])
  frames, new = common.remap_to_split(groups, 3)
  np.testing.assert_array_equal(frames, list(range(10, 17)) + list(range(38, 42)))
  assert new == [[0, 3, 2, 1], [9, 2, 1, -1]]
  assert common.groups_from_starts(np.array([1, 2, 3, 7, 8]), 1) == [[1, 3, 1, 1], [7, 2, 1, 1]]
  assert common.runs_of_constant_spacing(np.array([0, 30, 60, 120, 150]), 30) == [(0, 3), (3, 2)]


def test_prepare_cli_helpers(tmp_path, capsys):
  from msrnn_jax.data import prepare

  def data_config(name, **values):
    cfg = data_lib.default_config()
    cfg.update(data_lib.dataset_preset(name, like=values.get("synthetic_like")))
    cfg.update(values, data_dir=str(tmp_path / "tfds"))
    return cfg

  cfg = data_config("synthetic", synthetic_like="taxibj", synthetic_num_train=8,
                    synthetic_num_test=3)
  assert (cfg.image_size, cfg.channels, cfg.in_len, cfg.synthetic_num_train) == (32, 2, 4, 8)
  builder = prepare.prepare(cfg)
  assert builder.info.splits["train"].num_examples == 8
  taxi = data_config("taxibj", manual_dir=str(tmp_path / "raw"))
  prepare.print_sources(taxi)
  out = capsys.readouterr().out
  assert "[missing]" in out and "BJ16_M32x32_T30_InOut.h5" in out and "DeepST" in out


def test_prepare_cli_bad_override_is_one_line():
  """A --config.data.* key the config lacks: one ``error:`` line, exit 2, no traceback."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "msrnn_jax.data.prepare", "--config=configs/test.py",
                         "--config.data.nope=1"], cwd=repo, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: a --config.* override names no key")


def test_preparations_of_the_same_data_take_turns(tmp_path, monkeypatch):
  """Two callers that find the data missing at the same moment: one prepares, the other waits
  on the lock and then uses the result (without it, both generated a copy and one failed
  to rename its copy into place)."""
  import threading
  import time

  from msrnn_jax.data import pipeline

  cfg = _synthetic(tmp_path)
  real, started = pipeline.make_builder, []

  def slow_builder(data_cfg):
    builder = real(data_cfg)
    prepare = builder.download_and_prepare

    def slow_prepare(**kwargs):
      started.append(time.monotonic())
      time.sleep(1.0)  # the other caller checks for the data meanwhile
      prepare(**kwargs)
    builder.download_and_prepare = slow_prepare
    return builder

  monkeypatch.setattr(pipeline, "make_builder", slow_builder)
  counts, errors = [], []

  def get():
    try:
      counts.append(pipeline.get_builder(cfg).info.splits["train"].num_examples)
    except Exception as e:  # reported by the assertion below
      errors.append(repr(e))

  threads = [threading.Thread(target=get) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and counts == [10, 10] and len(started) == 1


def test_evaluation_specifics_come_from_the_registry(monkeypatch):
  """Radar metrics and a validation split of its own are HKO-7's entry's fields; synthetic
  data take the radar metrics of the data set they imitate; a new entry needs no code."""
  from msrnn_jax.data import pipeline

  cfg = data_lib.default_config()
  expect = {"mmnist": False, "kth": False, "taxibj": False, "hko7": True}
  for name, radar in expect.items():
    cfg.name = name
    assert data_lib.radar_metrics(cfg) == radar
    assert (pipeline.resolve_split(cfg, "validation") == "validation") == radar
  cfg.name = "synthetic"
  for like in ("hko7", "mmnist", "blobs"):
    cfg.synthetic_like = like
    assert data_lib.radar_metrics(cfg) == (like == "hko7")
    assert pipeline.resolve_split(cfg, "validation") == "test"
  monkeypatch.setitem(registry.DATASETS, "radar2", registry.DataSet(
      mmnist, mmnist.MsrnnMovingMnist, None, radar=True, validation=True))
  cfg.name = "radar2"
  assert data_lib.radar_metrics(cfg) and pipeline.resolve_split(cfg, "val") == "validation"
