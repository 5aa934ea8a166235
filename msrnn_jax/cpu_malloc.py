"""Keep freed host memory in the process so XLA:CPU does not re-fault it every step.

XLA:CPU allocates each execution's temporary buffers (and its outputs) with
``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and returns them to the kernel on ``free``, so every
execution of a program with large temporaries touches brand-new pages: the
kernel zero-fills each 4 KiB page on first touch. On the 2-core VM of
``docs/performance.md`` that costs 2-3 GB/s of page faults: copying a 75 MB
im2col patch matrix took 70-110 ms instead of ~10 ms, and a whole training
step (gigabytes of temporaries) pays it on every step.

:func:`keep_freed_memory` tells glibc to serve large blocks from the heap
and never give freed memory back (``M_MMAP_MAX=0``, a 2 GiB
``M_TRIM_THRESHOLD``, one arena so worker threads share that heap). After
the first step every buffer is reused warm. The cost: the resident size
stays at its peak instead of shrinking between steps (the peak itself is
unchanged). Call it at start-up, before JAX allocates large arrays; it is a
no-op (returning False) where glibc's ``mallopt`` is not available.
"""

import ctypes
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


def keep_freed_memory() -> bool:
  """Makes glibc keep and reuse freed memory; returns True when applied."""
  global _applied
  if _applied:
    return True
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success, 0 on error (e.g. a libc that ignores it).
  _applied = all(mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1)))
  return _applied


def applied() -> bool:
  """Whether :func:`keep_freed_memory` has taken effect in this process."""
  return _applied
