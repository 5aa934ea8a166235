"""oneDNN convolutions on CPU, called from XLA as FFI custom calls.

XLA:CPU's convolution gradients are its weak spot (``docs/performance.md``):
the kernel gradient runs at a fraction of the matmul rate, and the
``matmul`` replacement in ``msrnn_jax.conv`` still materialises patch
matrices. oneDNN, the library behind PyTorch's CPU convolutions, computes
the forward pass, the input gradient and the kernel gradient directly from
NHWC activations at close to the matmul rate. ``native/onednn_conv.cc``
wraps its three primitives as two XLA FFI handlers (forward; input and
kernel gradient together) that read and write XLA's buffers in place.

The handlers are compiled on first use with the system C++ compiler against
the oneDNN wheel (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``, Linux
x86-64) and jaxlib's FFI headers, and cached under ``MSRNN_JAX_CACHE``
(default ``~/.cache/msrnn_jax``). Where any of that is missing,
:func:`available` is False, :func:`unavailable_reason` says why, and
``conv_impl='auto'`` falls back to the ``matmul`` path.

oneDNN threads with OpenMP (one team per calling thread, ``OMP_NUM_THREADS``
threads, default all cores). Unless the user set it, ``OMP_WAIT_POLICY`` is
made passive before the library loads, so idle OpenMP threads sleep instead
of spinning on cores XLA's own threads need between the calls.

Layouts: ``x`` ``[N, H, W, C]``, kernel ``[KH, KW, C, O]``, float32, no
input or kernel dilation (those stay on the ``matmul`` path).
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence

import jax
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "onednn_conv.cc")
_DISTS = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")
_TARGET_FWD = "msrnn_onednn_conv_fwd"
_TARGET_BWD = "msrnn_onednn_conv_bwd"
INSTALL_HINT = ("pip install 'onednn-cpu-gomp==2023.2.0' 'onednn-devel-cpu-gomp==2023.2.0' "
                "(Linux x86-64; a C++17 compiler is also needed)")

Padding = tuple[tuple[int, int], tuple[int, int]]

_lock = threading.Lock()
_state: dict = {}


def _dist_file(dist: str, suffix: str) -> str | None:
  """The installed path of a file of ``dist`` whose path ends with ``suffix``."""
  try:
    files = importlib.metadata.distribution(dist).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).replace("\\", "/").endswith(suffix):
      return os.path.normpath(str(f.locate()))
  return None


def _locate() -> tuple[str, str]:
  """(include dir, lib dir) of the oneDNN wheels, or raises RuntimeError."""
  header = _dist_file(_DISTS[1], "oneapi/dnnl/dnnl.hpp")
  lib = _dist_file(_DISTS[0], "/libdnnl.so.3")
  if header is None or lib is None:
    raise RuntimeError(f"the oneDNN wheels are not installed: {INSTALL_HINT}")
  return (os.path.dirname(os.path.dirname(os.path.dirname(header))), os.path.dirname(lib))


def _cache_dir() -> str:
  return os.environ.get("MSRNN_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "msrnn_jax"))


def build(verbose: bool = False) -> str:
  """Compiles the FFI handlers (once per source, jaxlib and oneDNN version).

  Returns:
    The path of the shared library.

  Raises:
    RuntimeError: with the missing piece and how to get it.
  """
  if not sys.platform.startswith("linux"):
    raise RuntimeError("the oneDNN convolutions are built for Linux only")
  include, libdir = _locate()
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise RuntimeError("no C++ compiler (g++) found; install one or set CXX")
  flags = ["-O2", "-std=c++17", "-shared", "-fPIC", _SOURCE, "-I", jax.ffi.include_dir(),
           "-I", include, "-L", libdir, "-ldnnl", f"-Wl,-rpath,{libdir}"]
  with open(_SOURCE, "rb") as f:
    src = f.read()
  versions = [importlib.metadata.version(d) for d in ("jaxlib", *_DISTS)]
  digest = hashlib.sha256(src + repr((versions, cxx, flags)).encode()).hexdigest()[:16]
  out = os.path.join(_cache_dir(), f"msrnn_onednn_{digest}.so")
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = f"{out}.{os.getpid()}.tmp"
  cmd = [cxx, *flags, "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"compiling {_SOURCE} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
  if verbose:
    print(" ".join(cmd))
  os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
  return out


def _load() -> None:
  """Builds, loads and registers the handlers; records the outcome in ``_state``."""
  with _lock:
    if "ok" in _state:
      return
    try:
      if jax.default_backend() != "cpu":
        raise RuntimeError(f"the default backend is {jax.default_backend()!r}, not CPU")
      path = build()
      os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before libgomp starts
      lib = ctypes.CDLL(path)
      lib.msrnn_onednn_version.restype = ctypes.c_char_p
      for target, symbol in ((_TARGET_FWD, "MsrnnOnednnConvFwd"),
                             (_TARGET_BWD, "MsrnnOnednnConvBwd")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _state.update(ok=True, lib=lib, path=path,
                    version=lib.msrnn_onednn_version().decode())
    except (RuntimeError, OSError, AttributeError) as e:
      _state.update(ok=False, reason=str(e))


def available() -> bool:
  """Whether the oneDNN convolutions can run here (builds them on first call)."""
  _load()
  return _state["ok"]


def unavailable_reason() -> str | None:
  """Why :func:`available` is False (None when it is True)."""
  _load()
  return _state.get("reason")


def version() -> str | None:
  """The loaded oneDNN's version, e.g. ``'3.2.0'``."""
  _load()
  return _state.get("version")


