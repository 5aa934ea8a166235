"""Moving MNIST: trajectory, rendering, digit sources, fixed .npy sequences."""

import gzip

import numpy as np
import pytest
from data_fixtures import data_config, write_idx_images

import msrnn_jax.data as data_lib
from msrnn_jax.data import mmnist


def test_bounce_trajectory_hand_checked():
  # 30 -> 34 -> 38 crosses the top (36): mirrored to 72 - 38 = 34, velocity -4.
  np.testing.assert_allclose(mmnist.bounce_trajectory(30.0, 4.0, 6, 36.0),
                             [30, 34, 34, 30, 26, 22])
  # 3 -> -2 crosses 0: mirrored to 2, velocity +5.
  np.testing.assert_allclose(mmnist.bounce_trajectory(3.0, -5.0, 4, 36.0), [3, 2, 7, 12])
  # Both axes at once, each reflecting on its own border.
  np.testing.assert_allclose(mmnist.bounce_trajectory([1.0, 35.0], [-3.0, 2.0], 4, 36.0),
                             [[1, 35], [2, 35], [5, 33], [8, 31]])


def test_trajectory_stays_inside_even_when_fast():
  rng = np.random.default_rng(0)
  for _ in range(50):
    path = mmnist.bounce_trajectory(rng.uniform(0, 36, 2), rng.uniform(-50, 50, 2), 30, 36.0)
    assert path.min() >= 0 and path.max() <= 36


def test_digits_stay_inside_canvas_and_sequences_are_deterministic():
  pool = mmnist.sklearn_digits()
  assert pool.shape == (1797, 28, 28) and pool.dtype == np.uint8 and pool.max() > 200
  for i in range(5):
    rng = np.random.default_rng(i)
    seq = mmnist.render_sequence(rng, pool, 20, 64, num_digits=1)
    # A single digit never overlaps itself, so every frame holds the whole digit:
    # nothing was cut off at the border.
    digit_sum = seq[0].astype(np.int64).sum()
    assert np.all(seq.reshape(20, -1).astype(np.int64).sum(1) == digit_sum)
  a = mmnist.generate_sequence(pool, 3, "train", 7, 20, 64)
  b = mmnist.generate_sequence(pool, 3, "train", 7, 20, 64)
  c = mmnist.generate_sequence(pool, 4, "train", 7, 20, 64)
  assert a.shape == (20, 64, 64, 1) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # The digits move: consecutive frames differ.
  assert np.abs(np.diff(a.astype(np.int16), axis=0)).sum(axis=(1, 2, 3)).min() > 0


def test_idx_reader(tmp_path):
  imgs = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
  write_idx_images(tmp_path / "a-images-idx3-ubyte.gz", imgs)
  np.testing.assert_array_equal(mmnist.read_idx_images(str(tmp_path / "a-images-idx3-ubyte.gz")),
                                imgs)
  raw = gzip.open(tmp_path / "a-images-idx3-ubyte.gz").read()
  (tmp_path / "short").write_bytes(raw[:-10])
  with pytest.raises(ValueError, match="truncated"):
    mmnist.read_idx_images(str(tmp_path / "short"))
  (tmp_path / "labels").write_bytes(b"\x00\x00\x08\x01" + raw[4:])
  with pytest.raises(ValueError, match="magic"):
    mmnist.read_idx_images(str(tmp_path / "labels"))


def test_idx_builder_uses_disjoint_digit_pools(tmp_path):
  # Train digits are squares of 60, test digits squares of 150: any mixing would
  # show up as a foreign grey level.
  square = np.zeros((28, 28), np.uint8)
  square[6:22, 6:22] = 1
  write_idx_images(tmp_path / "raw" / "train-images-idx3-ubyte.gz", np.stack([square * 60] * 5))
  write_idx_images(tmp_path / "raw" / "t10k-images-idx3-ubyte.gz", np.stack([square * 150] * 4))
  cfg = data_config(tmp_path, "mmnist", in_len=2, out_len=3, mmnist_num_train=6,
                    mmnist_num_test=3)
  assert mmnist.resolve_digit_source(cfg) == "idx"
  train = data_lib.example_source(cfg, "train")
  test = data_lib.example_source(cfg, "test")
  assert len(train) == 6 and len(test) == 3
  train_frames = np.stack([train[i]["frames"] for i in range(6)])
  test_frames = np.stack([test[i]["frames"] for i in range(3)])
  assert train_frames.shape == (6, 5, 64, 64, 1) and train_frames.dtype == np.uint8
  assert set(np.unique(train_frames)) <= {0, 60, 120}
  assert set(np.unique(test_frames)) <= {0, 150, 255} and 150 in set(np.unique(test_frames))


def test_small_canvas_and_missing_idx(tmp_path):
  cfg = data_config(tmp_path, "mmnist", image_size=32, in_len=2, out_len=2,
                    mmnist_num_train=4, mmnist_num_test=2, mmnist_digits="sklearn")
  src = data_lib.example_source(cfg, "test")
  assert src[0]["frames"].shape == (4, 32, 32, 1)
  cfg.mmnist_digits = "idx"
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data_lib.get_builder(cfg)


def test_npy_sequences_split_70_30(tmp_path):
  # Sequence i is constant i + 1, so the split is visible in the pixel values.
  seqs = np.broadcast_to(np.arange(1, 11, dtype=np.uint8)[None, :, None, None],
                         (20, 10, 64, 64)).copy()
  (tmp_path / "raw").mkdir()
  np.save(tmp_path / "raw" / "mnist_test_seq.npy", seqs)
  cfg = data_config(tmp_path, "mmnist", mmnist_digits="npy", image_size=32)
  train = data_lib.example_source(cfg, "train")
  test = data_lib.example_source(cfg, "test")
  assert len(train) == 7 and len(test) == 3
  assert [int(test[i]["frames"][0, 0, 0, 0]) for i in range(3)] == [8, 9, 10]
  assert train[0]["frames"].shape == (20, 32, 32, 1)
  cfg.out_len = 11
  with pytest.raises(ValueError, match="window longer than the data"):
    data_lib.get_builder(cfg)
  cfg.out_len = 10
  np.save(tmp_path / "raw" / "mnist_test_seq.npy", seqs[:, :, :, :32].astype(np.float32))
  cfg.image_size = 64
  with pytest.raises(ValueError, match="expected uint8"):
    data_lib.get_builder(cfg)
