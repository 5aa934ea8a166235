"""``model.remat='auto'``: rematerialise only when a training step would not fit.

Storing every time step's activations (``remat='none'``) is the fastest
training step; recomputing them in the backward pass (``remat='step'``)
costs about a third more time and cuts the step's memory several-fold
(docs/performance.md). ``'auto'`` compiles the step without remat and keeps
it when XLA's memory figure for it (temporaries, arguments and outputs, per
device) is within ``FRACTION`` of the memory budget. Otherwise, where the
model's time loop is unrolled (``scan_unroll='auto'`` at large frames), it
tries the same step with the loop rolled (at such frames it keeps less, and
it is faster than remat); then it builds the step with ``remat='step'``. The check
costs no extra compile when the step fits: ``jax.jit`` reuses the executable
compiled for the check.

The budget is the device's memory limit where the runtime reports one (GPU,
TPU); on CPU, the host memory available when the run starts (``MemAvailable``,
capped by the cgroup's limit), shared by the process's devices. A
multi-process run takes process 0's decision, so that every process compiles
the same program.
"""

import os
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# The share of the budget a step's compiled memory may take: the rest is the
# runtime, the data pipeline, evaluation's program and the checkpoint copies.
FRACTION = 0.8


def _host_available_bytes() -> float:
  """Host memory available now: ``MemAvailable``, capped by a cgroup v2 limit."""
  available = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = float(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      used = float(f.read())
    if limit != "max":
      available = min(available, float(limit) - used)
  except (OSError, ValueError):
    pass
  return available


def budget_bytes() -> float:
  """Memory one local device's training step may use (see the module docstring)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return float(stats["bytes_limit"])
  return _host_available_bytes() / jax.local_device_count()


def compiled_bytes(compiled) -> int:
  """XLA's per-device memory for one execution: temporaries, arguments and outputs."""
  m = compiled.memory_analysis()
  return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)


def fits(need: float, budget: float | None = None) -> bool:
  """Whether a step needing ``need`` bytes per device trains without remat."""
  return need <= FRACTION * (budget_bytes() if budget is None else budget)


def fitted_train_step(remat: str, build: Callable[[str], Callable], example_args: tuple,
                      budget: float | None = None,
                      rolled: Callable[[], Callable] | None = None) -> tuple[str, Callable]:
  """The remat mode a run trains with, and its jitted train step.

  Args:
    remat: ``config.model.remat``; anything but ``'auto'`` is used as is.
    build: ``remat -> jitted train step``.
    example_args: the step's arguments (real or ``jax.ShapeDtypeStruct``,
      with the shardings of the real ones), to compile it for.
    budget: bytes; None reads :func:`budget_bytes`.
    rolled: where ``build('none')``'s time loop is unrolled, ``() -> jitted
      train step`` without remat and with the loop rolled: the fallback
      tried before ``remat='step'``.

  Returns:
    ``(remat, train_step)``; ``'auto'`` becomes ``'none'`` or ``'step'``. The
    step is compiled for ``example_args``, so the caller can hand the
    compiler's freed memory back before the first step.
  """
  def compiled(step):
    return step, step.lower(*example_args).compile()

  if remat != "auto":
    return remat, compiled(build(remat))[0]
  budget = budget_bytes() if budget is None else budget
  # (remat, what the log calls it, builder), cheapest in time first.
  candidates = [("none", "remat='none'", lambda: build("none"))]
  if rolled is not None:
    candidates.append(("none", "remat='none' with the time loop rolled", rolled))
  candidates.append(("step", "remat='step'", lambda: build("step")))
  needs, fitted = [], None
  for i, (_, name, make) in enumerate(candidates[:-1]):
    step, executable = compiled(make())
    need = compiled_bytes(executable)
    needs.append(f"{need / 1e9:.2f} GB with {name}")
    if fits(need, budget):
      fitted = i
      break
  choice = len(candidates) - 1 if fitted is None else fitted
  if jax.process_count() > 1:  # process 0's choice, so that every process compiles one program
    choice = int(multihost_utils.broadcast_one_to_all(np.int32(choice)))
  mode, name, make = candidates[choice]
  logging.info("model.remat='auto': a training step needs %s per device, of a %.2f GB budget; "
               "training with %s.", ", ".join(needs), budget / 1e9, name)
  if choice != fitted:
    step = compiled(make())[0]
  return mode, step
