"""KTH: PNG folders and .avi videos, person split, per-class strides, lists, bad inputs."""

import numpy as np
import pytest
from data_fixtures import data_config, write_avi, write_png_frames

import msrnn_jax.data as data_lib
from msrnn_jax.data import kth


def _video(person: int, num_frames: int, h: int = 12, w: int = 16) -> np.ndarray:
  """Frame i of person p is constant 10 * p + i (recognisable after resizing)."""
  values = (10 * person + np.arange(num_frames)) % 256
  return np.broadcast_to(values[:, None, None], (num_frames, h, w)).astype(np.uint8).copy()


def _write_raw(raw):
  write_png_frames(raw / "running" / "person01_running_d1", _video(1, 14))
  write_png_frames(raw / "boxing" / "person01_boxing_d1", _video(1, 14))
  write_png_frames(raw / "running" / "person17_running_d1", _video(17, 14))
  write_png_frames(raw / "boxing" / "person17_boxing_d2", _video(17, 25))
  write_avi(raw / "walking" / "person02_walking_d1_uncomp.avi", _video(2, 10))
  # Not a KTH video name: ignored.
  write_png_frames(raw / "walking" / "notes", _video(9, 2))


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("kth")
  _write_raw(tmp / "raw")
  return tmp


def _cfg(tmp, **kw):
  base = dict(image_size=8, channels=1, in_len=2, out_len=2, eval_out_len=3)
  base.update(kw)
  return data_config(tmp, "kth", **base)


def _video_of(source, builder, split, index):
  """Video name of window ``index`` from the stored video table."""
  first = source.indices(index)[0]
  for name, offset, length in builder.info.metadata["videos"][split]:
    if offset <= first < offset + length:
      return name
  raise AssertionError("window outside every video")


def test_windows_strides_and_person_split(raw_dir):
  cfg = _cfg(raw_dir)
  builder = data_lib.get_builder(cfg)
  train = data_lib.example_source(cfg, "train")
  test = data_lib.example_source(cfg, "test")
  # Train, stride 1, T=4: 14 -> 11 (boxing), 14 -> 11 (running), 10 -> 7 (walking .avi).
  assert len(train) == 11 + 11 + 7
  # Test, T=5: running stride 3 -> (14-5)//3+1 = 4; boxing stride 20 -> (25-5)//20+1 = 2.
  assert len(test) == 4 + 2
  assert data_lib.sequence_lengths(cfg, "test") == (2, 3)
  x = train[0]["frames"]
  assert x.shape == (4, 8, 8, 1) and x.dtype == np.uint8
  assert test[0]["frames"].shape == (5, 8, 8, 1)
  train_videos = {_video_of(train, builder, "train", i) for i in range(len(train))}
  test_videos = {_video_of(test, builder, "test", i) for i in range(len(test))}
  assert {int(v[6:8]) for v in train_videos} == {1, 2}
  assert {int(v[6:8]) for v in test_videos} == {17}
  # Frame keys: no test frame is a training frame; each window is consecutive frames.
  train_keys = {k for i in range(len(train)) for k in train.keys(i)}
  test_keys = {k for i in range(len(test)) for k in test.keys(i)}
  assert not train_keys & test_keys
  for i in range(len(test)):
    assert np.all(np.diff(test.keys(i)) == 1)
  # Pixel values follow the frames (constant frames stay constant when resized).
  starts = sorted(int(test[i]["frames"][0, 0, 0, 0]) for i in range(len(test)))
  assert starts == [170, 170, 173, 176, 179, 190]
  # The lossless .avi decodes to the written values.
  walking = [i for i in range(len(train)) if "walking" in _video_of(train, builder, "train", i)]
  np.testing.assert_array_equal(train[walking[0]]["frames"][:, 0, 0, 0], [20, 21, 22, 23])


def test_class_subset_and_lists(raw_dir, tmp_path):
  cfg = _cfg(raw_dir, kth_classes="run_jog_walk")
  assert len(data_lib.example_source(cfg, "train")) == 11 + 7
  lst = tmp_path / "train_list.txt"
  lst.write_text("person01_running_d1 3 8\nperson01_running_d1 10 14\n")
  cfg = _cfg(raw_dir, kth_classes="run_jog_walk", kth_train_list=str(lst))
  train = data_lib.example_source(cfg, "train")
  # Frames 3..8 -> 3 windows; 10..14 -> 2 windows; videos not listed are left out.
  assert len(train) == 5
  assert [int(train[i]["frames"][0, 0, 0, 0]) for i in range(5)] == [12, 13, 14, 19, 20]


def test_bad_inputs(tmp_path):
  cfg = _cfg(tmp_path)
  with pytest.raises(FileNotFoundError, match="csc.kth.se"):
    data_lib.get_builder(cfg)
  raw = tmp_path / "raw"
  write_png_frames(raw / "boxing" / "person01_boxing_d1", _video(1, 6))
  write_png_frames(raw / "boxing" / "person17_boxing_d1", _video(17, 6))
  (raw / "boxing" / "person01_boxing_d2").mkdir()
  with pytest.raises(ValueError, match="empty folder"):
    data_lib.get_builder(cfg)
  (raw / "boxing" / "person01_boxing_d2").rmdir()
  write_png_frames(raw / "boxing" / "person01_boxing_d3", _video(1, 6, h=10))
  with pytest.raises(ValueError, match="mixed sizes"):
    data_lib.get_builder(cfg)
  with pytest.raises(ValueError, match="set channels=1"):
    data_lib.get_builder(_cfg(tmp_path, channels=3))
  assert kth.parse_name("person05_handwaving_d4_uncomp.avi") == (5, "handwaving", 4)
  assert kth.parse_name("person05_dancing_d4") is None
