"""What this process runs its kernels on, for logs and benchmark records."""

import jax

from msrnn_jax.backend import allocator, onednn, warp
from msrnn_jax.backend.convolution import fast_dtype, resolve


def describe(conv_impl: str = "auto", warp_impl: str = "auto") -> dict[str, str]:
  """What this process runs the kernels on, for logs and benchmark records."""
  impl = resolve(conv_impl)
  info = {"platform": jax.default_backend(), "conv_impl": impl,
          "warp_impl": warp.resolve(warp_impl),
          "keep_freed_memory": "on" if allocator.applied() else "off",
          "auto_dtype": fast_dtype(impl)}
  conv = impl
  if impl == "onednn":
    bf16 = onednn.bf16_supported()
    info.update(onednn=onednn.version() or "", cpu_isa=onednn.cpu_isa() or "", bf16=str(bf16))
    conv = (f"oneDNN {info['onednn']} (ISA {info['cpu_isa']}, bfloat16 "
            f"{'native' if bf16 else 'on the matmul path'})")
  elif impl == "matmul" and jax.default_backend() == "cpu":
    reason = onednn.unavailable_reason()
    if reason:
      conv += f" (oneDNN unavailable: {reason}; pip install 'msrnn_jax[cpu]')"
  info["conv"] = conv
  info["warp"] = info["warp_impl"]
  if info["warp_impl"] == "xla" and jax.default_backend() == "cpu":
    info["warp"] += f" (native unavailable: {warp.unavailable_reason()})"
  return info


def summary(conv_impl: str = "auto", warp_impl: str = "auto") -> str:
  """One log line: the kernels and the host-memory setting."""
  info = describe(conv_impl, warp_impl)
  line = (f"convolutions: {info['conv']}; flow warp: {info['warp']}; "
          f"model.dtype 'auto' = {info['auto_dtype']}; "
          f"keep_freed_memory: {info['keep_freed_memory']}")
  if info["platform"] == "cpu" and not allocator.applied():
    line += (" (to stop per-step page faults, call msrnn_jax.backend.prepare_host() before the "
             "first JAX computation; msrnn_jax.main does)")
  elif info["platform"] == "cpu" and not allocator.started_with_glibc_tunables():
    line += (" (glibc's per-thread cache is on, so steps can alternate between two blocks of "
             "host memory: call msrnn_jax.backend.prepare_host(restart_program=True) first "
             "thing; msrnn_jax.main does)")
  return line
