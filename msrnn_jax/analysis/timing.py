"""Timing for the experiments: interleaved rounds, ratios, and the machine they ran on.

Every speed figure of the project is a ratio of two things measured side by side:
one call of each per round, so that the drifts of a shared machine hit all of them
alike, and the median of the per-round ratios with its range.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def interleaved(calls: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                budget_s: float | None = None) -> tuple[dict[str, list[float]],
                                                        dict[str, list[float]]]:
  """Times each call once per round, in turn, after ``warmup`` untimed calls each.

  Args:
    calls: name -> a function of no arguments; its result is waited for
      (``jax.block_until_ready``), so asynchronous dispatch is timed in full.
    rounds: timed rounds.
    warmup: untimed calls of each before the first round (compilation, page faults).
    budget_s: stop timing a call once its timed seconds add up to more than this.

  Returns:
    ``(wall, cpu)``: per call, the wall seconds and the process CPU seconds (all
    threads) of each timed call. On a shared machine CPU seconds do not count
    time spent waiting for a core.
  """
  for fn in calls.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  wall: dict[str, list[float]] = {name: [] for name in calls}
  cpu: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, fn in calls.items():
      if budget_s is not None and sum(wall[name]) > budget_s:
        continue
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return wall, cpu


def ratio(times: list[float], reference: list[float]) -> dict[str, Any]:
  """Round-by-round ratios ``times / reference``: median, range and the ratios."""
  ratios = [t / r for t, r in zip(times, reference, strict=True)]
  return {"step_s": statistics.median(times), "ratio_median": statistics.median(ratios),
          "ratio_min": min(ratios), "ratio_max": max(ratios), "ratios": ratios}


def cpu_model() -> str:
  """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
  """What a measurement ran on: CPU, the cores this process may use, JAX version, platform."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"cpu": cpu_model(), "cores": cores, "jax": jax.__version__,
          "platform": jax.default_backend()}
