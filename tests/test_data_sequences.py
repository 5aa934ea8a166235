"""Your own sequences: every file format, clips and splits, value scaling, bad input, the CLI."""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
from data_fixtures import data_config

import msrnn_jax.data as data_lib
from msrnn_jax.data import common, prepare
from msrnn_jax.training import context_files, inference

REPO = pathlib.Path(__file__).resolve().parents[1]
H = W = 16


def _rgb(rng, t, h=H, w=W):
  return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _grey(rgb):
  """BT.601 luma, rounded: the independent expectation for channels='auto' with C=1."""
  x = rgb.astype(np.float64)
  return np.rint(0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).astype(np.uint8)


def _write_all_formats(raw: pathlib.Path, rng) -> dict[str, list[np.ndarray]]:
  """One file of each format (RGB, 16x16); returns the exact frames of the lossless ones."""
  raw.mkdir(parents=True)
  exact = {}
  exact["a_one.npy"] = [_rgb(rng, 9)]
  np.save(raw / "a_one.npy", exact["a_one.npy"][0])
  many = _rgb(rng, 2 * 7).reshape(2, 7, H, W, 3)
  np.save(raw / "b_many.npy", many)
  exact["b_many.npy"] = list(many)
  exact["c.npz"] = [_rgb(rng, 8)]
  np.savez(raw / "c.npz", clip=exact["c.npz"][0])
  exact["d.h5"] = [_rgb(rng, 6)]
  with h5py.File(raw / "d.h5", "w") as f:
    f.create_dataset("group/frames", data=exact["d.h5"][0])
  exact["e_frames"] = [_rgb(rng, 7)]
  (raw / "e_frames").mkdir()
  for t, frame in enumerate(exact["e_frames"][0]):
    iio.imwrite(raw / "e_frames" / f"{t:03d}.png", frame)
  iio.imwrite(raw / "f.mp4", _rgb(rng, 10), fps=10, codec="libx264", macro_block_size=1)
  iio.imwrite(raw / "g.gif", _rgb(rng, 6), duration=100, loop=0)
  return exact


def _stored_sequences(cfg, split):
  """Every stored frame of a split, grouped by frame key into sequences (uint8)."""
  records = data_lib.get_builder(cfg).as_data_source()[split]
  frames = {}
  for i in range(len(records)):
    rec = records[i]
    frames.setdefault(int(rec["key"]) >> 20, []).append(rec["frame"])
  return [np.stack(v) for v in frames.values()]


