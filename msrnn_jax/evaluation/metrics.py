"""Evaluation metrics for next-frame video prediction, following MS-RNN.

Two layers:

* :func:`frame_stats` runs on device (pure ``jnp``, jittable) and returns
  per-frame *sums* over the valid examples of one batch, so that batches
  (including a padded last batch) accumulate exactly.
* :class:`EvalAccumulator` adds those sums on the host in float64 and turns them
  into per-frame metrics and the two averaging protocols (``all``/``future``).

Conventions (the MS-RNN reference, see docs): a model run on a sequence of
``S = in_len + out_len`` frames returns ``S - 1`` next-frame predictions;
``pred[:, t]`` predicts frame ``t + 1`` and is compared with ``frames[:, t + 1]``.
Frames are float arrays ``[batch, frames, height, width, channels]`` in [0, 1].

* MSE / MAE: sum over (H, W, C) of the squared / absolute error, averaged over
  examples ("per-frame MSE", the scale of the training loss).
* PSNR: per example and frame ``10 log10(1 / (mean_HWC sq. err + 1e-5))``.
* SSIM: Wang et al. / TF-style single-scale SSIM, 11x11 Gaussian window with
  sigma 1.5 (shrunk to ``min(11, H, W)`` with sigma scaled in proportion),
  K1 = 0.01, K2 = 0.03, data range 1, 'valid' filtering, mean over the map.
* GDL: sum over pixels of ``||dy pred| - |dy gt|| + ||dx pred| - |dx gt||``.
* B-MSE / B-MAE: squared / absolute error weighted per pixel by the HKO rain bin
  of the *truth*, summed over pixels.
* POD / FAR / CSI / HSS: hits, misses, false alarms and correct negatives per
  rain threshold (mm/h, converted to pixels; positive means ``value >= thr``),
  pooled over the whole test set per frame, NaN set to 0, then averaged over
  frames.
"""

import csv
import functools
import json
import operator
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from msrnn_jax.data import rainfall

# SSIM constants of Wang et al. (2004), as in the TF/MS-SSIM reference code.
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Added to the per-frame mean squared error inside PSNR (reference formula), so
# a perfect prediction gives 50 dB instead of infinity.
PSNR_EPS = 1e-5

# Which averaging protocol the MS-RNN paper's tables use (see EvalAccumulator).
PAPER_PROTOCOL = "all"

_SCALAR_METRICS = ("mse", "mae", "psnr", "ssim", "gdl", "b_mse", "b_mae")
_COUNT_KEYS = ("hits", "misses", "false_alarms", "correct_negatives")
_SKILL_SCORES = ("pod", "far", "csi", "hss")


def pixel_thresholds() -> np.ndarray:
  """HKO rain thresholds converted to pixel values in [0, 1].

  Returns:
    <float64>[len(THRESHOLDS)] pixel thresholds, e.g. 0.5 mm/h -> 0.32825.
  """
  return np.asarray(rainfall.rainfall_to_pixel(np.asarray(rainfall.THRESHOLDS, np.float64)))


