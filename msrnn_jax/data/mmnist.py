"""Moving MNIST: two digits bouncing on a square canvas.

Digits come from the MNIST idx files (train sequences from
``train-images-idx3-ubyte[.gz]``, test sequences from ``t10k-images-idx3-ubyte[.gz]``)
or, with no download, from scikit-learn's bundled 8x8 digits upscaled to 28x28
(first ``mmnist_train_fraction`` of them for train, the rest for test). Train and test
therefore never share a digit image. A fixed sequence file in the layout of the
canonical ``mnist_test_seq.npy`` (uint8 ``(20, N, 64, 64)``, time-major) can be
used instead; its first 70% of sequences are train and the rest test, as in the
reference.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from typing import Any

import numpy as np
from PIL import Image

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib

IDX_TRAIN = "train-images-idx3-ubyte"
IDX_TEST = "t10k-images-idx3-ubyte"
MNIST_SOURCE = ("http://yann.lecun.com/exdb/mnist/ or a mirror such as "
                "https://ossci-datasets.s3.amazonaws.com/mnist/")
NPY_SOURCE = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"
_MNIST_DIGIT = 28
_REFERENCE_CANVAS = 64
_SPLIT_CODES = {"train": 0, "test": 1}


# ----------------------------------------------------------------------------------------------
# Digits.


def sklearn_digits() -> np.ndarray:
  """scikit-learn's bundled digits as MNIST-like images.

  The 8x8 images (17 grey levels) are scaled to 0..255, upsampled bilinearly to
  20x20 and centred on a 28x28 black square, which is how MNIST digits are framed.

  Returns:
    uint8 ``(1797, 28, 28)``.
  """
  from sklearn.datasets import load_digits  # Imported lazily: sklearn import takes ~1 s.

  small = load_digits().images.astype(np.float32) * (255.0 / 16.0)
  out = np.zeros((small.shape[0], _MNIST_DIGIT, _MNIST_DIGIT), np.uint8)
  for i, img in enumerate(small):
    big = np.asarray(Image.fromarray(img, mode="F").resize((20, 20), Image.Resampling.BILINEAR))
    out[i, 4:24, 4:24] = np.clip(np.rint(big), 0, 255).astype(np.uint8)
  return out


def find_idx_file(folder: str, stem: str) -> str | None:
  """Path of ``stem`` or ``stem.gz`` in ``folder`` (also the ``stem.idx3-ubyte`` spelling)."""
  for name in (stem, stem + ".gz", stem.replace("-idx3-ubyte", ".idx3-ubyte"),
               stem.replace("-idx3-ubyte", ".idx3-ubyte") + ".gz"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def idx_paths(folder: str) -> list[str]:
  """The train and test idx files in ``folder``; a missing one raises ``FileNotFoundError``."""
  paths = [find_idx_file(folder, stem) for stem in (IDX_TRAIN, IDX_TEST)]
  if not all(paths):
    raise common.missing_files_error(
        "mmnist", [os.path.join(folder, s + "[.gz]") for s in (IDX_TRAIN, IDX_TEST)], MNIST_SOURCE)
  return paths


def read_idx_images(path: str) -> np.ndarray:
  """Reads an MNIST idx3 image file (optionally gzip-compressed).

  Args:
    path: ``*-images-idx3-ubyte`` or ``*.gz``.

  Returns:
    uint8 ``(N, rows, cols)``.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"cannot read {path} ({e}); the file is truncated or not gzip, "
                     f"download it again from {MNIST_SOURCE}.") from e
  if len(data) < 16:
    raise ValueError(f"{path} is too short for an idx header; download it again.")
  magic, n, rows, cols = struct.unpack(">IIII", data[:16])
  if magic != 2051:
    raise ValueError(f"{path} is not an idx3 image file (magic {magic}, expected 2051); "
                     "use the *-images-idx3-ubyte files, not the label files.")
  need = 16 + n * rows * cols
  if len(data) < need:
    raise ValueError(f"{path} is truncated ({len(data)} of {need} bytes); download it again.")
  return np.frombuffer(data, np.uint8, count=n * rows * cols, offset=16).reshape(n, rows, cols)


def resolve_digit_source(data_cfg: Any) -> str:
  """'auto' becomes 'idx' when both MNIST files are in manual_dir, else 'sklearn'."""
  source = data_cfg.mmnist_digits
  if source not in ("auto", "sklearn", "idx", "npy"):
    raise ValueError(f"mmnist_digits={source!r} is unknown; use 'auto', 'sklearn', 'idx' or 'npy'.")
  if source == "auto":
    folder = config_lib.manual_dir(data_cfg)
    both = find_idx_file(folder, IDX_TRAIN) and find_idx_file(folder, IDX_TEST)
    source = "idx" if both else "sklearn"
  return source


