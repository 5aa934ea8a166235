"""Building, loading and batch-partitioning the C++ kernels in ``native/``.

Each kernel library is one or more C++ sources compiled on first use with
the system C++ compiler against jaxlib's FFI headers, cached under
``MSRNN_JAX_CACHE`` (default ``~/.cache/msrnn_jax``) by a digest of the
sources, flags and versions, and registered with XLA as CPU custom calls.

The kernels thread with OpenMP (one team per calling thread,
``OMP_NUM_THREADS`` threads, default all cores). Unless the user set it,
``OMP_WAIT_POLICY`` is made passive before the first library loads, so idle
OpenMP threads sleep instead of spinning on cores XLA's own threads need
between the calls.

Data parallelism: a custom call has no sharding rule of its own, so under a
multi-device ``jit`` XLA would gather its operands onto every device and
each device would compute the whole batch. :func:`batch_split` and
:func:`shardings` give the rule the callers wrap their calls in (with
``jax.experimental.custom_partitioning``): the activations keep their batch
(leading-axis) sharding as XLA propagated it (no mesh needs to be known by
the caller), everything else is replicated.
"""

import ctypes
import hashlib
import importlib.metadata
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")


def build(name: str, sources: Sequence[str], flags: Sequence[str],
          versions: Sequence[str] = ()) -> str:
  """Compiles ``sources`` (files in ``native/``) into a shared library, once per digest.

  Args:
    name: the library's name in the cache.
    sources: file names in ``native/``.
    flags: compiler and linker flags besides the common ones.
    versions: versions of what the library links against (part of the digest).

  Returns:
    The path of the shared library.

  Raises:
    RuntimeError: with the missing piece and how to get it.
  """
  if not sys.platform.startswith("linux"):
    raise RuntimeError("the native CPU kernels are built for Linux only")
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise RuntimeError("no C++ compiler (g++) found; install one or set CXX")
  paths = [os.path.join(SOURCES, s) for s in sources]
  flags = ["-std=c++17", "-shared", "-fPIC", *paths, "-I", jax.ffi.include_dir(),
           *flags]
  digest = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      digest.update(f.read())
  digest.update(repr((importlib.metadata.version("jaxlib"), *versions, cxx, flags)).encode())
  cache = os.environ.get("MSRNN_JAX_CACHE", os.path.expanduser("~/.cache/msrnn_jax"))
  out = os.path.join(cache, f"msrnn_{name}_{digest.hexdigest()[:16]}.so")
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = f"{out}.{os.getpid()}.tmp"
  cmd = [cxx, *flags, "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"compiling {', '.join(sources)} failed ({' '.join(cmd)}):\n"
                       f"{proc.stderr[-4000:]}")
  os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
  return out


def _runnable_elsewhere() -> int:
  """Threads running or ready to run on this machine now, besides the caller (Linux)."""
  with open("/proc/loadavg") as f:
    return int(f.read().split()[3].split("/")[0]) - 1


def busy_cores_warning(samples: int = 5, interval_s: float = 0.05) -> str | None:
  """A one-line warning when other processes keep this machine's cores busy, else None.

  The kernels' OpenMP teams are as wide as the machine (unless
  ``OMP_NUM_THREADS`` says otherwise), and every parallel region waits for
  its slowest thread: beside another process that keeps the cores busy a
  step can take many times as long (docs/performance.md, "Sharing the
  cores"). Call it before this process starts computing: it counts the
  threads that run now (the median of ``samples``), not the load average,
  which still counts a run that has just ended.
  """
  if "OMP_NUM_THREADS" in os.environ:
    return None
  try:
    counts = []
    for i in range(samples):
      if i:
        time.sleep(interval_s)
      counts.append(_runnable_elsewhere())
  except (OSError, ValueError, IndexError):  # not Linux: no warning
    return None
  cores, busy = os.cpu_count() or 1, sorted(counts)[len(counts) // 2]
  if busy < max(1, cores / 4):
    return None
  return (f"other processes keep {busy} of this machine's {cores} cores busy: the CPU kernels' "
          f"thread teams slow down many times over beside them; give each process its share, "
          f"e.g. OMP_NUM_THREADS={max(1, cores // 2)}, or run one at a time.")


def load(path: str, targets: dict[str, str]) -> ctypes.CDLL:
  """Loads a built library and registers its FFI handlers (``{target: symbol}``) on CPU."""
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before libgomp starts
  lib = ctypes.CDLL(path)
  for target, symbol in targets.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib


class Library:
  """A kernel library loaded on first use, or the reason it cannot be.

  Attributes:
    state: ``ok`` and, once loaded, what ``load`` returned (``reason`` when
      not ``ok``); callers may keep more of their own in it, under ``lock``.
    lock: guards ``state``.
  """

  def __init__(self, load: Callable[[], dict], on_failure: Callable[[str], None]):
    """
    Args:
      load: builds, loads and registers the library; returns what to keep in
        ``state``; raises RuntimeError, OSError or AttributeError (a missing
        symbol) with the reason it cannot.
      on_failure: called with the reason (one line) when ``load`` fails.
    """
    self._load, self._on_failure = load, on_failure
    self.lock = threading.Lock()
    self.state: dict = {}

  def get(self) -> dict:
    """``state``, after loading the library if no call has tried yet."""
    with self.lock:
      if "ok" not in self.state:
        try:
          if jax.default_backend() != "cpu":
            raise RuntimeError(f"the default backend is {jax.default_backend()!r}, not CPU")
          self.state.update(self._load(), ok=True)
        except (RuntimeError, OSError, AttributeError) as e:
          self.state.update(ok=False, reason=str(e))
          self._on_failure(" ".join(str(e).split())[:300])
    return self.state

  def available(self) -> bool:
    """Whether the library can run here (builds and loads it on first call)."""
    return self.get()["ok"]

  def unavailable_reason(self) -> str | None:
    """Why :meth:`available` is False (None when it is True)."""
    return self.get().get("reason")


def batch_split(x: jax.ShapeDtypeStruct) -> tuple[jax.sharding.Mesh, tuple[str, ...]]:
  """The mesh and the mesh axes a call splits the batch over, from ``x``'s sharding.

  The batch (leading) axis keeps the split XLA propagated to ``x`` when it
  divides the batch evenly; any sharding of the other axes is dropped (the
  partitioner then gathers those, which data parallelism never asks for).
  Shardings without a mesh, which the partitioner hands over when the
  computation has none, are replicated over their devices: correct, but
  every device computes the whole batch, as without the rule.
  """
  sharding = x.sharding
  if not isinstance(sharding, NamedSharding):
    devices = np.asarray(sorted(sharding.device_set, key=lambda d: d.id))
    return jax.sharding.Mesh(devices, ("native_replicas",)), ()
  spec = tuple(sharding.spec)
  axes = spec[0] if spec else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  if x.shape[0] % math.prod(sharding.mesh.shape[a] for a in axes):
    axes = ()
  return sharding.mesh, axes


def shardings(mesh: jax.sharding.Mesh,
              axes: tuple[str, ...]) -> tuple[NamedSharding, NamedSharding]:
  """(batch-split activations, replicated) shardings on ``mesh``."""
  return (NamedSharding(mesh, PartitionSpec(axes or None)),
          NamedSharding(mesh, PartitionSpec()))
