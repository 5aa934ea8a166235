"""Reuse of freed host memory between XLA:CPU executions (glibc malloc settings).

Why: XLA:CPU allocates each execution's temporaries (a training step's
stacked scan residuals: gigabytes at the paper's shape) with malloc on its
own threads. glibc serves blocks that large with a fresh ``mmap`` and unmaps
them on ``free``, so every training step page-faults its temporaries in
again and the kernel zero-fills every page: seconds of system time per step
on two cores, several times the faults of PyTorch's reference step, most of
whose tensors are small enough for glibc's heap (``docs/performance.md``).

``keep_freed_memory()`` makes glibc serve every block from one heap
(``M_ARENA_MAX=1``, ``M_MMAP_MAX=0``) and never return freed memory to the
kernel (``M_TRIM_THRESHOLD=-1``), so a step's temporaries land in pages
the previous steps already faulted in.

A heap that never shrinks holds its high-water mark, so three more settings
keep the resident part near one step's temporaries:

* Single-device executions run inline (``jax_cpu_enable_async_dispatch``
  off): a step has freed its temporaries when the call returns. With
  asynchronous dispatch, the outputs are ready a moment before the
  temporaries are freed, the next step allocates its own beside them, and
  the heap grows by a step's worth every few steps.
* glibc's per-thread cache of small free chunks is off
  (``glibc.malloc.tcache_count=0``, read only when a process starts:
  :func:`restart_with_glibc_tunables`, which ``msrnn_jax.main`` calls
  first). XLA allocates its buffers aligned; glibc cuts an aligned block out
  of a free one with room to spare and puts the few bytes it trims off into
  that cache, where nothing merges with them (glibc bug 30723, changed in
  2.39). Cached beside a step's freed block, they keep it from merging with
  the free space beyond, it stays a few bytes short of what the next
  step's aligned request needs, and that step takes a new block: in about
  one run in ten, steps then alternated between two blocks, both resident.
* :func:`release_freed_memory` (``malloc_trim``) hands the pages of free
  blocks back to the kernel. If a long-lived allocation still lands beside
  a step's block, the heap moves, and once it is freed a later step can go
  back to the old block. The training loop releases after its first step,
  after any step that grew the heap (:func:`release_if_heap_moved`), and
  after evaluations and checkpoints (other programs' temporaries), so a
  block no step is using stops counting. Each release costs one step's
  page faults, once.

The compiled-memory figures of ``msrnn_jax.analysis.footprint`` (what a
GPU needs) are unchanged. Off: ``config.backend.keep_freed_memory = False``.

It must run before JAX starts its CPU backend: the arena limit only binds
threads that have not allocated yet, XLA's threads do the allocating, and
the dispatch mode is read when the backend starts. ``msrnn_jax.main`` calls
it first thing; library users call it before their first JAX computation.
"""

import ctypes
import ctypes.util
import functools
import os
import sys

from absl import logging

# (mallopt parameter number from glibc's malloc.h, GLIBC_TUNABLES name, value).
# A trim threshold of -1 is SIZE_MAX to glibc: never trim.
_SETTINGS = ((-8, "glibc.malloc.arena_max", 1),
             (-4, "glibc.malloc.mmap_max", 0),
             (-1, "glibc.malloc.trim_threshold", -1))

# Read only at start-up (GLIBC_TUNABLES): see the module docstring.
_START_SETTINGS = (("glibc.malloc.tcache_count", 0),)

# All the settings for a process started with them in its environment
# (e.g. a PyTorch process to compare with): GLIBC_TUNABLES=<this>.
GLIBC_TUNABLES = ":".join([f"{name}={value if value >= 0 else 2**62}"
                           for _, name, value in _SETTINGS]
                          + [f"{name}={value}" for name, value in _START_SETTINGS])

# As this process started (a later change of the environment does not apply).
_STARTED_WITH = os.environ.get("GLIBC_TUNABLES", "")

_state = {"applied": False, "heap_mark": 0}


