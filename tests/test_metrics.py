"""Tests for msrnn_jax.evaluation.metrics against numpy, scikit-image and hand-computed values."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal
from skimage.metrics import structural_similarity

from msrnn_jax.data import rainfall
from msrnn_jax.evaluation import metrics

# One compiled function for the whole file keeps compile time down.
_stats = jax.jit(metrics.frame_stats, static_argnames=("with_gdl", "with_radar"))
_ssim = jax.jit(metrics.ssim_per_frame)


def _random_batch(seed, shape=(4, 3, 16, 16, 1)):
  rng = np.random.default_rng(seed)
  truth = rng.random(shape).astype(np.float32)
  # Predictions slightly outside [0, 1] exercise the clipping.
  pred = (truth + 0.2 * rng.standard_normal(shape)).astype(np.float32)
  return pred, truth


def _numpy_per_example(pred, truth):
  """Independent numpy versions of mse/mae/psnr/gdl, <float64>[B, F] each."""
  p = np.clip(pred.astype(np.float64), 0, 1)
  t = truth.astype(np.float64)
  err = p - t
  mse = (err**2).sum(axis=(2, 3, 4))
  mae = np.abs(err).sum(axis=(2, 3, 4))
  psnr = 10 * np.log10(1 / ((err**2).mean(axis=(2, 3, 4)) + 1e-5))
  gdl = np.zeros_like(mse)
  for b in range(p.shape[0]):
    for f in range(p.shape[1]):
      pi, ti = p[b, f], t[b, f]
      gy = np.abs(np.abs(pi[1:] - pi[:-1]) - np.abs(ti[1:] - ti[:-1])).sum()
      gx = np.abs(np.abs(pi[:, 1:] - pi[:, :-1]) - np.abs(ti[:, 1:] - ti[:, :-1])).sum()
      gdl[b, f] = gy + gx
  return {"mse": mse, "mae": mae, "psnr": psnr, "gdl": gdl}


def test_pointwise_metrics_match_numpy_and_exclude_padding():
  pred, truth = _random_batch(0)
  valid = np.array([True, False, True, False])
  # Garbage in the padding rows, NaN included, must not leak into the sums.
  pred[1] = np.nan
  truth[3] = 5.0
  stats = _stats(pred, truth, valid)
  ref = _numpy_per_example(pred[valid], truth[valid])
  assert float(stats["count"]) == 2.0
  for key in ("mse", "mae", "psnr", "gdl"):
    np.testing.assert_allclose(np.asarray(stats[key]), ref[key].sum(axis=0), rtol=2e-5, err_msg=key)
  for key, value in stats.items():
    assert np.all(np.isfinite(np.asarray(value))), key


def test_accumulating_two_batches_equals_one_batch():
  # Same batch shape as above so the jitted function is reused.
  pred, truth = _random_batch(1)
  whole = metrics.EvalAccumulator()
  whole.update(_stats(pred, truth, np.ones(4, bool)))
  split = metrics.EvalAccumulator()
  # Two halves, each padded to the batch size as an eval loop would do.
  for rows in (slice(0, 2), slice(2, 4)):
    pad_p = np.concatenate([pred[rows], np.zeros_like(pred[:2])])
    pad_t = np.concatenate([truth[rows], np.ones_like(truth[:2])])
    split.update(_stats(pad_p, pad_t, np.array([True, True, False, False])))
  assert split.count == whole.count == 4
  a, b = whole.result(in_len=2), split.result(in_len=2)
  for key, value in a["per_frame"].items():
    np.testing.assert_allclose(b["per_frame"][key], value, rtol=1e-6, atol=1e-9, err_msg=key)
  ref = _numpy_per_example(pred, truth)
  np.testing.assert_allclose(a["per_frame"]["mse"], ref["mse"].mean(axis=0), rtol=2e-5)
  np.testing.assert_allclose(a["all"]["psnr"], ref["psnr"].mean(), rtol=2e-5)


def _skimage_ssim(x, y):
  return structural_similarity(
    x,
    y,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
    data_range=1.0,
    channel_axis=-1,
  )


def _structured_pair(rng, size=32, channels=1):
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = 0.5 + 0.4 * np.sin(6 * xx + 3 * yy)[..., None] * np.linspace(1, 0.5, channels)
  truth = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
  pred = np.clip(truth + 0.03 * rng.standard_normal(base.shape), 0, 1)
  return pred.astype(np.float32), truth.astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2])
def test_ssim_matches_skimage(channels):
  rng = np.random.default_rng(2)
  pairs = [
    (
      rng.random((32, 32, channels)).astype(np.float32),
      rng.random((32, 32, channels)).astype(np.float32),
    ),
    _structured_pair(rng, channels=channels),
  ]
  pred = np.stack([p for p, _ in pairs])[:, None]
  truth = np.stack([t for _, t in pairs])[:, None]
  ours = np.asarray(_ssim(pred, truth))[:, 0]
  # skimage filters in 'same' mode and crops (win-1)//2 per border before the
  # mean, which equals the 'valid' map for an 11-tap window.
  ref = [_skimage_ssim(p.astype(np.float64), t.astype(np.float64)) for p, t in pairs]
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert ours[1] > 0.5 > ours[0]  # structured pair is similar, noise is not


def test_ssim_of_identical_images_is_one():
  x = _random_batch(3)[1]
  stats = _stats(x, x, np.ones(4, bool))
  np.testing.assert_allclose(np.asarray(stats["ssim"]), [4.0] * 3, atol=1e-5)


@pytest.mark.parametrize("hw", [(7, 9), (10, 12)])
def test_ssim_shrunk_window_matches_2d_fft_reference(hw):
  """Images smaller than 11: window min(11,H,W), sigma scaled (even sizes too)."""
  rng = np.random.default_rng(4)
  x = rng.random(hw)
  y = np.clip(x + 0.1 * rng.standard_normal(hw), 0, 1)
  size = min(11, *hw)
  sigma = size * 1.5 / 11
  # 2-D window on the reference's grid (half-pixel offsets for even sizes).
  radius = size // 2
  offset = 0.5 if size % 2 == 0 else 0.0
  stop = radius + 1 - (1 if size % 2 == 0 else 0)
  gy, gx = np.mgrid[offset - radius : stop, offset - radius : stop]
  window = np.exp(-(gx**2 + gy**2) / (2 * sigma**2))
  window /= window.sum()
  assert window.shape == (size, size)

  def conv(a):
    return signal.fftconvolve(a, window, mode="valid")

  mx, my = conv(x), conv(y)
  vxx, vyy, vxy = conv(x * x) - mx**2, conv(y * y) - my**2, conv(x * y) - mx * my
  c1, c2 = 0.01**2, 0.03**2
  ref = np.mean((2 * mx * my + c1) * (2 * vxy + c2) / ((mx**2 + my**2 + c1) * (vxx + vyy + c2)))
  ours = metrics.ssim_per_frame(
    jnp.asarray(x, jnp.float32)[..., None], jnp.asarray(y, jnp.float32)[..., None]
  )
  np.testing.assert_allclose(float(ours), ref, atol=1e-4)


def test_pixel_thresholds_match_reference_values():
  np.testing.assert_allclose(
    metrics.pixel_thresholds(), [0.32825, 0.46243, 0.55111, 0.61820, 0.72453], atol=1e-5
  )


def test_skill_scores_hand_computed():
  # TP=1, FN=3, FP=4, TN=2 and an empty table (0/0 everywhere -> 0).
  s = metrics.skill_scores([1, 0], [3, 0], [4, 0], [2, 10])
  np.testing.assert_allclose(s["pod"], [0.25, 0.0])
  np.testing.assert_allclose(s["far"], [0.8, 0.0])
  np.testing.assert_allclose(s["csi"], [1 / 8, 0.0])
  # 2(1*2 - 3*4) / ((1+3)(3+2) + (1+4)(4+2)) = -20 / 50
  np.testing.assert_allclose(s["hss"], [-0.4, 0.0])


def test_contingency_counts_use_greater_equal_and_pool_over_batch():
  thr30 = np.float32(rainfall.rainfall_to_pixel(30.0))
  below = np.nextafter(thr30, np.float32(0))
  lo, hi = 0.0, 1.0
  # Frame 0: pixel 1 of pred and pixel 6 of truth sit exactly on the threshold
  # (positive); pixel 7 of pred is just below it (negative).
  truth = np.array([hi, hi, hi, lo, lo, lo, thr30, lo], np.float32)
  pred = np.array([hi, thr30, lo, hi, lo, lo, lo, below], np.float32)
  # Split over two examples to check that counts are pooled, not averaged.
  t0 = truth.reshape(2, 1, 2, 2, 1)
  p0 = pred.reshape(2, 1, 2, 2, 1)
  # Frame 1: no rain anywhere -> TP = FN = FP = 0 -> all scores NaN -> 0.
  t1 = np.zeros_like(t0)
  frames_t = np.concatenate([t0, t1], axis=1)
  frames_p = np.concatenate([p0, t1], axis=1)
  stats = _stats(frames_p, frames_t, None)
  i30 = rainfall.THRESHOLDS.index(30.0)
  np.testing.assert_array_equal(np.asarray(stats["hits"])[i30], [2, 0])
  np.testing.assert_array_equal(np.asarray(stats["misses"])[i30], [2, 0])
  np.testing.assert_array_equal(np.asarray(stats["false_alarms"])[i30], [1, 0])
  np.testing.assert_array_equal(np.asarray(stats["correct_negatives"])[i30], [3, 8])
  # At 0.5 mm/h the value just below the 30 mm/h threshold is a false alarm.
  i05 = rainfall.THRESHOLDS.index(0.5)
  np.testing.assert_array_equal(np.asarray(stats["false_alarms"])[i05], [2, 0])

  acc = metrics.EvalAccumulator()
  acc.update(stats)
  res = acc.result(in_len=1)
  np.testing.assert_allclose(res["per_frame"]["pod_30"], [0.5, 0.0])
  np.testing.assert_allclose(res["per_frame"]["far_30"], [1 / 3, 0.0])
  np.testing.assert_allclose(res["per_frame"]["csi_30"], [0.4, 0.0])
  # HSS = 2(2*3 - 2*1) / ((2+2)(2+3) + (2+1)(1+3)) = 8 / 32
  np.testing.assert_allclose(res["per_frame"]["hss_30"], [0.25, 0.0])
  np.testing.assert_allclose(res["all"]["csi_30"], 0.2)


def test_balancing_weights_and_b_mse_hand_computed():
  rain = [0.1, 1.0, 3.0, 7.0, 20.0, 50.0, 2.0, 30.0]  # the last two exactly on thresholds
  expected_w = np.array([1, 1, 2, 5, 10, 30, 2, 30], np.float64)
  truth = np.asarray(rainfall.rainfall_to_pixel(np.asarray(rain)), np.float32)
  np.testing.assert_array_equal(
    np.asarray(metrics.balancing_weights(jnp.asarray(truth))), expected_w
  )
  truth = truth.reshape(1, 1, 2, 4, 1)
  pred = truth - np.float32(0.1)
  stats = _stats(pred, truth, None)
  # sum(w) = 81; every error is 0.1.
  np.testing.assert_allclose(np.asarray(stats["b_mse"]), [81 * 0.01], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(stats["b_mae"]), [81 * 0.1], rtol=1e-4)


def test_copy_last_frame_baseline():
  frames = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1, 1) / 10
  pred = metrics.copy_last_frame_baseline(frames, in_len=3)
  # Outputs predict frames 1..4: copy frames 0, 1, 2, then repeat frame 2.
  np.testing.assert_array_equal(pred[0, :, 0, 0, 0], np.array([0, 1, 2, 2], np.float32) / 10)
  pred_j = metrics.copy_last_frame_baseline(jnp.asarray(frames), in_len=1)
  np.testing.assert_array_equal(np.asarray(pred_j)[0, :, 0, 0, 0], np.zeros(4))
  with pytest.raises(ValueError):
    metrics.copy_last_frame_baseline(frames, in_len=6)


def _hand_stats(mse_sums, count=2.0):
  num_frames = len(mse_sums)
  return {
    "count": np.float32(count),
    "mse": np.asarray(mse_sums, np.float32),
    "hits": np.ones((len(rainfall.THRESHOLDS), num_frames)) * np.arange(num_frames),
    "misses": np.ones((len(rainfall.THRESHOLDS), num_frames)),
    "false_alarms": np.zeros((len(rainfall.THRESHOLDS), num_frames)),
    "correct_negatives": np.ones((len(rainfall.THRESHOLDS), num_frames)),
  }


def test_all_and_future_protocols_select_frames():
  acc = metrics.EvalAccumulator()
  acc.update(_hand_stats([2.0, 4.0, 6.0, 8.0, 10.0]))  # per frame 1..5
  res = acc.result(in_len=3)
  assert res["paper_protocol"] == "all"
  assert res["frames"] == {"all": [0, 1, 2, 3, 4], "future": [2, 3, 4]}
  assert res["target_frame"] == [1, 2, 3, 4, 5]
  assert res["num_frames"] == 5 and res["num_examples"] == 2 and res["in_len"] == 3
  np.testing.assert_allclose(res["per_frame"]["mse"], [1, 2, 3, 4, 5])
  np.testing.assert_allclose(res["all"]["mse"], 3.0)
  np.testing.assert_allclose(res["future"]["mse"], 4.0)
  # csi per frame = t / (t + 1): 0, 1/2, 2/3, 3/4, 4/5
  csi = np.arange(5) / (np.arange(5) + 1)
  np.testing.assert_allclose(res["future"]["csi_30"], csi[2:].mean())
  np.testing.assert_allclose(res["all"]["csi_0.5"], csi.mean())
  with pytest.raises(ValueError):
    acc.result(in_len=6)


def test_accumulator_rejects_mismatched_batches():
  acc = metrics.EvalAccumulator()
  acc.update(_hand_stats([1.0, 2.0]))
  with pytest.raises(ValueError):
    acc.update(_hand_stats([1.0, 2.0, 3.0]))
  with pytest.raises(ValueError):
    metrics.EvalAccumulator().result(in_len=1)


def test_optional_stats_are_static_switches():
  pred, truth = _random_batch(5, shape=(2, 2, 12, 12, 1))
  stats = _stats(pred, truth, None, with_gdl=False, with_radar=False)
  assert set(stats) == {"count", "mse", "mae", "psnr", "ssim"}
  res = metrics.EvalAccumulator()
  res.update(stats)
  assert set(res.result(in_len=1)["all"]) == {"mse", "mae", "psnr", "ssim"}


def test_write_results(tmp_path):
  acc = metrics.EvalAccumulator()
  acc.update(_hand_stats([2.0, 4.0, 6.0]))
  res = acc.result(in_len=2)
  paths = metrics.write_results(res, str(tmp_path / "out"), "test")
  with open(paths["json"]) as f:
    assert json.load(f) == json.loads(json.dumps(res))
  with open(paths["csv"]) as f:
    lines = f.read().splitlines()
  assert lines[0] == "metric,all,future"
  assert len(lines) == 1 + len(res["all"])
  assert lines[1].startswith("mse,2.0,2.5")
  with open(paths["per_frame_csv"]) as f:
    rows = f.read().splitlines()
  assert len(rows) == 1 + 3
  assert rows[1].startswith("0,1,input,1.0") and rows[2].startswith("1,2,future,2.0")
  assert sorted(os.listdir(tmp_path / "out")) == ["test.csv", "test.json", "test_per_frame.csv"]


def test_train_metrics_collection_masked_average():
  loss = jnp.array([1.0, 2.0, 3.0, 100.0])
  mask = jnp.array([True, True, True, False])

  @jax.jit
  def step(loss):
    return metrics.TrainMetrics.single_from_model_output(
      loss=loss, mse=loss / 2, mae=loss / 4, mask=mask
    )

  m = step(loss).merge(step(loss + 1.0))
  out = m.compute()
  np.testing.assert_allclose(out["loss"], 2.5)  # mean of 1,2,3,2,3,4
  np.testing.assert_allclose(out["mse"], 1.25)
  np.testing.assert_allclose(out["mae"], 0.625)