def require() -> None:
  """Raises RuntimeError naming the problem and the fix if unavailable."""
  if not available():
    raise RuntimeError(f"conv_impl='onednn' is unavailable: {_state['reason']}. "
                       "Use conv_impl='matmul' or 'auto' instead.")


def supports(x_shape: Sequence[int], kernel_shape: Sequence[int], dtype, stride: tuple[int, int],
             padding: Padding, lhs_dilation: tuple[int, int]) -> bool:
  """Whether a convolution is one the handlers compute (else use another impl)."""
  return (len(x_shape) == 4 and len(kernel_shape) == 4 and np.dtype(dtype) == np.float32
          and tuple(lhs_dilation) == (1, 1) and min(v for p in padding for v in p) >= 0
          and all(s >= 1 for s in stride))


def _attrs(stride, padding) -> dict:
  (top, bottom), (left, right) = padding
  return {"strides": np.asarray(stride, np.int64),
          "padding": np.asarray((top, bottom, left, right), np.int64)}


@functools.partial(jax.jit, static_argnums=(2, 3))
def conv_forward(x: jax.Array, kernel: jax.Array, stride: tuple[int, int],
                 padding: Padding) -> jax.Array:
  """Forward convolution ``[N, H, W, C] x [KH, KW, C, O] -> [N, OH, OW, O]`` (float32)."""
  require()
  shape = jax.lax.conv_general_shape_tuple(x.shape, kernel.shape, stride, padding,
                                           ("NHWC", "HWIO", "NHWC"))
  out = jax.ShapeDtypeStruct(tuple(int(d) for d in shape), np.float32)
  return jax.ffi.ffi_call(_TARGET_FWD, out, vmap_method="sequential")(
      x, kernel, **_attrs(stride, padding))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def conv_backward(x: jax.Array, kernel: jax.Array, dy: jax.Array, stride: tuple[int, int],
                  padding: Padding, parts: str = "both") -> tuple[jax.Array, jax.Array]:
  """Input and kernel gradients of :func:`conv_forward` for output gradient ``dy``.

  One custom call computes both, so the two run back to back on all cores
  instead of competing for them.

  Args:
    x, kernel, dy: the forward operands and the output gradient.
    stride, padding: as in the forward call.
    parts: ``'both'``; ``'dx'`` or ``'dk'`` compute only that gradient and
      leave the other output unwritten (for benchmarks).

  Returns:
    ``(dx [N, H, W, C], dkernel [KH, KW, C, O])``, float32.
  """
  require()
  outs = (jax.ShapeDtypeStruct(x.shape, np.float32),
          jax.ShapeDtypeStruct(kernel.shape, np.float32))
  return jax.ffi.ffi_call(_TARGET_BWD, outs, vmap_method="sequential")(
      x, kernel, dy, parts=np.int64({"dx": 1, "dk": 2, "both": 3}[parts]),
      **_attrs(stride, padding))
