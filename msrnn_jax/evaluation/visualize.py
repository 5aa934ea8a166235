"""Figures for evaluation and prediction: per-frame metric plots, frame grids, GIFs.

Image grids are composed directly in numpy (pixel-exact, no figure margins) and
written with imageio; only the metric plot uses matplotlib, through the
object-oriented ``Figure`` API with the Agg canvas so that the global pyplot
backend of the calling process is never touched.

Frames are float arrays in [0, 1] with a trailing channel axis. Display rule
(see :func:`to_rgb`): C = 1 is shown in grey, C = 3 as RGB, and any other C
(e.g. the 2 in/out flow channels of TaxiBJ) as its channels side by side in
grey, separated by a white gap, so no channel is silently dropped. Small frames
are enlarged by nearest-neighbour repetition to at least ``MIN_DISPLAY_SIDE``
pixels (a 32x32 frame drawn 32 pixels wide is too small to read).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import imageio.v3 as iio
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# White separator between tiles, in pixels.
GAP = 2
_BACKGROUND = 255
# Metrics drawn by plot_per_frame, in this order, when present.
PLOT_METRICS = ("mse", "ssim", "psnr", "csi_30", "hss_30")
# The automatic scale draws each frame's longer side at least this many pixels.
MIN_DISPLAY_SIDE = 128


def display_scale(height: int, width: int) -> int:
  """The integer upscaling that draws the longer side at least ``MIN_DISPLAY_SIDE`` pixels."""
  return max(1, math.ceil(MIN_DISPLAY_SIDE / max(height, width, 1)))


def to_rgb(frames: Any, scale: int | None = None) -> np.ndarray:
  """Converts frames to displayable uint8 RGB tiles.

  Args:
    frames: <float>[..., height, width, channels] in [0, 1] (clipped).
    scale: integer nearest-neighbour upscaling factor; None: ``display_scale``.

  Returns:
    <uint8>[..., height * scale, tile_width, 3], where tile_width is
    ``width * scale`` for C in {1, 3} and ``C * width * scale + (C - 1) * GAP``
    otherwise.
  """
  x = np.clip(np.asarray(frames, np.float32), 0.0, 1.0)
  x = np.rint(x * 255.0).astype(np.uint8)
  if scale is None:
    scale = display_scale(x.shape[-3], x.shape[-2])
  if scale > 1:
    x = np.repeat(np.repeat(x, scale, axis=-3), scale, axis=-2)
  channels = x.shape[-1]
  if channels == 3:
    return x
  if channels == 1:
    return np.repeat(x, 3, axis=-1)
  parts = []
  for c in range(channels):
    if c:
      parts.append(np.full((*x.shape[:-2], GAP), _BACKGROUND, np.uint8))
    parts.append(x[..., c])
  return np.repeat(np.concatenate(parts, axis=-1)[..., None], 3, axis=-1)


def _compose(tiles: Sequence[Sequence[np.ndarray | None]]) -> np.ndarray:
  """Lays out RGB tiles of one size on a white canvas; None leaves a blank cell.

  Args:
    tiles: rows of <uint8>[tile_h, tile_w, 3] tiles (rows may differ in length).

  Returns:
    <uint8>[rows * tile_h + (rows - 1) * GAP, cols * tile_w + (cols - 1) * GAP, 3].
  """
  shape = next(t.shape for row in tiles for t in row if t is not None)
  th, tw = shape[0], shape[1]
  rows = len(tiles)
  cols = max(len(row) for row in tiles)
  canvas = np.full(
    (rows * th + (rows - 1) * GAP, cols * tw + (cols - 1) * GAP, 3), _BACKGROUND, np.uint8
  )
  for r, row in enumerate(tiles):
    for c, tile in enumerate(row):
      if tile is not None:
        y, x = r * (th + GAP), c * (tw + GAP)
        canvas[y : y + th, x : x + tw] = tile
  return canvas


def _with_progress_bar(grid: np.ndarray, done: int, total: int, shade: int) -> np.ndarray:
  """``grid`` above a bar filled ``done / total`` of its width in grey ``shade``.

  The bar also keeps consecutive GIF frames distinct, so the writer never merges them.
  """
  bar = np.full((GAP + 3, grid.shape[1], 3), _BACKGROUND, np.uint8)
  bar[GAP:, :int(round(grid.shape[1] * done / total))] = shade
  return np.concatenate([grid, bar], axis=0)


def save_sequences(
  frames: Any,
  path_png: str,
  path_gif: str | None = None,
  context_len: int = 0,
  scale: int | None = None,
  gif_duration_ms: int = 200,
) -> np.ndarray:
  """Saves sequences as a PNG (one row each) and optionally a GIF (one frame per step).

  Args:
    frames: <float>[num_seq, time, height, width, channels] in [0, 1].
    path_png: output PNG path; row n is sequence n, time left to right.
    path_gif: optional output GIF path: animation frame t shows frame t of
      every sequence, one above the other, over a progress bar that is light
      for the first ``context_len`` (given) frames and dark after them.
    context_len: frames at the start of each sequence that were given.
    scale: integer nearest-neighbour upscaling factor; None: ``display_scale``.
    gif_duration_ms: display time of each GIF frame.

  Returns:
    The PNG image, <uint8>[num_seq * tile_h + (num_seq - 1) * GAP,
    time * tile_w + (time - 1) * GAP, 3].
  """
  frames = np.asarray(frames)
  if frames.ndim != 5:
    raise ValueError(f"frames must be [N, T, H, W, C], got shape {frames.shape}")
  tiles = to_rgb(frames, scale)
  image = _compose([list(row) for row in tiles])
  iio.imwrite(path_png, image)
  if path_gif is not None:
    steps = frames.shape[1]
    animation = [_with_progress_bar(_compose([[tile] for tile in tiles[:, t]]), t + 1, steps,
                                    160 if t < context_len else 64) for t in range(steps)]
    iio.imwrite(path_gif, np.stack(animation), duration=gif_duration_ms, loop=0)
  return image


def prediction_grid(
  context: Any,
  truth: Any,
  pred: Any,
  path_png: str,
  path_gif: str | None = None,
  scale: int | None = None,
  gif_duration_ms: int = 200,
) -> np.ndarray:
  """Saves context / truth / prediction frames for a few sequences.

  PNG layout: three rows per sequence, top to bottom: the context frames, the
  true future frames and the predicted future frames (truth and prediction
  aligned column by column; a shorter row is padded with white).

  GIF layout: one animation frame per future time step; each sequence is one
  row ``truth | prediction``, with a thin progress bar under the grid.

  Args:
    context: <float>[num_seq, in_len, height, width, channels] in [0, 1].
    truth: <float>[num_seq, out_len, height, width, channels] in [0, 1].
    pred: <float>[num_seq, out_len, height, width, channels]; clipped to [0, 1].
    path_png: output PNG path.
    path_gif: optional output GIF path.
    scale: integer nearest-neighbour upscaling factor; None: ``display_scale``.
    gif_duration_ms: display time of each GIF frame.

  Returns:
    The PNG image, <uint8>[3 * num_seq * tile_h + (3 * num_seq - 1) * GAP,
    max(in_len, out_len) * tile_w + (max(in_len, out_len) - 1) * GAP, 3].
  """
  context, truth, pred = (np.asarray(a) for a in (context, truth, pred))
  if truth.shape != pred.shape or truth.ndim != 5:
    raise ValueError(
      f"truth and pred must both be [N, T, H, W, C]; got {truth.shape}, {pred.shape}"
    )
  if (
    context.ndim != 5 or context.shape[0] != truth.shape[0] or context.shape[2:] != truth.shape[2:]
  ):
    raise ValueError(f"context {context.shape} does not match truth {truth.shape}")
  ctx_rgb, truth_rgb, pred_rgb = (to_rgb(a, scale) for a in (context, truth, pred))
  rows = []
  for n in range(truth.shape[0]):
    rows += [list(ctx_rgb[n]), list(truth_rgb[n]), list(pred_rgb[n])]
  image = _compose(rows)
  iio.imwrite(path_png, image)

  if path_gif is not None:
    out_len = truth.shape[1]
    grids = [_compose([[truth_rgb[n, t], pred_rgb[n, t]] for n in range(truth.shape[0])])
             for t in range(out_len)]
    animation = [_with_progress_bar(grid, t + 1, out_len, 64) for t, grid in enumerate(grids)]
    iio.imwrite(path_gif, np.stack(animation), duration=gif_duration_ms, loop=0)
  return image


def plot_per_frame(
  result: Mapping[str, Any], path: str, metrics: Sequence[str] = PLOT_METRICS
) -> list[str]:
  """Plots per-frame metrics of an evaluation result to a PNG.

  One panel per metric present in ``result['per_frame']`` (by default MSE,
  SSIM, PSNR, CSI-30 and HSS-30), against the predicted frame index; a dashed
  line separates the input-phase predictions from the future frames, and the
  legend gives the 'all' and 'future' means.

  Args:
    result: output of ``metrics.EvalAccumulator.result``.
    path: output PNG path.
    metrics: metric keys to plot, skipped when absent.

  Returns:
    The list of metric keys that were plotted.
  """
  per_frame = result["per_frame"]
  names = [m for m in metrics if m in per_frame]
  if not names:
    raise ValueError(f"none of {list(metrics)} in result['per_frame']")
  target = np.asarray(result["target_frame"])
  in_len = int(result["in_len"])
  fig = Figure(figsize=(4.0 * len(names), 3.2), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names, strict=True):
    ax.plot(target, per_frame[name], marker="o", markersize=3, label=name)
    # Output t predicts frame t + 1: frames <= in_len - 1 are one-step
    # predictions inside the context, frames >= in_len are the future.
    ax.axvline(in_len - 0.5, color="gray", linestyle="--", label=f"first future frame ({in_len})")
    ax.set_title(
      f"{name}: all {result['all'][name]:.4g}, future {result['future'][name]:.4g}", fontsize=9
    )
    ax.set_xlabel("predicted frame index")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.savefig(path)
  return names
