"""Tests for msrnn_jax.evaluation.visualize: files are written with the expected geometry."""

import imageio.v3 as iio
import numpy as np
import pytest

from msrnn_jax.evaluation import metrics, visualize

GAP = visualize.GAP


def _frames(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_one_sequence_row_size_and_content(tmp_path):
  frames = _frames((5, 8, 6, 1))
  path = str(tmp_path / "strip.png")
  visualize.save_sequences(frames[None], path, scale=1)
  image = iio.imread(path)
  assert image.shape == (8, 5 * 6 + 4 * GAP, 3)
  # Third tile, grey level = round(255 * value), same in R, G and B.
  x0 = 2 * (6 + GAP)
  expected = np.rint(frames[2, ..., 0] * 255).astype(np.uint8)
  for c in range(3):
    np.testing.assert_array_equal(image[:, x0 : x0 + 6, c], expected)
  # Separators are white.
  assert np.all(image[:, 6 : 6 + GAP] == 255)


def test_one_sequence_row_scale_and_two_channels(tmp_path):
  frames = _frames((3, 4, 5, 2))
  path = str(tmp_path / "strip2.png")
  visualize.save_sequences(frames[None], path, scale=2)
  image = iio.imread(path)
  # C=2: channels side by side inside each tile.
  tile_w = 2 * 5 * 2 + GAP
  assert image.shape == (8, 3 * tile_w + 2 * GAP, 3)
  second_channel = image[:, 10 + GAP : 20 + GAP, 0]
  expected = np.rint(frames[0, ..., 1] * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
  np.testing.assert_array_equal(second_channel, expected)


def test_small_frames_are_enlarged_to_a_readable_size(tmp_path):
  """By default a frame's longer side is drawn at least 128 pixels, by pixel repetition."""
  frames = _frames((1, 2, 32, 24, 1))
  png, gif = str(tmp_path / "s.png"), str(tmp_path / "s.gif")
  visualize.save_sequences(frames, png, gif)
  image = iio.imread(png)
  assert image.shape == (128, 2 * 96 + GAP, 3)  # 32 * 4 = 128 rows, 24 * 4 = 96 columns
  expected = np.rint(frames[0, 1, ..., 0] * 255).astype(np.uint8)
  np.testing.assert_array_equal(image[::4, 96 + GAP::4, 0], expected)
  assert iio.imread(gif, index=None).shape[1:3][1] == 96
  assert visualize.display_scale(88, 88) == 2 and visualize.display_scale(200, 100) == 1


def test_save_sequences_rejects_bad_shape(tmp_path):
  with pytest.raises(ValueError):
    visualize.save_sequences(_frames((3, 8, 6, 1)), str(tmp_path / "x.png"))


def test_prediction_grid_png_rows_and_gif_frames(tmp_path):
  num_seq, in_len, out_len, h, w = 2, 3, 4, 10, 12
  context = _frames((num_seq, in_len, h, w, 1), 1)
  truth = _frames((num_seq, out_len, h, w, 1), 2)
  pred = _frames((num_seq, out_len, h, w, 1), 3) * 1.5 - 0.2  # out of range -> clipped
  png, gif = str(tmp_path / "grid.png"), str(tmp_path / "grid.gif")
  visualize.prediction_grid(context, truth, pred, png, gif, scale=1)
  image = iio.imread(png)
  rows, cols = 3 * num_seq, max(in_len, out_len)
  assert image.shape == (rows * h + (rows - 1) * GAP, cols * w + (cols - 1) * GAP, 3)

  def tile(r, c):
    y, x = r * (h + GAP), c * (w + GAP)
    return image[y : y + h, x : x + w, 0]

  def grey(a):
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)

  # Rows of sequence 1: context, truth, prediction.
  np.testing.assert_array_equal(tile(3, 1), grey(context[1, 1, ..., 0]))
  np.testing.assert_array_equal(tile(4, 3), grey(truth[1, 3, ..., 0]))
  np.testing.assert_array_equal(tile(5, 0), grey(pred[1, 0, ..., 0]))
  # The context row is shorter than the others: blank (white) cell.
  assert np.all(tile(0, 3) == 255)

  animation = iio.imread(gif, index=None)
  assert animation.shape[0] == out_len
  assert animation.shape[1] >= num_seq * h + (num_seq - 1) * GAP
  assert animation.shape[2] == 2 * w + GAP


def test_prediction_grid_without_gif_and_shape_checks(tmp_path):
  context = _frames((1, 2, 8, 8, 1))
  truth = _frames((1, 3, 8, 8, 1))
  visualize.prediction_grid(context, truth, truth, str(tmp_path / "g.png"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]
  with pytest.raises(ValueError):
    visualize.prediction_grid(context, truth, truth[:, :2], str(tmp_path / "h.png"))


def test_plot_per_frame(tmp_path):
  rng = np.random.default_rng(0)
  num_frames = 6
  acc = metrics.EvalAccumulator()
  hits = rng.integers(0, 5, (5, num_frames))
  acc.update(
    {
      "count": 2.0,
      "mse": rng.random(num_frames),
      "ssim": rng.random(num_frames),
      "psnr": 20 + rng.random(num_frames),
      "hits": hits,
      "misses": np.ones_like(hits),
      "false_alarms": np.ones_like(hits),
      "correct_negatives": 10 * np.ones_like(hits),
    }
  )
  result = acc.result(in_len=3)
  path = str(tmp_path / "per_frame.png")
  plotted = visualize.plot_per_frame(result, path)
  assert plotted == ["mse", "ssim", "psnr", "csi_30", "hss_30"]
  image = iio.imread(path)
  # 4 inches per panel at 100 dpi.
  assert image.shape[1] == 400 * len(plotted) and image.shape[0] == 320

  result_no_radar = {**result, "per_frame": {k: result["per_frame"][k] for k in ("mse", "psnr")}}
  assert visualize.plot_per_frame(result_no_radar, str(tmp_path / "p2.png")) == ["mse", "psnr"]
