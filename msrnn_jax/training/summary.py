"""Summaries: TensorBoard event files, a JSONL log and a terminal progress line.

clu's ``metric_writers`` import TensorFlow (1.4 GB). By default we write
TensorBoard files with the lean ``tensorboardX``; if TensorFlow happens to be
installed, clu's default writer is used instead. Every scalar also goes to
``<workdir>/metrics.jsonl``, one JSON object per line.

A resumed run rewinds both logs to the restored checkpoint, so the steps
between that checkpoint and the interruption are not logged twice:
``metrics.jsonl`` is cut back to what it held when the checkpoint was saved,
and tensorboardX marks the later steps of the old event files as purged
(``purge_step``; TensorBoard hides them). clu's writer has no purge.
"""

import importlib.util
import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util


def rewind_jsonl(path: str, step: int, lines: int | None = None) -> int:
  """Cuts a JSONL log back to a checkpoint; returns the number of lines kept.

  Keeps the lines with ``"step" <= step``, at most the first ``lines`` of them
  (the count when the checkpoint was saved: drops what came after the save at
  the same step, e.g. a final evaluation cut short). A line that does not
  parse (a write cut short) goes too. Replaces the file atomically.

  Args:
    path: the log; nothing happens if it does not exist.
    step: the restored step.
    lines: the log's line count recorded with the checkpoint, or None.
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    old = f.readlines()
  keep = []
  for line in old:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and record.get("step", 0) <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  if lines is not None:
    keep = keep[:lines]
  if keep != old:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(keep)


class Writer:
  """Scalars, images and hparams to TensorBoard + JSONL (process 0 only).

  Args:
    workdir: output directory.
    enabled: False on non-zero processes (writes nothing).
    backend: ``'auto'`` (clu if TensorFlow is importable, else tensorboardX),
      ``'tensorboardx'`` or ``'clu'``.
    resume_step: the step a resumed run restored; both logs are rewound to it
      (module docstring). None for a fresh run.
    resume_lines: ``lines`` recorded with that checkpoint (``rewind_jsonl``).

  Attributes:
    lines: lines in ``metrics.jsonl`` so far (record it with a checkpoint).
  """

  def __init__(self, workdir: str, enabled: bool = True, backend: str = "auto",
               resume_step: int | None = None, resume_lines: int | None = None):
    self.enabled = enabled
    self.lines = 0
    self._jsonl = None
    self._tb = None
    self._clu = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None:
      self.lines = rewind_jsonl(path, resume_step, resume_lines)
    elif os.path.exists(path):
      with open(path) as f:
        self.lines = sum(1 for _ in f)
    self._jsonl = open(path, "a")
    if backend == "auto":
      backend = "clu" if importlib.util.find_spec("tensorflow") else "tensorboardx"
    if backend == "clu":
      from clu import metric_writers  # imports TensorFlow
      self._clu = metric_writers.create_default_writer(workdir)
    else:
      from tensorboardX import SummaryWriter
      # Events at steps >= purge_step in earlier files are hidden by TensorBoard.
      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), purge_step=purge)

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    self.lines += 1
    if self._clu is not None:
      self._clu.write_scalars(step, scalars)
    else:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """Images ``[height, width, channels]``: uint8, or floats in [0, 1]."""
    if not self.enabled:
      return
    images = {k: v if v.dtype == np.uint8 else np.clip(v, 0.0, 1.0) for k, v in images.items()}
    if self._clu is not None:
      self._clu.write_images(step, {k: v[None] for k, v in images.items()})
    else:
      for k, v in images.items():
        self._tb.add_image(k, v, step, dataformats="HWC")

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    if not self.enabled:
      return
    flat = {k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in traverse_util.flatten_dict(hparams, sep=".").items()}
    if self._clu is not None:
      self._clu.write_hparams(flat)
    else:
      self._tb.add_text("hparams", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())), 0)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
    if self._clu is not None:
      self._clu.close()


class Progress:
  """A live terminal line: step, the values given (loss, the scheduled-sampling
  probability of feeding truth, ``p_truth``), steps/s and the time left.

  On a terminal the line is rewritten in place; otherwise (logs, CI) one line
  is printed per report.
  """

  def __init__(self, total_steps: int, start_step: int = 0, stream=None):
    self.total = total_steps
    self.stream = stream or sys.stderr
    self._t0 = time.time()
    self._s0 = start_step
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def rate(self, step: int) -> float:
    dt = time.time() - self._t0
    return (step - self._s0) / dt if dt > 0 else 0.0

  def report(self, step: int, **values: float) -> str:
    rate = self.rate(step)
    left = (self.total - step) / rate if rate > 0 else float("nan")
    parts = [f"step {step}/{self.total}"] + [f"{k} {v:.4g}" for k, v in values.items()]
    parts += [f"{rate:.3g} steps/s", f"{_fmt_time(left)} left"]
    line = " | ".join(parts)
    if self._tty:
      self.stream.write("\r" + line.ljust(100))
      if step >= self.total:
        self.stream.write("\n")
    else:
      self.stream.write(line + "\n")
    self.stream.flush()
    return line


def _fmt_time(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class DivergenceWarning:
  """Warns (once) when the logged training loss grows far beyond its first logged value.

  A learning rate far too high often does not make the loss non-finite: it
  settles at many times its starting value, and the run would end as if
  nothing were wrong.

  Args:
    learning_rate: named in the warning.
    factor: how many times the first logged loss counts as diverged.
  """

  def __init__(self, learning_rate: float, factor: float = 10.0):
    self.learning_rate = learning_rate
    self.factor = factor
    self.first: float | None = None
    self.warned = False

  def update(self, step: int, loss: float) -> None:
    if self.first is None:
      self.first = loss
      return
    if not self.warned and loss > self.factor * self.first > 0:
      self.warned = True
      logging.warning(
          "training loss %.4g at step %d is %.0fx its first logged value %.4g: training is "
          "diverging; stop it and lower train.learning_rate (now %g).", loss, step,
          loss / self.first, self.first, self.learning_rate)
