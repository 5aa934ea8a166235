"""KTH human actions (25 persons, 6 actions, 4 scenarios; 160x120 grey videos at 25 fps).

Raw files in ``manual_dir``: ``<action>/personXX_<action>_dY_uncomp.avi`` (or the ``.avi``
directly in ``manual_dir``), or frames already extracted to
``<action>/personXX_<action>_dY/<i>.png``, which win over the video. Frames keep channel 0,
are resized to ``image_size`` and stored one record per frame; persons 1-16 train, 17-25
test, with the paper's window strides and optional MCnet-style lists (docs/data.md, "KTH").
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np
import tqdm

from msrnn_jax.data import common
from msrnn_jax.data import config as config_lib

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
RUN_JOG_WALK = ("jogging", "running", "walking")
FAST_ACTIONS = ("jogging", "running")
TRAIN_PERSONS = range(1, 17)
TEST_PERSONS = range(17, 26)
SOURCE = "https://www.csc.kth.se/cvap/actions/ (one zip of .avi files per action)"
_NAME = re.compile(r"^person(\d\d)_([a-z]+)_d(\d)(?:_uncomp)?(?:\.avi)?$")


def classes(data_cfg: Any) -> tuple[str, ...]:
  if data_cfg.kth_classes == "all":
    return ACTIONS
  if data_cfg.kth_classes == "run_jog_walk":
    return RUN_JOG_WALK
  raise ValueError(f"kth_classes={data_cfg.kth_classes!r} is unknown; use 'all' or "
                   "'run_jog_walk'.")


def parse_name(name: str) -> tuple[int, str, int] | None:
  """``personXX_action_dY[_uncomp][.avi]`` -> ``(person, action, scenario)``."""
  m = _NAME.match(name)
  if not m or m.group(2) not in ACTIONS:
    return None
  return int(m.group(1)), m.group(2), int(m.group(3))


def frame_key(person: int, action: str, scenario: int, frame: int) -> int:
  """A unique int64 identity of a frame (1-based frame number below 100000)."""
  return ((person * 10 + ACTIONS.index(action)) * 10 + scenario) * 100_000 + frame


def find_videos(folder: str, wanted: tuple[str, ...]) -> dict[str, dict[str, Any]]:
  """Finds the videos of the wanted classes.

  Returns:
    ``{video name: dict(person, action, scenario, kind ('png'|'avi'), path)}``,
    sorted by name.
  """
  videos: dict[str, dict[str, Any]] = {}
  candidates = []
  for action in wanted:
    candidates += glob.glob(os.path.join(folder, action, "*"))
  candidates += glob.glob(os.path.join(folder, "*.avi"))
  for path in sorted(candidates):
    base = os.path.basename(path)
    parsed = parse_name(base)
    if parsed is None or parsed[1] not in wanted:
      continue
    person, action, scenario = parsed
    name = f"person{person:02d}_{action}_d{scenario}"
    kind = "png" if os.path.isdir(path) else "avi" if base.endswith(".avi") else None
    if kind is None or (name in videos and videos[name]["kind"] == "png"):
      continue
    videos[name] = dict(person=person, action=action, scenario=scenario, kind=kind, path=path)
  return dict(sorted(videos.items()))


def read_png_folder(path: str) -> np.ndarray:
  """Frames ``1.png, 2.png, ...`` of a folder as uint8 ``(T, H, W)``."""
  names = [n for n in os.listdir(path) if n.lower().endswith(".png")]
  numbered = sorted((int(os.path.splitext(n)[0]), n) for n in names
                    if os.path.splitext(n)[0].isdigit())
  if not numbered:
    raise ValueError(f"empty folder {path}: no <i>.png frames; extract the video into it "
                     "or delete the folder.")
  frames, shape = [], None
  for _, n in numbered:
    frame = common.read_gray_png(os.path.join(path, n))
    shape = common.check_same_size(frame.shape, shape, os.path.join(path, n))
    frames.append(frame)
  return np.stack(frames)


def read_avi(path: str) -> np.ndarray:
  """All frames of an ``.avi`` as uint8 ``(T, H, W)`` (channel 0)."""
  import imageio.v2 as imageio  # Imported here: only KTH videos need ffmpeg.

  try:
    reader = imageio.get_reader(path, format="FFMPEG")
    with reader:
      frames = [np.asarray(f)[..., 0] if np.ndim(f) == 3 else np.asarray(f) for f in reader]
  except (OSError, RuntimeError, ValueError) as e:
    raise ValueError(f"cannot decode {path} ({e}); download the video again.") from e
  if not frames:
    raise ValueError(f"{path} has no frames; download the video again.")
  return np.stack(frames).astype(np.uint8)


def read_list(path: str) -> dict[str, list[tuple[int, int]]]:
  """MCnet-style list -> ``{video: [(start, end), ...]}`` (1-based, inclusive)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"KTH list {path} not found; fix kth_train_list/kth_test_list or "
                            "set them to '' to use whole videos.")
  segments: dict[str, list[tuple[int, int]]] = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 3 or parse_name(parts[0]) is None:
        raise ValueError(f"{path}:{line_no}: expected 'personXX_action_dY start end', got "
                         f"{line.strip()!r}.")
      name = parts[0].replace("_uncomp", "")
      segments.setdefault(name, []).append((int(parts[1]), int(parts[2])))
  return segments