@functools.cache  # find_library runs ldconfig: once, not at every step
def _libc():
  return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _mallopt():
  """glibc's ``mallopt`` or None (not Linux, or a C library without it: musl)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = _libc()
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc only
    return None
  mallopt = libc.mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return mallopt


def _missing_start_settings(tunables: str) -> list[str]:
  names = {item.split("=", 1)[0] for item in tunables.split(":")}
  return [f"{name}={value}" for name, value in _START_SETTINGS if name not in names]


def started_with_glibc_tunables() -> bool:
  """Whether this process started with the start-up settings (or needs none: not glibc)."""
  return _mallopt() is None or not _missing_start_settings(_STARTED_WITH)


def restart_with_glibc_tunables() -> None:
  """Runs this program again, in this process, with the glibc settings read at start-up.

  Call it first thing in a program's entry point, before it writes or
  changes anything: the whole program starts over (``os.execv``: same
  process id, interpreter options and arguments; ``GLIBC_TUNABLES`` gains
  ``glibc.malloc.tcache_count=0``). Returns at once where the settings are
  already in the environment or the C library is not glibc; if the
  restart fails, logs a warning and returns.
  """
  if _mallopt() is None:
    return
  current = os.environ.get("GLIBC_TUNABLES", "")
  missing = _missing_start_settings(current)
  if not missing:  # also when glibc ignored them: never a second restart
    return
  os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [current, *missing]))
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
  except OSError as e:
    os.environ["GLIBC_TUNABLES"] = current
    logging.warning("could not restart with GLIBC_TUNABLES=%s (%s): training steps may "
                    "alternate between two blocks of host memory.", ":".join(missing), e)


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
  except ImportError:  # pragma: no cover - jax is a requirement
    return False
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started and started())


def keep_freed_memory() -> bool:
  """Makes glibc keep and reuse freed memory (see the module docstring).

  Call it before the first JAX computation of the process. Called later, it
  changes nothing (XLA's threads already have arenas of their own, whose large
  blocks are always mmapped), logs a warning and returns False.

  Returns:
    True if the settings were applied while they could still take effect.
  """
  if _state["applied"]:
    return True
  mallopt = _mallopt()
  if mallopt is None:
    logging.info("keep_freed_memory: not glibc on Linux; malloc left as it is")
    return False
  if _backend_started():
    logging.warning("keep_freed_memory() called after JAX started its backend: XLA's threads "
                    "have their own malloc arenas, so nothing was changed. Call it before the "
                    "first JAX computation (msrnn_jax.main does).")
    return False
  ok = all(mallopt(param, value) == 1 for param, _, value in _SETTINGS)
  if ok:
    import jax  # here: the module loads before JAX (restart_with_glibc_tunables)
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  _state["applied"] = ok
  return ok


@functools.cache
def _sbrk():
  sbrk = _libc().sbrk
  sbrk.argtypes = (ctypes.c_ssize_t,)
  sbrk.restype = ctypes.c_void_p
  return sbrk


def _program_break() -> int:
  """The top of glibc's main heap (``sbrk(0)``): where it grows when no free block fits."""
  return _sbrk()(0) or 0


def release_freed_memory() -> None:
  """Returns the pages of free heap blocks to the kernel (``malloc_trim``).

  Only when :func:`keep_freed_memory` took effect; otherwise glibc trims by
  itself. The next step faults its temporaries in again, once.
  """
  if _state["applied"]:
    _state["heap_mark"] = max(_state["heap_mark"], _program_break())
    _libc().malloc_trim(0)


def release_if_heap_moved() -> bool:
  """:func:`release_freed_memory` if the heap grew past its mark at the last release.

  Call it after every step. A heap that grew has moved a step's temporaries
  to a new block and left the old one free. Were both kept resident, a later
  step that returns to the old block (once the allocations that made it too
  small are freed, it fits again) would fault it in beside the new one, and
  the process would hold two steps' worth of temporaries from then on.
  Released, each costs its page faults once.

  Returns:
    Whether it released.
  """
  if not _state["applied"] or _program_break() <= _state["heap_mark"]:
    return False
  release_freed_memory()
  return True


def applied() -> bool:
  """Whether ``keep_freed_memory()`` took effect in this process."""
  return _state["applied"]
