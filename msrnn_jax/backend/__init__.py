"""The platform seam: which convolution kernels run, and host-allocator tuning.

Everything platform-specific lives in this package; the rest of msrnn_jax
asks for a convolution with a dtype (:func:`conv2d`) and never names a
kernel library. The lowest layer: it imports JAX and its own modules only.

* ``matmul_grads``: XLA's forward convolution with gradients XLA:CPU runs
  on its fast matrix kernels (portable: any CPU, any device count).
* ``onednn``: oneDNN convolutions (the library behind PyTorch's CPU
  convolutions) as XLA FFI custom calls, built from ``native/`` on first
  use; x86-64 Linux with the ``msrnn_jax[cpu]`` extra installed.
* ``allocator``: glibc settings that let CPU steps reuse freed memory.
* ``packing``: :func:`pack` / :func:`unpack` (``packing.stash`` / ``unstash``
  for custom-gradient residuals), bfloat16 values (checkpointed
  carries, gate activations, stacked convolution inputs) in float16
  containers on CPU, where XLA would keep or move them as float32.
* ``gates``: the cells' gate updates (:func:`gates.lstm_update`,
  ``memory_update``, ``gated_tanh``, ``gru_update``) with hand-written
  gradients that keep one map per input, computed in float32 and rounded once.
* ``materialize``: :func:`materialize.materialize`, a value written to memory
  once for all its consumers, where XLA:CPU would recompute it in each (the
  gate gradients' shared cotangents).
* ``ops``: the model's operations with hand-written gradients
  (:func:`add_bias`, :func:`split`,
  :func:`stored_carry_scan`), which keep the precision and memory mechanics
  out of the model code.
* ``warp``: :func:`flow_warp`, bilinear sampling along learned flows whose
  gradient keeps only the image and the flow, in XLA (any platform) or as
  native custom calls (CPU; :data:`WARP_IMPLS`, :func:`resolve_warp`).
* ``native``: building, loading and batch-partitioning the C++ kernels in
  ``native/``.
* ``convolution``: :func:`conv2d` on a named kernel, one of
  :data:`CONV_IMPLS`, and :func:`resolve`, which turns ``auto`` into a
  concrete kernel once, when a model is built.
* ``host``: :func:`describe` / :func:`summary`, what this process runs on.

The public names below are imported on first use: a program's entry point
can call :func:`prepare_host` (which may run the program again) before JAX
is loaded, so the restart costs a fraction of a second.
"""

import importlib
import pkgutil

from msrnn_jax.backend import allocator

# Public name -> (module of this package, its name there), imported on first use.
_EXPORTS = {
    "CONV_IMPLS": ("convolution", "CONV_IMPLS"),
    "FLOP_COUNTABLE": ("convolution", "FLOP_COUNTABLE"),
    "conv2d": ("convolution", "conv2d"),
    "conv2d_of_parts": ("convolution", "conv2d_of_parts"),
    "fast_dtype": ("convolution", "fast_dtype"),
    "resolve": ("convolution", "resolve"),
    "describe": ("host", "describe"),
    "summary": ("host", "summary"),
    "WARP_IMPLS": ("warp", "WARP_IMPLS"),
    "flow_warp": ("warp", "flow_warp"),
    # The flow warp ``warp_impl`` stands for: ``'native'`` on CPU where it builds, else ``'xla'``.
    "resolve_warp": ("warp", "resolve"),
    "add_bias": ("ops", "add_bias"),
    "packed_residual_scan": ("ops", "packed_residual_scan"),
    "split": ("ops", "split"),
    "stored_carry_scan": ("ops", "stored_carry_scan"),
    "concatenate": ("packing", "concatenate"),
    "pack": ("packing", "pack"),
    "unpack": ("packing", "unpack"),
    "busy_cores_warning": ("native", "busy_cores_warning"),
    "release_freed_memory": ("allocator", "release_freed_memory"),
    "release_if_heap_moved": ("allocator", "release_if_heap_moved"),
}
__all__ = sorted([*_EXPORTS, "prepare_host"])


def __getattr__(name: str):
  if name in _EXPORTS:
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
  else:  # a module of the package, e.g. ``backend.onednn``
    try:
      value = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
      raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS, *(m.name for m in pkgutil.iter_modules(__path__))})


def prepare_host(keep_freed_memory: bool = True, *, restart_program: bool = False) -> bool:
  """Process set-up to run before the first JAX computation (see ``allocator``).

  Args:
    keep_freed_memory: make glibc keep freed memory for the next steps.
    restart_program: with ``keep_freed_memory``, first run the program again,
      once, with glibc's start-up settings
      (:func:`allocator.restart_with_glibc_tunables`); for a program's entry
      point, before it writes anything.

  Returns:
    Whether freed host memory is kept for reuse.
  """
  if not keep_freed_memory:
    return False
  if restart_program:
    allocator.restart_with_glibc_tunables()
  return allocator.keep_freed_memory()