def test_every_format_clips_and_splits(tmp_path, capsys):
  rng = np.random.default_rng(0)
  exact = _write_all_formats(tmp_path / "raw", rng)
  cfg = data_config(tmp_path, "sequences", image_size=H, in_len=2, out_len=3, eval_out_len=2,
                    sequences_stride=2, sequences_eval_stride=0,
                    sequences_test="c.npz,g.gif", sequences_valid="d.h5")
  prepare.prepare(cfg)
  out = capsys.readouterr().out
  assert "train: 4 file(s), 5 sequence(s), 40 frames" in out
  assert "values: [0, 255] -> [0, 1] (uint8 / 255)" in out
  lengths = {"train": [9, 7, 7, 7, 10], "validation": [6], "test": [8, 6]}
  seq_len = {"train": 5, "validation": 4, "test": 4}
  stride = {"train": 2, "validation": 4, "test": 4}
  for split, ts in lengths.items():
    # Clips inside each sequence: floor((T - L) / s) + 1.
    expected = sum((t - seq_len[split]) // stride[split] + 1 for t in ts)
    assert data_lib.num_examples(cfg, split) == expected, split
    assert data_lib.sequence_lengths(cfg, split) == (2, seq_len[split] - 2)
  meta = data_lib.get_builder(cfg).info.metadata
  assert meta["files"] == {"train": ["a_one.npy", "b_many.npy", "e_frames", "f.mp4"],
                           "validation": ["d.h5"], "test": ["c.npz", "g.gif"]}
  # Lossless formats are stored exactly (grey of RGB); the video keeps its frame count.
  stored = _stored_sequences(cfg, "train")
  assert [len(s) for s in stored] == lengths["train"]
  for got, raw in zip(stored[:4], exact["a_one.npy"] + exact["b_many.npy"] + exact["e_frames"],
                      strict=True):
    np.testing.assert_array_equal(got[..., 0], _grey(raw))
  np.testing.assert_array_equal(_stored_sequences(cfg, "validation")[0][..., 0],
                                _grey(exact["d.h5"][0]))
  # A clip is consecutive frames of one sequence: test clip 1 is c.npz's frames 4..7.
  clip = data_lib.example_source(cfg, "test")[1]["frames"]
  np.testing.assert_array_equal(clip[..., 0], _grey(exact["c.npz"][0][4:8]))
  # 'validation' is its own split here; the batches are the usual floats in [0, 1].
  batch = next(data_lib.eval_batches(cfg, "validation", global_batch=2))
  np.testing.assert_allclose(batch["frames"][0, ..., 0], _grey(exact["d.h5"][0][:4]) / 255.0)


def test_fractions_split_whole_files_with_a_seed(tmp_path):
  rng = np.random.default_rng(1)
  (tmp_path / "raw").mkdir()
  for i in range(10):
    np.save(tmp_path / "raw" / f"s{i}.npy", rng.integers(0, 256, (6, 8, 12), dtype=np.uint8))

  def files(seed):
    cfg = data_config(tmp_path, "sequences", image_size=8, in_len=2, out_len=2,
                      sequences_valid_fraction=0.2, sequences_test_fraction=0.3,
                      sequences_seed=seed)
    return cfg, data_lib.get_builder(cfg).info.metadata["files"]

  cfg, a = files(0)
  assert [len(a[s]) for s in ("train", "validation", "test")] == [5, 2, 3]
  assert sorted(sum(a.values(), [])) == sorted(f"s{i}.npy" for i in range(10))
  assert files(0)[1] == a and files(1)[1] != a
  # 'crop' keeps the central 8x8 square of the 8x12 frames (no resize needed).
  name = a["test"][0]
  raw = np.load(tmp_path / "raw" / name)
  clip = data_lib.example_source(cfg, "test")[0]["frames"]
  np.testing.assert_array_equal(clip[..., 0], raw[:4, :, 2:10])


def test_one_many_sequence_file_is_split_by_sequence(tmp_path):
  (tmp_path / "raw").mkdir()
  seqs = np.random.default_rng(2).integers(0, 256, (5, 6, 8, 8), dtype=np.uint8)
  np.save(tmp_path / "raw" / "all.npy", seqs)
  # The prepared data may go inside the raw folder: that folder is not read as data.
  cfg = data_config(tmp_path, "sequences", image_size=8, in_len=3, out_len=3,
                    data_dir=str(tmp_path / "raw" / "prepared"))
  assert data_lib.num_examples(cfg, "train") == 4 and data_lib.num_examples(cfg, "test") == 1
  test_clip = data_lib.example_source(cfg, "test")[0]["frames"][..., 0]
  train = [data_lib.example_source(cfg, "train")[i]["frames"][..., 0] for i in range(4)]
  # Each clip is one whole sequence, and the test sequence is in no training clip.
  which = [int(np.argmax([np.array_equal(c, s) for s in seqs])) for c in train + [test_clip]]
  assert sorted(which) == list(range(5))


def test_float_scaling_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  (tmp_path / "raw").mkdir()
  train = rng.uniform(-3.0, 7.0, (6, 8, 8)).astype(np.float32)
  test = rng.uniform(-5.0, 9.0, (6, 8, 8)).astype(np.float32)  # beyond the training range
  np.save(tmp_path / "raw" / "train.npy", train)
  np.save(tmp_path / "raw" / "test.npy", test)
  cfg = data_config(tmp_path, "sequences", image_size=8, in_len=3, out_len=3,
                    sequences_test="test.npy")
  data_lib.get_builder(cfg)
  scaling = data_lib.value_scaling(cfg)
  lo, hi = float(train.min()), float(train.max())
  assert scaling == common.Scaling(lo, hi, "float32")
  stored = data_lib.example_source(cfg, "train")[0]["frames"][..., 0]
  expected = np.clip(np.rint((train.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
  np.testing.assert_array_equal(stored, expected)
  back = scaling.from_unit(stored / 255.0)
  assert np.abs(back - train).max() <= (hi - lo) / 510 + 1e-5
  # Test values beyond the training range saturate at 0 and 255.
  stored_test = data_lib.example_source(cfg, "test")[0]["frames"][..., 0]
  np.testing.assert_array_equal(stored_test[test > hi], 255)
  np.testing.assert_array_equal(stored_test[test < lo], 0)


def _bad(raw: pathlib.Path, case: str) -> str:
  """Writes a bad data folder; returns the regex its error must match."""
  rng = np.random.default_rng(4)
  raw.mkdir(parents=True)
  good = rng.integers(0, 256, (8, 8, 8), dtype=np.uint8)
  if case == "empty":
    return "the data folder .*raw is empty; put"
  np.save(raw / "good.npy", good)
  np.save(raw / "good2.npy", good[::-1].copy())
  if case == "truncated_npy":
    np.save(raw / "zbad.npy", good)
    blob = (raw / "zbad.npy").read_bytes()
    (raw / "zbad.npy").write_bytes(blob[:len(blob) // 2])
    return r"cannot read .*bad.npy: truncated or damaged .npy file"
  if case == "truncated_video":
    iio.imwrite(raw / "zbad.mp4", _rgb(rng, 8, 8, 8), fps=10, codec="libx264", macro_block_size=1)
    blob = (raw / "zbad.mp4").read_bytes()
    (raw / "zbad.mp4").write_bytes(blob[:len(blob) // 3])
    return r"cannot read the video .*bad.mp4: unreadable or truncated"
  if case == "text_as_npy":
    (raw / "zbad.npy").write_text("1,2,3\n")
    return r"bad.npy is not a NumPy .npy file .*; save the array with np.save"
  if case == "too_short":
    np.save(raw / "zbad.npy", good[:3])
    return r"bad.npy has 3 frames, fewer than one \w+ clip of 4"
  if case == "mixed_sizes":
    np.save(raw / "zbad.npy", rng.integers(0, 256, (8, 8, 12), dtype=np.uint8))
    return r"frames of mixed sizes or channels: .*bad.npy has \(H, W, C\) = \(8, 12, 1\)"
  if case == "mixed_channels":
    np.save(raw / "zbad.npy", _rgb(rng, 8, 8, 8))
    return r"frames of mixed sizes or channels: .*bad.npy has \(H, W, C\) = \(8, 8, 3\)"
  if case == "nan":
    values = rng.uniform(size=(8, 8, 8))
    values[5, 1, 1] = np.nan
    np.save(raw / "zbad.npy", values)
    return r"bad.npy holds NaN or Inf \(first at frame 5\)"
  if case == "constant":
    for name in ("good.npy", "good2.npy"):
      np.save(raw / name, np.full((8, 8, 8), 3.5, np.float32))
    return r"the training split is constant \(every value is 3.5\)"
  raise AssertionError(case)


BAD_CASES = ["empty", "truncated_npy", "truncated_video", "text_as_npy", "too_short",
             "mixed_sizes", "mixed_channels", "nan", "constant"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, case):
  pattern = _bad(tmp_path / "raw", case)
  cfg = data_config(tmp_path, "sequences", image_size=8, in_len=2, out_len=2,
                    sequences_test="good2.npy")
  with pytest.raises(ValueError, match=pattern) as info:
    prepare.prepare(cfg)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "tfds").exists()
  if case in ("nan", "too_short"):  # Training prepares on first use: same check, same result.
    with pytest.raises(ValueError, match=pattern):
      data_lib.get_builder(cfg)
    written = [f for _, _, files in os.walk(tmp_path / "tfds") for f in files]
    assert written == []


def _cli(*args, module="msrnn_jax.main"):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _error_line(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len([line for line in lines if line.startswith("error:")]) == 1, proc.stderr
  return next(line for line in lines if line.startswith("error:"))


def test_prepare_cli_bad_input_is_one_line(tmp_path):
  _bad(tmp_path / "raw", "nan")
  proc = _cli("--config=configs/sequences.py", f"--config.data.manual_dir={tmp_path / 'raw'}",
              f"--config.data.data_dir={tmp_path / 'tfds'}", module="msrnn_jax.data.prepare")
  assert proc.stderr.strip().splitlines() == [_error_line(proc)]
  assert "bad.npy holds NaN or Inf" in proc.stderr
  assert not (tmp_path / "tfds").exists()


def test_predict_input_is_read_safely(tmp_path):
  """Arrays by the model's channels; .npz/text named .npy; never an output onto the input."""
  ctx = tmp_path / "ctx.npy"
  np.save(ctx, np.zeros((2, 16, 16, 2), np.uint8))
  with pytest.raises(ValueError, match=r"shape \(2, 16, 16, 2\): read as one sequence "
                     r"\(T, H, W, C\) it has 2 channels; the model expects 1. Save one sequence "
                     r"as \(T, H, W, 1\) or a batch as \(N, T, H, W\)"):
    context_files.load_context(str(ctx), 1, 4)
  context, batched = context_files.load_context(str(ctx), 2, 4)
  assert context.shape == (1, 2, 16, 16, 2) and not batched
  np.save(ctx, np.zeros((3, 2, 16, 16), np.uint8))
  assert context_files.load_context(str(ctx), 1, 4)[0].shape == (3, 2, 16, 16, 1)
  np.savez(tmp_path / "z.npz", a=np.zeros(3))
  os.rename(tmp_path / "z.npz", tmp_path / "z.npy")
  with pytest.raises(ValueError, match=r"z.npy is a .npz archive named .npy; rename it to .npz"):
    context_files.load_context(str(tmp_path / "z.npy"), 1, 4)
  os.rename(tmp_path / "z.npy", tmp_path / "z.npz")  # as the message says: then it is read
  with pytest.raises(ValueError, match=r"z.npz has shape \(3,\); expected"):
    context_files.load_context(str(tmp_path / "z.npz"), 1, 4)
  (tmp_path / "t.npy").write_text("0 1 2\n")
  with pytest.raises(ValueError, match=r"t.npy is not a NumPy .npy file") as info:
    context_files.load_context(str(tmp_path / "t.npy"), 1, 4)
  assert "pickle" not in str(info.value)
  for out, source in [("ctx.npy", "ctx.npy"), ("sub/../ctx.npy", "ctx.npy"),
                      ("anim.npy", "anim.gif")]:  # anim.npy writes anim.gif beside it
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / source).touch()
    with pytest.raises(ValueError, match="would overwrite the input"):
      inference.check_output(str(tmp_path / out), str(tmp_path / source))
  os.link(ctx, tmp_path / "link.npy")
  with pytest.raises(ValueError, match="would overwrite the input"):
    inference.check_output(str(tmp_path / "link.npy"), str(ctx))
  (tmp_path / "frames").mkdir()
  with pytest.raises(ValueError, match="would overwrite the input"):
    inference.check_output(str(tmp_path / "frames" / "p.npy"), str(tmp_path / "frames"))
  inference.check_output(str(tmp_path / "p.npy"), str(ctx))
  # Nor into the data set's raw files.
  with pytest.raises(ValueError, match=r"lies in the data folder .*frames \(data.manual_dir\)"):
    inference.check_output(str(tmp_path / "frames" / "new.npy"), str(ctx),
                           str(tmp_path / "frames"))


# The end-to-end runs: a tiny model for a few steps. Each goes through the command line
# once (a process start and a compilation cost seconds); the other steps call what the
# command line calls (msrnn_jax.commands.run, prepare.prepare) in this process.
TINY = dict(data=dict(image_size=16, in_len=2, out_len=2),
            model=dict(hidden=4, num_layers=3, dtype="float32"),
            train=dict(batch_size=4, num_steps=2, log_every_steps=1, eval_every_steps=2,
                       checkpoint_every_steps=2, eval_examples=4),
            eval=dict(batch_size=4, num_visualize=1))


def _tiny_config(**data):
  from configs import sequences as sequences_config
  config = sequences_config.get_config("cpu")
  for section, values in TINY.items():
    config[section].update(values)
  config.data.update(data)
  return config


def _flags(config) -> list[str]:
  """``--config.*`` flags that give ``config`` from configs/sequences.py:cpu."""
  out = [f"--config.{section}.{key}={value}" for section, values in TINY.items()
         for key, value in values.items()]
  return out + [f"--config.data.{key}={config.data[key]}"
                for key in ("manual_dir", "data_dir", "sequences_test")]


def _run(config, workdir, mode, *args, **kwargs) -> int:
  from msrnn_jax import commands
  return commands.run(config, str(workdir), mode, *args, **kwargs)


def test_cli_trains_evaluates_and_predicts_on_videos(tmp_path, capsys):
  rng = np.random.default_rng(5)
  raw = tmp_path / "videos"
  raw.mkdir()
  for i in range(3):  # A bright square moving right over 12 frames of 24x32 colour video.
    video = np.zeros((12, 24, 32, 3), np.uint8) + rng.integers(0, 40, dtype=np.uint8)
    for t in range(12):
      video[t, 8:16, 2 * t:2 * t + 8] = 230
    iio.imwrite(raw / f"clip{i}.mp4", video, fps=10, codec="libx264", macro_block_size=1)
  config = _tiny_config(manual_dir=str(raw), data_dir=str(tmp_path / "tfds"),
                        sequences_test="clip2.mp4")
  prepare.prepare(config.data)
  out = capsys.readouterr().out
  assert "frames 24x32 -> 16x16, 1 channel(s)" in out  # colour -> grey, centre crop, resize
  assert "train: 2 file(s), 2 sequence(s), 24 frames, 18 clips of 4 frames" in out
  assert "test: 1 file(s), 1 sequence(s), 12 frames, 3 clips of 4 frames" in out
  workdir = tmp_path / "run"
  proc = _cli("--config=configs/sequences.py:cpu", f"--workdir={workdir}", *_flags(config))
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((workdir / "test.json").read_text())
  assert set(result["baselines"]) == {"blank", "copy_last"}
  # Predict from the test video: its frames, prepared as in training, are the context.
  out = tmp_path / "pred.npy"
  assert _run(config, workdir, "predict", str(raw / "clip2.mp4"), str(out), 3) == 0
  pred = np.load(out)
  assert pred.shape == (3, 16, 16, 1) and pred.dtype == np.uint8  # the videos' uint8 range
  gif = iio.imread(tmp_path / "pred.gif", index=None)
  assert gif.shape[0] == 12 + 3 and gif.shape[2] == 128  # 16 px frames drawn 128 px wide
  # Never onto the input: one error line, nothing written, the input unchanged.
  np.save(tmp_path / "same.npy", np.zeros((2, 16, 16), np.uint8))
  before = (tmp_path / "same.npy").read_bytes()
  capsys.readouterr()
  assert _run(config, workdir, "predict", str(tmp_path / "same.npy"),
              str(tmp_path / "same.npy")) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --output=") and "would overwrite the input" in err
  assert len(err.strip().splitlines()) == 1
  assert (tmp_path / "same.npy").read_bytes() == before and not (tmp_path / "same.png").exists()


def test_cli_trains_evaluates_and_predicts_on_arrays(tmp_path, capsys):
  rng = np.random.default_rng(6)
  raw = tmp_path / "arrays"
  raw.mkdir()
  for i in range(4):  # Float fields (e.g. radar), values in physical units.
    field = np.cumsum(rng.normal(size=(10, 16, 16)), axis=0).astype(np.float32) * 5 + 20
    np.save(raw / f"day{i}.npy", field)
  config = _tiny_config(manual_dir=str(raw), data_dir=str(tmp_path / "tfds"))
  prepare.prepare(config.data)
  assert "min/max of the training split" in capsys.readouterr().out
  workdir = tmp_path / "run"
  assert _run(config, workdir, "train") == 0
  (workdir / "test.json").unlink()
  assert _run(config, workdir, "eval") == 0
  assert set(json.loads((workdir / "test.json").read_text())["baselines"]) == {
      "blank", "copy_last"}
  # A context in the data's units gives predictions in those units, through the CLI.
  scaling = data_lib.value_scaling(config.data)
  assert scaling.dtype == "float32" and scaling.hi > scaling.lo
  np.save(tmp_path / "ctx.npy", np.load(raw / "day0.npy")[:3])
  out = tmp_path / "out" / "pred.npy"
  out.parent.mkdir()
  proc = _cli("--config=configs/sequences.py:cpu", f"--workdir={workdir}", *_flags(config),
              "--mode=predict", f"--input={tmp_path / 'ctx.npy'}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  pred = np.load(out)
  assert pred.shape == (2, 16, 16, 1) and pred.dtype == np.float32
  assert scaling.lo - 1e-4 <= pred.min() and pred.max() <= scaling.hi + 1e-4
  assert (tmp_path / "out" / "pred.png").is_file()


def test_a_file_that_is_not_hdf5_is_one_line_naming_the_fix(tmp_path):
  """The HDF5 readers (your own .h5 arrays, TaxiBJ's files) refuse a text file named .h5 in
  one line that ends in what to do."""
  import re

  from msrnn_jax.data import sequences, taxibj
  bad = tmp_path / "x.h5"
  bad.write_text("not hdf5\n")
  with pytest.raises(ValueError, match=r"x.h5: truncated or not an HDF5 file .*np.save / h5py\.$"):
    sequences.read_h5(str(bad), "")
  with pytest.raises(ValueError, match=rf"not an HDF5 file .*download it again from "
                                       rf"{re.escape(taxibj.SOURCE)}\.$"):
    taxibj.read_h5(str(bad))
