"""Synthetic moving-shape sequences for smoke runs and tests (no files needed).

Every sequence is drawn on demand from ``(synthetic_seed, split, index)``, so a
source is random access, costs no memory and is the same in every process. The
motion is deterministic given the first frames (constant velocities, elastic
bounces, periodic intensities), so a model can learn to predict it. The styles
(``synthetic_like``) are drawn in :func:`render` (docs/data.md, "Synthetic data").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib
from msrnn_jax.data.mmnist import bounce_trajectory

_SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  return y, x


def _gaussians(centres: np.ndarray, sigma: Any, size: int) -> np.ndarray:
  """Gaussian bumps at ``centres`` ``(T, 2)``; float32 ``(T, size, size)``."""
  y, x = _grid(size)
  d2 = (y[None] - centres[:, 0, None, None]) ** 2 + (x[None] - centres[:, 1, None, None]) ** 2
  return np.exp(-d2 / (2.0 * np.square(sigma))).astype(np.float32)


def _random_motion(rng: np.random.Generator, num_frames: int, limit: float, speed: float,
                   ) -> np.ndarray:
  start = rng.uniform(0, limit, size=2)
  theta = rng.uniform(-math.pi, math.pi)
  return bounce_trajectory(start, speed * np.array([math.sin(theta), math.cos(theta)]),
                           num_frames, limit)


def render(style: str, rng: np.random.Generator, num_frames: int, size: int, channels: int,
           ) -> np.ndarray:
  """One synthetic sequence.

  Args:
    style: one of ``config.SYNTHETIC_STYLES``.
    rng: the sequence's random generator.
    num_frames: T.
    size: frame side S.
    channels: C.

  Returns:
    float32 ``(T, S, S, C)`` in ``[0, 1]``.
  """
  t = np.arange(num_frames, dtype=np.float32)
  speed = max(1.0, size / 16.0)
  if style in ("mmnist", "blobs"):
    frame = np.zeros((num_frames, size, size), np.float32)
    side = max(2, size // 5)
    for _ in range(2):
      path = _random_motion(rng, num_frames, size - side, speed)
      if style == "mmnist":
        corners = np.rint(path).astype(np.int64)
        for k, (r, c) in enumerate(corners):
          frame[k, r:r + side, c:c + side] += 1.0
      else:
        frame += _gaussians(path + side / 2.0, side / 2.5, size)
    frame = np.minimum(frame, 1.0)
  elif style == "kth":
    y, x = _grid(size)
    background = 0.45 + 0.1 * y / size
    width, height = max(2, size // 8), max(4, size // 2)
    top = rng.uniform(0.1, 0.4) * size
    path = bounce_trajectory(rng.uniform(0, size - width), rng.choice([-1, 1]) * speed * 0.75,
                             num_frames, size - width)
    body = ((x[None] >= path[:, None, None]) & (x[None] < path[:, None, None] + width)
            & (y[None] >= top) & (y[None] < top + height))
    frame = np.where(body, 0.1, background[None]).astype(np.float32)
  elif style == "taxibj":
    spots = rng.uniform(0.15, 0.85, size=(3, 2)) * size
    phase = rng.uniform(0, 2 * math.pi)
    hot = sum(_gaussians(np.repeat(s[None], num_frames, 0), size / 8.0, size) for s in spots)
    drift = 0.5 * _gaussians(_random_motion(rng, num_frames, size - 1, speed * 0.5),
                             size / 10.0, size)
    frames_c = []
    for c in range(channels):
      # Half-hour slots: a period of 48 steps is a day; channel c lags by c slots.
      level = 0.5 + 0.4 * np.sin(2 * math.pi * (t - c) / 48.0 + phase)
      frames_c.append(np.clip((hot * level[:, None, None] + drift) / 2.0, 0, 1))
    return np.stack(frames_c, axis=-1).astype(np.float32)
  elif style == "hko7":
    wind = speed * 0.75 * np.array([math.sin(a := rng.uniform(-math.pi, math.pi)), math.cos(a)])
    frame = np.zeros((num_frames, size, size), np.float32)
    for _ in range(rng.integers(2, 5)):
      centre = rng.uniform(0, size, size=2)
      centres = centre[None] + t[:, None] * wind[None]
      growth = 1.0 + rng.uniform(-0.04, 0.04) * t
      peak = rng.uniform(0.4, 0.9)
      frame += peak * np.clip(growth, 0, None)[:, None, None] * _gaussians(
          centres, rng.uniform(size / 14, size / 6), size)
    frame = np.clip(frame, 0, 1)
  else:
    raise ValueError(f"synthetic_like={style!r} is unknown; use one of "
                     f"{config_lib.SYNTHETIC_STYLES}.")
  # Extra channels are scaled copies, so they stay as predictable as the first.
  gains = np.linspace(1.0, 0.6, channels, dtype=np.float32)
  return frame[..., None] * gains


class SyntheticSource:
  """Random-access source of synthetic sequences (a grain ``RandomAccessDataSource``).

  ``source[i]`` is ``dict(frames=uint8 (T, S, S, C))``.
  """

  def __init__(self, data_cfg: Any, split: str):
    if split not in _SPLIT_CODES:
      raise ValueError(f"split {split!r} is unknown; use 'train', 'validation' or 'test'.")
    self.style = data_cfg.synthetic_like
    if self.style not in config_lib.SYNTHETIC_STYLES:
      raise ValueError(f"synthetic_like={self.style!r} is unknown; use one of "
                       f"{config_lib.SYNTHETIC_STYLES}.")
    self.split = split
    self.seed = int(data_cfg.synthetic_seed)
    self.num_frames = config_lib.split_seq_len(data_cfg, split)
    self.size = int(data_cfg.image_size)
    self.channels = int(data_cfg.channels)
    self.length = int(data_cfg.synthetic_num_train if split == "train"
                      else data_cfg.synthetic_num_test)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < self.length:
      raise IndexError(f"index {index} out of range for {self.length} synthetic sequences")
    rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
    frames = render(self.style, rng, self.num_frames, self.size, self.channels)
    return {"frames": np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)}

  def __repr__(self) -> str:
    return (f"SyntheticSource(style={self.style}, split={self.split}, n={self.length}, "
            f"T={self.num_frames}, S={self.size}, C={self.channels})")


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  params = dict(style=data_cfg.synthetic_like, image_size=int(data_cfg.image_size),
                channels=int(data_cfg.channels),
                train_len=config_lib.split_seq_len(data_cfg, "train"),
                test_len=config_lib.split_seq_len(data_cfg, "test"),
                num_train=int(data_cfg.synthetic_num_train),
                num_test=int(data_cfg.synthetic_num_test), seed=int(data_cfg.synthetic_seed))
  prefix = (f"{params['style']}_s{params['image_size']}c{params['channels']}"
            f"_t{params['train_len']}-{params['test_len']}_n{params['num_train']}"
            f"-{params['num_test']}_seed{params['seed']}")
  return common.make_builder_config(prefix, params)


class MsrnnSynthetic(common.MsrnnBuilder):
  """The synthetic sequences written as a tfds data set (same content as ``SyntheticSource``)."""

  STORAGE = common.STORAGE_SEQUENCES
  DESCRIPTION = "Synthetic moving shapes shaped like one of the real data sets."

  def __init__(self, *, data_cfg: Any = None, **kwargs):
    self._data_cfg = data_cfg
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    if self._data_cfg is None:
      raise ValueError("MsrnnSynthetic needs data_cfg= to generate; use data.get_builder(cfg).")
    return {split: self._generate(SyntheticSource(self._data_cfg, split))
            for split in ("train", "test")}

  def _generate(self, source):
    for i in range(len(source)):
      yield i, source[i]


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  """Raw files to place in ``manual_dir``: none (synthetic sequences are drawn on demand)."""
  del data_cfg
  return []