# --------------------------------------------------------------------------------------------------
# Device side: per-batch sums.


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian; the 2-D SSIM window is its outer product.

  Taps sit at ``i - (size - 1) / 2``, which for even sizes gives the half-pixel
  offsets of the reference's ``_FSpecialGauss``. Normalising the 1-D kernel
  normalises the separable 2-D one too.
  """
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return g / g.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
  """'valid' 1-D correlation of ``x`` with ``taps`` along ``axis``.

  Written as a sum of shifted slices rather than a convolution op: with 11 taps
  this fuses into a single elementwise kernel on any backend, and the window
  is symmetric so correlation and convolution coincide.
  """
  n = x.shape[axis] - len(taps) + 1
  return functools.reduce(operator.add, (float(w) * jax.lax.slice_in_dim(x, i, i + n, axis=axis)
                                         for i, w in enumerate(taps)))


def ssim_per_frame(pred: jax.Array, truth: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Single-scale SSIM per (example, frame), TF/Wang style with 'valid' filtering.

  Args:
    pred: <float>[..., height, width, channels] images.
    truth: same shape as ``pred``.
    max_val: data range of the images.

  Returns:
    <float>[...] SSIM, the mean of the valid SSIM map over height, width and
    channels (equal to the mean of per-channel SSIMs, as all maps have the same
    size).
  """
  height, width = pred.shape[-3], pred.shape[-2]
  size = min(SSIM_FILTER_SIZE, height, width)
  # Shrinking the window for tiny images keeps sigma/size fixed (reference).
  sigma = size * SSIM_FILTER_SIGMA / SSIM_FILTER_SIZE
  taps = _gaussian_window(size, sigma)

  def blur(x):
    return _filter_valid(_filter_valid(x, taps, axis=-3), taps, axis=-2)

  mu_x = blur(pred)
  mu_y = blur(truth)
  mu_xx = mu_x * mu_x
  mu_yy = mu_y * mu_y
  mu_xy = mu_x * mu_y
  var_x = blur(pred * pred) - mu_xx
  var_y = blur(truth * truth) - mu_yy
  cov = blur(pred * truth) - mu_xy
  c1 = (SSIM_K1 * max_val) ** 2
  c2 = (SSIM_K2 * max_val) ** 2
  ssim_map = ((2.0 * mu_xy + c1) * (2.0 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
  return jnp.mean(ssim_map, axis=(-3, -2, -1))


def _gdl_per_frame(pred: jax.Array, truth: jax.Array) -> jax.Array:
  """Gradient difference loss per (example, frame), forward differences, summed."""
  dy_p = jnp.abs(jnp.diff(pred, axis=-3))
  dy_t = jnp.abs(jnp.diff(truth, axis=-3))
  dx_p = jnp.abs(jnp.diff(pred, axis=-2))
  dx_t = jnp.abs(jnp.diff(truth, axis=-2))
  return jnp.sum(jnp.abs(dy_p - dy_t), axis=(-3, -2, -1)) + jnp.sum(
    jnp.abs(dx_p - dx_t), axis=(-3, -2, -1)
  )


def balancing_weights(truth: jax.Array) -> jax.Array:
  """Per-pixel B-MSE/B-MAE weights from the rain bin of the truth.

  Args:
    truth: <float>[...] pixel values in [0, 1].

  Returns:
    <float>[...] weights: BALANCING_WEIGHTS[k] for truth in bin k, where bin k
    is [thr_{k-1}, thr_k) in rain rate (bin 0 below the first threshold, the
    last bin at or above the last threshold).
  """
  thresholds = pixel_thresholds()
  w = rainfall.BALANCING_WEIGHTS
  out = jnp.full(truth.shape, w[0], truth.dtype)
  # Adding the weight increment at each crossed threshold gives the bin weight.
  for k, thr in enumerate(thresholds):
    out = out + (w[k + 1] - w[k]) * (truth >= jnp.asarray(thr, truth.dtype)).astype(truth.dtype)
  return out


def frame_stats(
  pred: jax.Array,
  truth: jax.Array,
  valid: jax.Array | None = None,
  *,
  with_gdl: bool = True,
  with_radar: bool = True,
) -> dict[str, jax.Array]:
  """Per-frame metric sums over the valid examples of one batch (jittable).

  ``with_gdl`` and ``with_radar`` change the output structure, so they must be
  static under ``jax.jit`` (e.g. ``jax.jit(frame_stats, static_argnames=...)``
  or ``functools.partial``).

  Args:
    pred: <float>[batch, frames, height, width, channels] predictions; clipped
      to [0, 1] here (the model head is linear and unbounded).
    truth: <float>[batch, frames, height, width, channels] targets in [0, 1],
      aligned with ``pred`` (``frames[:, 1:]`` for a full model output).
    valid: <bool>[batch] False for padding rows, which contribute nothing.
      None means all rows are valid.
    with_gdl: also return the gradient difference loss sums.
    with_radar: also return HKO B-MSE/B-MAE and contingency counts (the
      reference computes these for every dataset).

  Returns:
    Dict of sums over valid examples:
      count: <float32>[] number of valid examples.
      mse, mae, psnr, ssim: <float32>[frames]; mse/mae are summed over
        (H, W, C) per example before summing over examples.
      gdl: <float32>[frames] (if with_gdl).
      b_mse, b_mae: <float32>[frames] (if with_radar).
      hits, misses, false_alarms, correct_negatives:
        <int32>[len(THRESHOLDS), frames] pixel counts (if with_radar).
  """
  if pred.shape != truth.shape or pred.ndim != 5:
    raise ValueError(
      f"pred and truth must both be [B, F, H, W, C]; got {pred.shape}, {truth.shape}"
    )
  dtype = jnp.promote_types(jnp.result_type(pred, truth), jnp.float32)
  pred = jnp.clip(jnp.asarray(pred, dtype), 0.0, 1.0)
  truth = jnp.asarray(truth, dtype)
  batch = pred.shape[0]
  if valid is None:
    valid = jnp.ones((batch,), bool)
  valid = jnp.asarray(valid, bool).reshape(batch)
  weight = valid.astype(dtype)

  def masked_sum(per_example):  # [B, F] -> [F]
    # where() rather than multiply so NaN/inf in padding rows cannot leak in.
    return jnp.sum(jnp.where(valid[:, None], per_example, 0.0), axis=0)

  err = pred - truth
  sq = err * err
  ab = jnp.abs(err)
  hwc = (2, 3, 4)
  stats = {
    "count": jnp.sum(weight),
    "mse": masked_sum(jnp.sum(sq, axis=hwc)),
    "mae": masked_sum(jnp.sum(ab, axis=hwc)),
    "psnr": masked_sum(10.0 * jnp.log10(1.0 / (jnp.mean(sq, axis=hwc) + PSNR_EPS))),
    "ssim": masked_sum(ssim_per_frame(pred, truth)),
  }
  if with_gdl:
    stats["gdl"] = masked_sum(_gdl_per_frame(pred, truth))
  if with_radar:
    bw = balancing_weights(truth)
    stats["b_mse"] = masked_sum(jnp.sum(bw * sq, axis=hwc))
    stats["b_mae"] = masked_sum(jnp.sum(bw * ab, axis=hwc))
    counts = {k: [] for k in _COUNT_KEYS}
    row_mask = valid[:, None, None, None, None]
    for thr in pixel_thresholds():
      thr = jnp.asarray(thr, dtype)
      p = pred >= thr
      t = truth >= thr
      for key, hit in (
        ("hits", p & t),
        ("misses", ~p & t),
        ("false_alarms", p & ~t),
        ("correct_negatives", ~p & ~t),
      ):
        counts[key].append(jnp.sum(hit & row_mask, axis=(0, 2, 3, 4), dtype=jnp.int32))
    for key in _COUNT_KEYS:
      stats[key] = jnp.stack(counts[key])
  return stats


def copy_last_frame_baseline(frames: Any, in_len: int) -> Any:
  """Next-frame predictions of the copy-last-frame baseline, model layout.

  In the input phase (``t < in_len``) frame ``t + 1`` is predicted by frame
  ``t`` (the last frame seen); in the future phase the last context frame
  ``in_len - 1`` is repeated. So ``pred[:, t] = frames[:, min(t, in_len - 1)]``.

  Args:
    frames: <float>[batch, seq_len, height, width, channels], numpy or jax.
    in_len: number of context frames, 1 <= in_len <= seq_len.

  Returns:
    <float>[batch, seq_len - 1, height, width, channels], same array type.
  """
  seq_len = frames.shape[1]
  if not 1 <= in_len <= seq_len:
    raise ValueError(f"in_len must be in [1, {seq_len}], got {in_len}")
  index = np.minimum(np.arange(seq_len - 1), in_len - 1)
  return frames[:, index]


def blank_frame_baseline(frames: Any) -> Any:
  """Next-frame predictions of the blank-frame baseline: all zeros (the background).

  On sparse data (moving digits on black) a model that has learned nothing
  but to fade its output scores close to this; a useful model is well below it.

  Args:
    frames: <float>[batch, seq_len, height, width, channels], numpy or jax.

  Returns:
    <float>[batch, seq_len - 1, height, width, channels] zeros, same array type.
  """
  return frames[:, 1:] * 0


# Trivial predictors every evaluation reports beside the model, by name.
BASELINES = {
    "copy_last": copy_last_frame_baseline,
    "blank": lambda frames, in_len: blank_frame_baseline(frames),
}


# --------------------------------------------------------------------------------------------------
# Host side: exact accumulation and the two averaging protocols.


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with NaN (0/0) and inf mapped to 0, like the reference's nan_to_num."""
  with np.errstate(divide="ignore", invalid="ignore"):
    out = num / den
  return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def skill_scores(
  hits: Any, misses: Any, false_alarms: Any, correct_negatives: Any
) -> dict[str, np.ndarray]:
  """POD, FAR, CSI and HSS from (pooled) contingency counts, NaN -> 0.

  Args:
    hits: TP counts, any shape; the others have the same shape.
    misses: FN counts.
    false_alarms: FP counts.
    correct_negatives: TN counts.

  Returns:
    Dict with float64 arrays 'pod', 'far', 'csi', 'hss' of the input shape.
  """
  tp, fn, fp, tn = (
    np.asarray(a, np.float64) for a in (hits, misses, false_alarms, correct_negatives)
  )
  return {
    "pod": _safe_div(tp, tp + fn),
    "far": _safe_div(fp, tp + fp),
    "csi": _safe_div(tp, tp + fn + fp),
    "hss": _safe_div(2.0 * (tp * tn - fn * fp), (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)),
  }


class EvalAccumulator:
  """Adds :func:`frame_stats` outputs on the host and computes final metrics.

  Sums are kept in float64 so that many batches add up exactly (counts up to
  2**53), and padding rows were already excluded on device.

  Usage::

    acc = EvalAccumulator()
    for batch in test_batches:
      acc.update(stats_fn(pred, batch_truth, batch_valid))
    result = acc.result(in_len=10)
    result['all']['mse'], result['future']['csi_30'], result['per_frame']['ssim']
  """

  def __init__(self):
    self._sums: dict[str, np.ndarray] = {}

  @property
  def count(self) -> float:
    """Number of valid examples accumulated so far."""
    return float(self._sums.get("count", 0.0))

  def update(self, stats: Mapping[str, Any]) -> None:
    """Adds one batch of sums (a dict from :func:`frame_stats`)."""
    stats = {k: np.asarray(jax.device_get(v), np.float64) for k, v in stats.items()}
    if not self._sums:
      self._sums = {k: v.copy() for k, v in stats.items()}
      return
    if set(stats) != set(self._sums):
      raise ValueError(f"stat keys changed: {sorted(stats)} vs {sorted(self._sums)}")
    for k, v in stats.items():
      if v.shape != self._sums[k].shape:
        raise ValueError(f"shape of {k!r} changed: {v.shape} vs {self._sums[k].shape}")
      self._sums[k] += v

  def per_frame(self) -> dict[str, np.ndarray]:
    """Per-frame metrics, <float64>[frames] each.

    Keys: the available ones of mse, mae, psnr, ssim, gdl, b_mse, b_mae (sum
    divided by the example count) and, for radar stats, pod_<thr>, far_<thr>,
    csi_<thr>, hss_<thr> for each threshold (from the pooled counts).
    """
    count = self.count
    if count <= 0:
      raise ValueError("no valid examples accumulated")
    out = {k: self._sums[k] / count for k in _SCALAR_METRICS if k in self._sums}
    if "hits" in self._sums:
      scores = skill_scores(*(self._sums[k] for k in _COUNT_KEYS))
      for i, thr in enumerate(rainfall.THRESHOLDS):
        for name in _SKILL_SCORES:
          out[f"{name}_{thr:g}"] = scores[name][i]  # e.g. csi_0.5, csi_30
    return out

  def result(self, in_len: int) -> dict[str, Any]:
    """Final metrics under both averaging protocols (JSON-serialisable).

    Args:
      in_len: number of context frames of the evaluated sequences. Output
        index t predicts frame t + 1, so the predictions of future frames are
        t = in_len - 1 .. F - 1.

    Returns:
      Dict with
        'all': {metric: float} mean over all F evaluated frames, i.e. the
          one-step-shifted frames 1..S-1 including the in_len - 1 input-phase
          predictions. This is the MS-RNN paper's headline number.
        'future': {metric: float} mean over the predictions of the out_len
          future frames only.
        'per_frame': {metric: list[float]} of length F.
        'paper_protocol': 'all'.
        'protocols': {'all'|'future': description}.
        'frames': {'all'|'future': list of output indices t used}.
        'target_frame': list, frame index t + 1 predicted by output t.
        'in_len', 'num_frames' (F), 'num_examples'.
    """
    per_frame = self.per_frame()
    num_frames = next(iter(per_frame.values())).shape[0]
    if not 1 <= in_len <= num_frames:
      raise ValueError(f"in_len must be in [1, {num_frames}] for {num_frames} frames, got {in_len}")
    frames = {"all": np.arange(num_frames), "future": np.arange(in_len - 1, num_frames)}
    result: dict[str, Any] = {}
    for protocol, idx in frames.items():
      result[protocol] = {k: float(np.mean(v[idx])) for k, v in per_frame.items()}
    result["per_frame"] = {k: [float(x) for x in v] for k, v in per_frame.items()}
    result["paper_protocol"] = PAPER_PROTOCOL
    result["protocols"] = {
      "all": (
        "mean over all evaluated frames (one-step-shifted frames 1..S-1, including the "
        "in_len-1 input-phase predictions); the MS-RNN paper's headline"
      ),
      "future": "mean over the predictions of the future frames in_len..S-1 only",
    }
    result["frames"] = {k: [int(i) for i in v] for k, v in frames.items()}
    result["target_frame"] = [int(i) + 1 for i in range(num_frames)]
    result["in_len"] = int(in_len)
    result["num_frames"] = int(num_frames)
    result["num_examples"] = int(round(self.count))
    return result


def write_results(result: Mapping[str, Any], workdir: str, name: str,
                  baselines: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
  """Writes a result of :meth:`EvalAccumulator.result` as JSON and CSV.

  Files: ``<name>.json`` (everything), ``<name>.csv`` (one row per metric,
  columns all/future, then the same two per baseline) and
  ``<name>_per_frame.csv`` (one row per frame).

  Args:
    result: the result dict.
    workdir: output directory (created if missing).
    name: file name stem, e.g. 'test' or 'test_copy_last'.
    baselines: optional name -> result of trivial predictors on the same
      data; their all/future metrics go into the JSON (key ``baselines``)
      and the CSV beside the model's.

  Returns:
    Dict with the paths under keys 'json', 'csv', 'per_frame_csv'.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = {
    "json": os.path.join(workdir, f"{name}.json"),
    "csv": os.path.join(workdir, f"{name}.csv"),
    "per_frame_csv": os.path.join(workdir, f"{name}_per_frame.csv"),
  }
  baselines = dict(baselines or {})
  record = dict(result)
  if baselines:
    record["baselines"] = {b: {p: r[p] for p in ("all", "future")} for b, r in baselines.items()}
  with open(paths["json"], "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  metric_names = list(result["all"])
  columns = [("", result)] + [(f"{b}_", r) for b, r in baselines.items()]
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["metric"] + [f"{c}{p}" for c, _ in columns for p in ("all", "future")])
    for k in metric_names:
      writer.writerow([k] + [repr(r[p][k]) for _, r in columns for p in ("all", "future")])
  future = set(result["frames"]["future"])
  with open(paths["per_frame_csv"], "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["output_index", "target_frame", "phase", *metric_names])
    for t, target in enumerate(result["target_frame"]):
      phase = "future" if t in future else "input"
      writer.writerow([t, target, phase, *(repr(result["per_frame"][k][t]) for k in metric_names)])
  return paths


# --------------------------------------------------------------------------------------------------
# clu metric collections for the training loop. Each field averages a
# per-example value (shape [batch]); pass mask=<bool>[batch] to drop padding.
# No `from __future__ import annotations` in this module: clu reads these
# annotations as classes.


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Running means of the training loss and its MSE/MAE terms."""

  loss: clu_metrics.Average.from_output("loss")
  mse: clu_metrics.Average.from_output("mse")
  mae: clu_metrics.Average.from_output("mae")