def video_windows(num_frames: int, segments: list[tuple[int, int]] | None, seq_len: int,
                  stride: int) -> list[list[int]]:
  """Window groups of one video in 0-based frame indices of that video."""
  segments = segments or [(1, num_frames)]
  groups = []
  for start, end in segments:
    first, last = max(start, 1) - 1, min(end, num_frames) - 1
    count = (last - first + 1 - seq_len) // stride + 1 if last - first + 1 >= seq_len else 0
    if count > 0:
      groups.append([first, count, stride, 1])
  return groups


def builder_config(data_cfg: Any) -> common.MsrnnBuilderConfig:
  if data_cfg.channels != 1:
    raise ValueError(f"config.data.channels={data_cfg.channels} but KTH is grayscale; "
                     "set channels=1.")
  lists = {key: common.list_file_param(key, getattr(data_cfg, key))
           for key in ("kth_train_list", "kth_test_list") if getattr(data_cfg, key)}
  params = dict(classes=list(classes(data_cfg)), image_size=int(data_cfg.image_size),
                channels=1, resize=data_cfg.resize_method,
                train_len=config_lib.split_seq_len(data_cfg, "train"),
                test_len=config_lib.split_seq_len(data_cfg, "test"),
                train_stride=int(data_cfg.kth_train_stride),
                test_stride_fast=int(data_cfg.kth_test_stride_fast),
                test_stride_slow=int(data_cfg.kth_test_stride_slow), lists=lists)
  prefix = (f"{data_cfg.kth_classes}_s{params['image_size']}"
            f"_t{params['train_len']}-{params['test_len']}_stride{params['train_stride']}"
            f"-{params['test_stride_fast']}-{params['test_stride_slow']}"
            f"{'_lists' if lists else ''}")
  return common.make_builder_config(prefix, params)


class MsrnnKth(common.MsrnnBuilder):
  """KTH frames (one record per frame) with train/test windows in the metadata."""

  STORAGE = common.STORAGE_FRAMES
  HOMEPAGE = "https://www.csc.kth.se/cvap/actions/"
  DESCRIPTION = "KTH human actions, grey frames resized to a square; persons 1-16 train."

  def _split_generators(self, dl_manager):
    p = self.params
    wanted = tuple(p["classes"])
    videos = find_videos(self.raw_dir, wanted)
    if not videos:
      expected = [os.path.join(self.raw_dir, a, f"person01_{a}_d1_uncomp.avi") for a in wanted]
      raise common.missing_files_error("kth", expected, SOURCE)
    plans = {}
    for split, persons, list_key in (("train", TRAIN_PERSONS, "kth_train_list"),
                                     ("test", TEST_PERSONS, "kth_test_list")):
      segments = read_list(p["lists"][list_key][0]) if list_key in p["lists"] else None
      chosen = [n for n, v in videos.items() if v["person"] in persons
                and (segments is None or n in segments)]
      if not chosen:
        raise common.missing_files_error(
            "kth", [os.path.join(self.raw_dir, wanted[0],
                                 f"person{persons[0]:02d}_{wanted[0]}_d1_uncomp.avi")], SOURCE)
      plans[split] = (chosen, segments)
    # Windows depend on frame counts, known once each video is decoded, so the
    # generators fill the metadata as they go (tfds writes it after generation).
    self.info.metadata["videos"] = {}
    return {split: self._generate(split, videos, *plans[split]) for split in ("train", "test")}

  def _generate(self, split, videos, chosen, segments):
    p = self.params
    seq_len = p["train_len"] if split == "train" else p["test_len"]
    groups, records, shape = [], [], None
    offset = 0
    # tfds' own bar counts records without a total; this one shows progress in videos.
    for name in tqdm.tqdm(chosen, desc=f"KTH {split} videos", unit="video", leave=False):
      v = videos[name]
      raw = read_png_folder(v["path"]) if v["kind"] == "png" else read_avi(v["path"])
      shape = common.check_same_size(raw.shape[1:], shape, v["path"])
      if split == "train":
        stride = p["train_stride"]
      else:
        stride = p["test_stride_fast"] if v["action"] in FAST_ACTIONS else p["test_stride_slow"]
      own = video_windows(len(raw), segments.get(name) if segments else None, seq_len, stride)
      if not own:
        continue  # Shorter than one window: nothing from this video is stored.
      frames = common.resize_frames(raw[..., None], p["image_size"], p["resize"])
      for i, frame in enumerate(frames):
        # The tfds key fixes the record order (shuffling is disabled), so it is the index.
        yield offset + i, {"frame": frame,
                           "key": frame_key(v["person"], v["action"], v["scenario"], i + 1)}
      groups += [[g[0] + offset, g[1], g[2], g[3]] for g in own]
      records.append([name, offset, len(frames)])
      offset += len(frames)
    if not groups:
      raise ValueError(f"window longer than the data: no {split} video has {seq_len} frames "
                       "(in_len + out_len); lower the lengths or check the videos.")
    self.set_windows(split, groups, seq_len)
    self.info.metadata["videos"] = dict(self.info.metadata["videos"], **{split: records})


def describe_sources(data_cfg: Any) -> list[tuple[str, str]]:
  folder = config_lib.manual_dir(data_cfg)
  return [(os.path.join(folder, a, f"person01_{a}_d1_uncomp.avi (and the other videos)"), SOURCE)
          for a in classes(data_cfg)]