def digit_pools(source: str, folder: str, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint train and test digit images, uint8 ``(N, 28, 28)`` each."""
  if source == "sklearn":
    digits = sklearn_digits()
    cut = int(round(train_fraction * len(digits)))
    return digits[:cut], digits[cut:]
  train, test = idx_paths(folder)
  return read_idx_images(train), read_idx_images(test)


def resize_digits(digits: np.ndarray, size: int) -> np.ndarray:
  """Resizes ``(N, 28, 28)`` digits to ``(N, size, size)`` (antialiased when shrinking)."""
  if digits.shape[-1] == size:
    return digits
  return common.resize_frames(digits[..., None], size, "antialias")[..., 0]


# ----------------------------------------------------------------------------------------------
# Motion and rendering.


def bounce_trajectory(start: Any, velocity: Any, num_steps: int, limit: float) -> np.ndarray:
  """Positions of a point moving at constant speed and reflecting off ``0`` and ``limit``.

  Each step adds the velocity; a coordinate that leaves ``[0, limit]`` is mirrored
  back across the border it crossed and that velocity component changes sign, so
  the path is the exact elastic bounce.

  Args:
    start: initial position, scalar or ``(D,)``, inside ``[0, limit]``.
    velocity: displacement per step, same shape as ``start``.
    num_steps: number of positions returned (the first is ``start``).
    limit: largest allowed coordinate (canvas size minus digit size).

  Returns:
    float64 ``(num_steps, D)`` (``(num_steps,)`` for scalar input).
  """
  pos = np.array(start, dtype=np.float64)
  vel = np.array(velocity, dtype=np.float64)
  out = np.empty((num_steps,) + pos.shape)
  for t in range(num_steps):
    out[t] = pos
    pos = pos + vel
    # A loop, not one reflection, so speeds above the limit still stay inside.
    while np.any((pos < 0) | (pos > limit)):
      low, high = pos < 0, pos > limit
      pos = np.where(low, -pos, np.where(high, 2 * limit - pos, pos))
      vel = np.where(low | high, -vel, vel)
  return out


def render_sequence(rng: np.random.Generator, pool: np.ndarray, num_frames: int, canvas: int,
                    num_digits: int = 2) -> np.ndarray:
  """One Moving MNIST sequence.

  Speed is ``randint(2..6) * canvas / 64`` pixels per frame (the reference's 2..6
  on a 64 canvas), direction ``U(-pi, pi)``, start uniform in the canvas.

  Args:
    rng: the sequence's random generator.
    pool: digit images, uint8 ``(N, d, d)``.
    num_frames: T.
    canvas: canvas side S.
    num_digits: digits per sequence.

  Returns:
    uint8 ``(T, S, S)``; overlapping digits are summed and clipped to 255.
  """
  d = pool.shape[-1]
  limit = canvas - d
  frames = np.zeros((num_frames, canvas, canvas), np.int32)
  for _ in range(num_digits):
    digit = pool[rng.integers(len(pool))].astype(np.int32)
    start = rng.uniform(0, limit, size=2)
    speed = rng.integers(2, 7) * canvas / _REFERENCE_CANVAS
    theta = rng.uniform(-math.pi, math.pi)
    path = bounce_trajectory(start, speed * np.array([math.sin(theta), math.cos(theta)]),
                             num_frames, limit)
    corners = np.rint(path).astype(np.int64)
    for t, (r, c) in enumerate(corners):
      frames[t, r:r + d, c:c + d] += digit
  return np.minimum(frames, 255).astype(np.uint8)


def generate_sequence(pool: np.ndarray, seed: int, split: str, index: int, num_frames: int,
                      canvas: int) -> np.ndarray:
  """Sequence ``index`` of ``split``; depends only on ``(seed, split, index)``.

  Returns:
    uint8 ``(T, S, S, 1)``.
  """
  rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
  return render_sequence(rng, pool, num_frames, canvas)[..., None]


# ----------------------------------------------------------------------------------------------
# Fixed sequence file.


def read_npy_sequences(path: str) -> np.ndarray:
  """Memory-maps a ``(T, N, H, W)`` uint8 sequence file (the mnist_test_seq.npy layout)."""
  try:
    arr = np.load(path, mmap_mode="r")
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"cannot read {path} ({e}); download it again from {NPY_SOURCE}.") from e
  if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[2] != arr.shape[3]:
    raise ValueError(f"{path} has shape {arr.shape} and dtype {arr.dtype}; expected uint8 "
                     "(T, N, H, H) time-major like mnist_test_seq.npy (20, 10000, 64, 64).")
  return arr


# ----------------------------------------------------------------------------------------------
# Builder.


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  """The builder config of a ``config.data`` (resolves mmnist_digits='auto')."""
  if data_cfg.channels != 1:
    raise ValueError(f"config.data.channels={data_cfg.channels} but Moving MNIST is grayscale; "
                     "set channels=1.")
  source = resolve_digit_source(data_cfg)
  folder = config_lib.manual_dir(data_cfg)
  size = int(data_cfg.image_size)
  params: dict[str, Any] = dict(
      source=source, image_size=size, channels=1,
      train_len=config_lib.split_seq_len(data_cfg, "train"),
      test_len=config_lib.split_seq_len(data_cfg, "test"),
      train_fraction=float(data_cfg.mmnist_train_fraction), resize=data_cfg.resize_method)
  if source == "npy":
    path = os.path.join(folder, data_cfg.mmnist_npy_file)
    if not os.path.isfile(path):
      raise common.missing_files_error("mmnist", [path], NPY_SOURCE)
    params.update(npy_file=path, npy_bytes=os.path.getsize(path))
    prefix = f"npy_s{size}_t{params['train_len']}-{params['test_len']}"
  else:
    digit = int(round(_MNIST_DIGIT * size / _REFERENCE_CANVAS))
    if digit < 4 or digit >= size:
      raise ValueError(f"image_size={size} is too small for Moving MNIST; use at least 16.")
    params.update(digit_size=digit, num_train=int(data_cfg.mmnist_num_train),
                  num_test=int(data_cfg.mmnist_num_test), seed=int(data_cfg.mmnist_seed))
    if source == "idx":
      # File sizes stand in for the contents: a different download gets a new config.
      params.update(idx_bytes=[os.path.getsize(path) for path in idx_paths(folder)])
    prefix = (f"{source}_s{size}_t{params['train_len']}-{params['test_len']}"
              f"_n{params['num_train']}-{params['num_test']}_seed{params['seed']}")
  return common.make_builder_config(prefix, params)


class MsrnnMovingMnist(common.MsrnnBuilder):
  """Moving MNIST sequences, one record per sequence (feature ``frames`` ``(T, S, S, 1)``)."""

  STORAGE = common.STORAGE_SEQUENCES
  HOMEPAGE = "http://www.cs.toronto.edu/~nitish/unsupervised_video/"
  DESCRIPTION = "Moving MNIST: two digits bouncing on a canvas (generated or fixed file)."

  def _split_generators(self, dl_manager):
    p = self.params
    if p["source"] == "npy":
      seqs = read_npy_sequences(p["npy_file"])
      total, n = seqs.shape[0], seqs.shape[1]
      longest = max(p["train_len"], p["test_len"])
      if longest > total:
        raise ValueError(f"window longer than the data: {p['npy_file']} has {total} frames per "
                         f"sequence but in_len+out_len needs {longest}; lower the lengths.")
      cut = int(round(p["train_fraction"] * n))
      return {"train": self._from_npy(seqs, range(0, cut), p["train_len"]),
              "test": self._from_npy(seqs, range(cut, n), p["test_len"])}
    train_pool, test_pool = digit_pools(p["source"], self.raw_dir, p["train_fraction"])
    self.info.metadata["digit_pool_sizes"] = [len(train_pool), len(test_pool)]
    return {
        "train": self._generate(resize_digits(train_pool, p["digit_size"]), "train",
                                p["num_train"], p["train_len"]),
        "test": self._generate(resize_digits(test_pool, p["digit_size"]), "test",
                               p["num_test"], p["test_len"]),
    }

  def _generate(self, pool, split, num, seq_len):
    for i in range(num):
      yield i, {"frames": generate_sequence(pool, self.params["seed"], split, i, seq_len,
                                            self.params["image_size"])}

  def _from_npy(self, seqs, indices, seq_len):
    for i in indices:
      frames = np.asarray(seqs[:seq_len, i])[..., None]
      frames = common.resize_frames(frames, self.params["image_size"], self.params["resize"])
      yield i, {"frames": frames}


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  """(expected path, where to obtain it) rows for the prepare CLI."""
  folder = config_lib.manual_dir(data_cfg)
  return [(os.path.join(folder, IDX_TRAIN + ".gz"), MNIST_SOURCE + " (optional)"),
          (os.path.join(folder, IDX_TEST + ".gz"), MNIST_SOURCE + " (optional)"),
          (os.path.join(folder, data_cfg.mmnist_npy_file),
           NPY_SOURCE + " (only for mmnist_digits='npy')")]

