"""Convolution speed: forward / dX / dK / total GFLOP/s of each implementation vs a matmul.

Measures, in one process, the float32 matmul rate (2048^3) and the forward,
input-gradient (dX), kernel-gradient (dK) and total (forward + dX + dK, one
``value_and_grad``) rates of each ``conv_impl`` at the ConvLSTM gate
convolution (3x3, 128 -> 256 channels, i.e. ``fused_conv`` of X and H at
hidden 64; batch 4) at 64x64 and at the MS pyramid's 32x32 and 16x16.
Cases are interleaved round by round (every case once per round) and the
ratio to the matmul is taken per round, so slow drifts of a shared machine
cancel; medians are reported.

``--mode=scan`` measures the same inside a rolled ``lax.scan`` of
``--steps`` steps (a while loop, as ``nn.scan`` runs the model), where
XLA:CPU's stock gradients are much slower; the figures are per step.
``--dk-variants`` adds the kernel-gradient formulations explored for
``docs/performance.md`` (``matmul``'s dK is ``flat_cm``, ``matmul_bf16``'s
is ``taps_cm_bf16``), in single calls or, with ``--mode=scan``, accumulated
over the rolled scan. ``--mode=step`` times whole training steps
(``train.make_train_step``: forward, loss, backward, Adam) of one model per
implementation, the stock one fully unrolled (``xla_unrolled``; rolled it is
~50x slower, see the scan mode), with FLOPs from ``memory.analyze``.

    python experiments/conv_bench.py                   # single ops
    python experiments/conv_bench.py --mode=scan
    python experiments/conv_bench.py --dk-variants
    python experiments/conv_bench.py --malloc-tuning
    python experiments/conv_bench.py --mode=step --model=ms_convlstm
    python experiments/conv_bench.py --dtype=bfloat16 --sizes=64 --impls=matmul,onednn

``--dtype=bfloat16`` (single ops) times the convolutions as a bfloat16
model runs them (``model.dtype='bfloat16'``): bfloat16 activations and
output gradients, the float32 master kernel handed to ``conv2d``, float32
kernel gradients. The reference is then the bfloat16 matmul of the same
FLOPs as one convolution, the im2col product ``[b*h*w, k*k*cin] @ [k*k*cin,
cout]`` with float32 accumulation (``preferred_element_type``), and a
``trio`` line gives fwd + dX + dK (three separately timed calls) against it.
``matmul_v1`` is float32 only and skipped there; ``matmul_bf16`` equals
``matmul`` on bfloat16 operands.

Implementations: ``xla`` (stock autodiff), ``matmul``, ``matmul_bf16``,
``onednn`` (see ``msrnn_jax.conv``; its dX and dK are timed through the
backward custom call told to compute only that gradient) and ``matmul_v1``
(this repository's first custom VJP: dX by autodiff, dK by one NHWC im2col
product, kept for comparison).
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from msrnn_jax import host_memory  # noqa: E402  (imports no JAX backend)

_DN = ("NHWC", "HWIO", "NHWC")
IMPLS = ("xla", "matmul", "matmul_bf16", "matmul_v1", "onednn")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("single", "scan", "step"), default="single")
  p.add_argument("--sizes", default="64,32,16", help="square spatial sizes")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--cin", type=int, default=128)
  p.add_argument("--cout", type=int, default=256)
  p.add_argument("--kernel", type=int, default=3)
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype of the single-op cases (bfloat16: see the module doc)")
  p.add_argument("--dk-variants", action="store_true",
                 help="also time alternative kernel-gradient formulations")
  p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (timed calls per case)")
  p.add_argument("--budget", type=float, default=30.0,
                 help="stop timing a case once its timed calls exceed this many seconds")
  p.add_argument("--steps", type=int, default=4, help="scan length in --mode=scan")
  p.add_argument("--model", default="ms_convlstm", help="--mode=step: model name")
  p.add_argument("--seq", type=int, default=20, help="--mode=step: frames per sequence")
  p.add_argument("--hidden", type=int, default=64, help="--mode=step: hidden channels")
  p.add_argument("--layers", type=int, default=6, help="--mode=step: layers")
  p.add_argument("--step-impls", default="xla_unrolled,matmul_v1,matmul,matmul_bf16",
                 help="--mode=step: implementations (also 'xla', rolled: very slow)")
  p.add_argument("--malloc-tuning", action="store_true",
                 help="make glibc keep freed memory (msrnn_jax.host_memory)")
  p.add_argument("--out", default=None,
                 help="JSON path (default experiments/results/conv_bench_<mode>.json)")
  return p.parse_args(argv)


# --- reference formulations (kept out of msrnn_jax: comparison only) -------------------------

def _dk_im2col_nhwc(x, dy, kshape, bf16=False, transposed_dy=False):
  """One product over an NHWC im2col patch matrix [P, kh*kw*C] (stride 1, SAME)."""
  import jax
  import jax.numpy as jnp
  kh, kw, c, o = kshape
  n, h, w, _ = x.shape
  dt = jnp.bfloat16 if bf16 else x.dtype
  xp = jnp.pad(x.astype(dt), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], -1)
  a = cols.reshape(n * h * w, kh * kw * c)
  b = dy.astype(dt).reshape(n * h * w, o)
  if transposed_dy:  # dK^T = dY^T @ patches: contraction axis last in the left operand
    dk = jax.lax.dot_general(b.T, a, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dk.T.reshape(kshape)
  dk = jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dk.reshape(kshape)


def _dk_rowshift(x, dy, kshape, bf16=False):
  """One product per tap on contiguous row ranges of the flattened padded NHWC input."""
  import jax
  import jax.numpy as jnp
  kh, kw, c, o = kshape
  n, h, w, _ = x.shape
  dt = jnp.bfloat16 if bf16 else x.dtype
  hp, wp = h + kh - 1, w + kw - 1
  rows = n * hp * wp
  xf = jnp.pad(x.astype(dt), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0))).reshape(rows, c)
  xf = jnp.pad(xf, ((0, (kh - 1) * wp + kw - 1), (0, 0)))
  dyt = jnp.pad(dy.astype(dt), ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0))).reshape(rows, o).T
  taps = [jax.lax.dot_general(dyt, jax.lax.slice_in_dim(xf, i * wp + j, i * wp + j + rows),
                              (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]
  return jnp.transpose(jnp.stack(taps).reshape(kh, kw, o, c), (0, 1, 3, 2))


def _dk_taps_cm_no_barrier(x, dy, kshape, bf16=False):
  """``msrnn_jax.conv.kernel_grad`` without materialising the channel-major copy."""
  import jax
  import jax.numpy as jnp
  kh, kw, c, o = kshape
  n, h, w, _ = x.shape
  dt = jnp.bfloat16 if bf16 else x.dtype
  xt = jnp.transpose(jnp.pad(x.astype(dt), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0))),
                     (3, 0, 1, 2))
  b = dy.astype(dt).reshape(n * h * w, o)
  return jnp.stack([jax.lax.dot_general(xt[:, :, i:i + h, j:j + w].reshape(c, -1), b,
                                        (((1,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)
                    for i in range(kh) for j in range(kw)]).reshape(kshape)


def _dk_rows_loop(x, dy, kshape):
  """Tap-shifted column ranges of the channel-major input, written in place by a loop.

  ``dK[i, j] = X[:, o_ij:o_ij + Q] @ dY`` over the flattened padded grid
  (``Q = n * hp * wp``); a rolled ``fori_loop`` over kernel rows writes the
  ``[kh*kw, C, Q]`` operand with ``dynamic_update_slice`` (see
  docs/performance.md: faster patch build, no whole-step gain).
  """
  import jax
  import jax.numpy as jnp
  kh, kw, c, o = kshape
  n, h, w, _ = x.shape
  hp, wp = h + kh - 1, w + kw - 1
  q = n * hp * wp
  span = (kh - 1) * wp + kw - 1
  xp = jnp.pad(x, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
  xt = jax.lax.optimization_barrier(jnp.transpose(xp, (3, 0, 1, 2)).reshape(c, q))

  def write_kernel_row(i, a):
    for j in range(kw):
      rows = jax.lax.dynamic_slice(xt, (0, i * wp + j), (c, q - span))
      a = jax.lax.dynamic_update_slice(a, rows[None], (i * kw + j, 0, 0))
    return a

  a = jax.lax.fori_loop(0, kh, write_kernel_row, jnp.zeros((kh * kw, c, q), x.dtype))
  b = jnp.pad(dy, ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0))).reshape(q, o)
  return (a.reshape(kh * kw * c, q) @ b).reshape(kshape)


def dk_variants(kshape, pad) -> dict[str, Callable]:
  """The alternative kernel-gradient formulations, ``(x, dy) -> dK`` (stride-1, SAME)."""
  import jax.numpy as jnp

  from msrnn_jax import conv
  one = (1, 1)
  taps = functools.partial(conv._dk_taps, kernel_shape=kshape, stride=one, padding=pad,
                           lhs_dilation=one)
  return {
      "im2col_nhwc": functools.partial(_dk_im2col_nhwc, kshape=kshape),
      "im2col_nhwc_dyT": functools.partial(_dk_im2col_nhwc, kshape=kshape, transposed_dy=True),
      "im2col_nhwc_bf16": functools.partial(_dk_im2col_nhwc, kshape=kshape, bf16=True),
      "flat_cm_bf16": lambda x_, g: conv._dk_flat(x_, g, kshape, pad, one,
                                                  jnp.bfloat16).reshape(kshape),
      "rowshift": functools.partial(_dk_rowshift, kshape=kshape),
      "rows_loop": functools.partial(_dk_rows_loop, kshape=kshape),
      "rowshift_bf16": functools.partial(_dk_rowshift, kshape=kshape, bf16=True),
      "taps_cm": lambda x_, g: taps(x_, g, dtype=jnp.float32).reshape(kshape),
      "taps_cm_no_barrier": functools.partial(_dk_taps_cm_no_barrier, kshape=kshape),
      "taps_cm_no_barrier_bf16": functools.partial(_dk_taps_cm_no_barrier, kshape=kshape,
                                                   bf16=True),
  }


# --- timing -----------------------------------------------------------------------------------

def timed_rounds(cases: dict[str, tuple[Callable, tuple, float]], rounds: int,
                 budget: float) -> dict[str, list[float]]:
  """Calls every case once per round (after one warm-up call); returns seconds per call."""
  import jax
  for fn, args, _ in cases.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in cases}
  for _ in range(rounds):
    for name, (fn, args, _) in cases.items():
      if times[name] and sum(times[name]) > budget:
        continue
      t0 = time.perf_counter()
      out = fn(*args)
      jax.block_until_ready(out)
      times[name].append(time.perf_counter() - t0)
      del out
  return times


def summarize(times: dict[str, list[float]], flops: dict[str, float],
              matmul_key: str = "matmul") -> dict[str, dict[str, float]]:
  """Median seconds and GFLOP/s per case; ratio to the matmul of the same rounds."""
  mm = times[matmul_key]
  mm_flops = flops[matmul_key]
  out = {}
  for name, ts in times.items():
    gf = [flops[name] / t / 1e9 for t in ts]
    ratios = [flops[name] / t / (mm_flops / m) for t, m in zip(ts, mm, strict=False)]
    out[name] = {"seconds": statistics.median(ts), "gflops": statistics.median(gf),
                 "ratio_to_matmul": statistics.median(ratios), "calls": len(ts)}
  return out


def add_trios(times: dict[str, list[float]], flops: dict[str, float], summary: dict,
              matmul_key: str = "matmul") -> None:
  """Adds ``<impl>/trio``: fwd + dX + dK, the three calls' times summed round by round."""
  mm, mm_flops = times[matmul_key], flops[matmul_key]
  for name in [n[:-4] for n in times if n.endswith("/fwd")]:
    parts = [times.get(f"{name}/{p}") for p in ("fwd", "dX", "dK")]
    if not all(parts):
      continue
    trio = [sum(ts) for ts in zip(*parts, strict=False)]
    f = sum(flops[f"{name}/{p}"] for p in ("fwd", "dX", "dK"))
    summary[f"{name}/trio"] = {
        "seconds": statistics.median(trio), "gflops": statistics.median(f / t / 1e9 for t in trio),
        "ratio_to_matmul": statistics.median(f / t / (mm_flops / m)
                                             for t, m in zip(trio, mm, strict=False)),
        "calls": len(trio)}


def cpu_model() -> str:
  """The CPU's model name (Linux), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def conv_flops(b, h, w, cin, cout, k):
  return 2.0 * b * h * w * cin * cout * k * k


def build_single(args, size, impls):
  """Cases for one spatial size: matmul, then fwd/dX/dK/total per implementation."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax import conv, onednn
  b, k = args.batch, args.kernel
  bf16 = args.dtype == "bfloat16"
  cdt = jnp.bfloat16 if bf16 else jnp.float32
  keys = jax.random.split(jax.random.key(0), 5)
  # The kernel stays float32 (master weights); activations take the compute dtype.
  x = jax.random.normal(keys[0], (b, size, size, args.cin)).astype(cdt)
  kern = jax.random.normal(keys[1], (k, k, args.cin, args.cout)) * 0.03
  dy = jax.random.normal(keys[2], (b, size, size, args.cout)).astype(cdt)
  f = conv_flops(b, size, size, args.cin, args.cout, k)
  pad = ((k // 2, k // 2),) * 2
  one = (1, 1)

  def xla_conv(x_, k_):
    return jax.lax.conv_general_dilated(x_, k_.astype(x_.dtype), one, pad, dimension_numbers=_DN)

  if bf16:  # the im2col product of one convolution: same FLOPs, float32 sums
    pa = jax.random.normal(keys[3], (b * size * size, k * k * args.cin)).astype(cdt)
    pb = jax.random.normal(keys[4], (k * k * args.cin, args.cout)).astype(cdt)
    mm = jax.jit(lambda p, q: jnp.dot(p, q, preferred_element_type=jnp.float32))
    a = jax.random.normal(keys[3], (2048, 2048))
    # For context: XLA:CPU's float32 rate, the float32 mode's reference.
    cases = {"matmul": (mm, (pa, pb), f),
             "fp32_matmul": (jax.jit(lambda p, q: p @ q), (a, a), 2.0 * 2048**3)}
  else:
    a = jax.random.normal(keys[3], (2048, 2048))
    cases = {"matmul": (jax.jit(lambda p, q: p @ q), (a, a), 2.0 * 2048**3)}
  for impl in impls:
    if bf16 and impl == "matmul_v1":
      print("matmul_v1 is float32 only: skipped")
      continue
    if impl == "xla":
      dx = lambda x_, k_, g: jax.vjp(lambda z: xla_conv(z, k_), x_)[1](g)[0]  # noqa: E731
      dk = lambda x_, k_, g: jax.vjp(lambda z: xla_conv(x_, z), k_)[1](g)[0]  # noqa: E731
      conv_impl = "xla"
    elif impl == "matmul_v1":
      dx = lambda x_, k_, g: jax.vjp(lambda z: xla_conv(z, k_), x_)[1](g)[0]  # noqa: E731
      dk = lambda x_, k_, g: _dk_im2col_nhwc(x_, g, k_.shape)  # noqa: E731
      conv_impl = None
    elif impl == "onednn":
      dx = lambda x_, k_, g: onednn.conv_backward(x_, k_, g, one, pad, "dx")[0]  # noqa: E731
      dk = lambda x_, k_, g: onednn.conv_backward(x_, k_, g, one, pad, "dk")[1]  # noqa: E731
      conv_impl = impl
    else:
      dx = lambda x_, k_, g: conv.input_grad(  # noqa: E731
          g, k_.astype(g.dtype), x_.shape[1:3], one, pad, one)
      dk = functools.partial(
          lambda x_, k_, g, low: conv.kernel_grad(x_, g, k_.shape, one, pad, one, low),
          low=impl == "matmul_bf16" or bf16)
      conv_impl = impl
    if conv_impl is None:  # matmul_v1: rebuild its custom VJP from the two pieces
      fwd_fn = jax.custom_vjp(xla_conv)
      fwd_fn.defvjp(lambda x_, k_: (xla_conv(x_, k_), (x_, k_)),
                    lambda res, g, dx=dx, dk=dk: (dx(res[0], res[1], g), dk(res[0], res[1], g)))
    else:
      fwd_fn = functools.partial(
          lambda x_, k_, ci: conv.conv2d(x_, k_, impl=ci, dtype=cdt), ci=conv_impl)

    def total(x_, k_, g, fwd_fn=fwd_fn):
      return jax.value_and_grad(
          lambda p, q: jnp.sum((fwd_fn(p, q) * g).astype(jnp.float32)), (0, 1))(x_, k_)

    cases[f"{impl}/fwd"] = (jax.jit(fwd_fn), (x, kern), f)
    cases[f"{impl}/dX"] = (jax.jit(dx), (x, kern, dy), f)
    cases[f"{impl}/dK"] = (jax.jit(dk), (x, kern, dy), f)
    cases[f"{impl}/total"] = (jax.jit(total), (x, kern, dy), 3 * f)
  if args.dk_variants:
    variants = dk_variants(kern.shape, pad)
    ref = jax.jit(lambda x_, g: jax.vjp(
        lambda z: jax.lax.conv_general_dilated(x_, z, one, pad, dimension_numbers=_DN,
                                               precision="highest"), kern)[1](g)[0])(x, dy)
    for name, fn in variants.items():
      fn = jax.jit(fn)
      err = float(jnp.max(jnp.abs(fn(x, dy) - ref)) / jnp.max(jnp.abs(ref)))
      if err > (1e-2 if "bf16" in name else 1e-5):
        raise AssertionError(f"dK variant {name} is wrong: relative error {err:.2e}")
      cases[f"variant/{name}/dK"] = (fn, (x, dy), f)
  return cases


def build_scan(args, size, impls):
  """Cases for one size inside a rolled lax.scan of args.steps steps (per-step FLOPs x steps)."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax import conv, onednn
  b, k, t = args.batch, args.kernel, args.steps
  keys = jax.random.split(jax.random.key(0), 4)
  xs = jax.random.normal(keys[0], (t, b, size, size, args.cin))
  kern = jax.random.normal(keys[1], (k, k, args.cin, args.cout)) * 0.03
  dys = jax.random.normal(keys[2], (t, b, size, size, args.cout))
  a = jax.random.normal(keys[3], (2048, 2048))
  f = conv_flops(b, size, size, args.cin, args.cout, k) * t
  pad = ((k // 2, k // 2),) * 2
  one = (1, 1)

  def xla_conv(x_, k_):
    return jax.lax.conv_general_dilated(x_, k_, one, pad, dimension_numbers=_DN)

  def scan_sum(step, init, seq, unroll=1):
    return jax.lax.scan(lambda c, s: (c + step(s), None), init, seq, unroll=unroll)[0]

  cases = {"matmul": (jax.jit(lambda p, q: p @ q), (a, a), 2.0 * 2048**3)}
  zeros_x = jnp.zeros(xs.shape[1:])
  zeros_k = jnp.zeros(kern.shape)
  for impl in impls + (["xla_unrolled"] if "xla" in impls else []):
    unroll = t if impl == "xla_unrolled" else 1
    if impl in ("xla", "xla_unrolled"):
      fwd_fn = xla_conv
      dx = lambda g, k_: jax.vjp(lambda z: xla_conv(z, k_), zeros_x)[1](g)[0]  # noqa: E731
      dk = lambda x_, g: jax.vjp(lambda z: xla_conv(x_, z), kern)[1](g)[0]  # noqa: E731
    elif impl == "matmul_v1":
      dx = lambda g, k_: jax.vjp(lambda z: xla_conv(z, k_), zeros_x)[1](g)[0]  # noqa: E731
      dk = lambda x_, g: _dk_im2col_nhwc(x_, g, kern.shape)  # noqa: E731
      fwd_fn = jax.custom_vjp(xla_conv)
      fwd_fn.defvjp(lambda x_, k_: (xla_conv(x_, k_), (x_, k_)),
                    lambda res, g, dk=dk: (jax.vjp(lambda z: xla_conv(z, res[1]), res[0])[1](g)[0],
                                           dk(res[0], g)))
    else:
      fwd_fn = functools.partial(lambda x_, k_, ci: conv.conv2d(x_, k_, impl=ci), ci=impl)
      if impl == "onednn":
        dx = lambda g, k_: onednn.conv_backward(zeros_x, k_, g, one, pad, "dx")[0]  # noqa: E731
        dk = lambda x_, g: onednn.conv_backward(x_, kern, g, one, pad, "dk")[1]  # noqa: E731
      else:
        bf16 = impl == "matmul_bf16"
        dx = lambda g, k_: conv.input_grad(g, k_, xs.shape[2:4], one, pad, one)  # noqa: E731
        dk = functools.partial(
            lambda x_, g, bf16: conv.kernel_grad(x_, g, kern.shape, one, pad, one, bf16),
            bf16=bf16)

    def fwd(xs_, k_, fwd_fn=fwd_fn, unroll=unroll):
      return scan_sum(lambda x_: fwd_fn(x_, k_), jnp.zeros(dys.shape[1:]), xs_, unroll)

    def dx_scan(dys_, k_, dx=dx, unroll=unroll):
      return scan_sum(lambda g: dx(g, k_), zeros_x, dys_, unroll)

    def dk_scan(xs_, dys_, dk=dk, unroll=unroll):
      return scan_sum(lambda s: dk(*s), zeros_k, (xs_, dys_), unroll)

    def total(k_, xs_, dys_, fwd_fn=fwd_fn, unroll=unroll):
      # tanh makes the backward pass need the forward output, as in a cell.
      def loss(k_, xs_):
        return scan_sum(lambda s: jnp.sum(jnp.tanh(fwd_fn(s[0], k_)) * s[1]), 0.0, (xs_, dys_),
                        unroll)
      return jax.value_and_grad(loss, (0, 1))(k_, xs_)

    cases[f"{impl}/fwd"] = (jax.jit(fwd), (xs, kern), f)
    cases[f"{impl}/dX"] = (jax.jit(dx_scan), (dys, kern), f)
    cases[f"{impl}/dK"] = (jax.jit(dk_scan), (xs, dys), f)
    cases[f"{impl}/total"] = (jax.jit(total), (kern, xs, dys), 3 * f)
  if args.dk_variants:
    for name, fn in dk_variants(kern.shape, pad).items():
      scan_fn = jax.jit(lambda xs_, dys_, fn=fn: scan_sum(lambda s: fn(*s), zeros_k, (xs_, dys_)))
      cases[f"variant/{name}/dK"] = (scan_fn, (xs, dys), f)
  return cases


def _v1_conv():
  """matmul_v1 as a drop-in for ``conv._matmul_conv`` (3x3-style SAME, stride 1 only)."""
  import jax

  def xla_conv(x, k, stride, padding, lhs_dilation):
    return jax.lax.conv_general_dilated(x, k, stride, padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=_DN)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
  def v1(x, k, stride, padding, lhs_dilation, bf16):
    return xla_conv(x, k, stride, padding, lhs_dilation)

  def fwd(x, k, stride, padding, lhs_dilation, bf16):
    kh, kw = k.shape[:2]
    if stride != (1, 1) or lhs_dilation != (1, 1) or padding != ((kh // 2,) * 2, (kw // 2,) * 2):
      raise NotImplementedError("matmul_v1 here covers stride-1 SAME convolutions only")
    return xla_conv(x, k, stride, padding, lhs_dilation), (x, k)

  def bwd(stride, padding, lhs_dilation, bf16, res, g):
    x, k = res
    dx = jax.vjp(lambda z: xla_conv(z, k, stride, padding, lhs_dilation), x)[1](g)[0]
    return dx, _dk_im2col_nhwc(x, g, k.shape, bf16)

  v1.defvjp(fwd, bwd)
  return v1


def run_steps(args) -> dict:
  """Whole training steps per implementation, interleaved; GFLOP/s from memory.analyze."""
  import jax
  import optax

  from msrnn_jax import conv, memory, models, train
  impls = [i for i in args.step_impls.split(",") if i]
  size, b, t = int(args.sizes.split(",")[0]), args.batch, args.seq
  opts = dict(hidden=args.hidden, num_layers=args.layers)
  flops = memory.analyze(args.model, image_size=size, batch_per_device=b, seq_len=t,
                         flops="multiply", conv_impl="xla", **opts)["flops"]
  print(f"{args.model} {b}x{t}x{size}x{size}, hidden {args.hidden}: {flops / 1e12:.3f} TFLOP/step")
  tx = optax.adam(3e-4)
  frames = jax.random.uniform(jax.random.key(1), (b, t, size, size, 1))
  steps, states, compile_s = {}, {}, {}
  stock = conv._matmul_conv
  for impl in impls:
    conv_impl = {"xla_unrolled": "xla", "matmul_v1": "matmul"}.get(impl, impl)
    model = models.create(args.model, conv_impl=conv_impl, in_len=t // 2,
                          scan_unroll=t - 1 if impl == "xla_unrolled" else 1, **opts)
    state = jax.jit(functools.partial(train.create_train_state, model, tx, frames.shape, 0))()
    step = train.make_train_step(model, tx, t // 2, 0.01)
    eta = jax.numpy.float32(0.5)
    t0 = time.perf_counter()
    if impl == "matmul_v1":
      conv._matmul_conv = _v1_conv()
    try:
      steps[impl] = step.lower(state, frames, eta, eta).compile()
    finally:
      conv._matmul_conv = stock
    compile_s[impl] = time.perf_counter() - t0
    states[impl] = state
    print(f"  compiled {impl} in {compile_s[impl]:.1f} s", flush=True)
  cases = {}
  for impl in impls:
    def call(impl=impl):
      states[impl], m = steps[impl](states[impl], frames, eta, eta)
      return m
    cases[impl] = (call, (), flops)
  a = jax.random.normal(jax.random.key(3), (2048, 2048))
  cases = {"matmul": (jax.jit(lambda p, q: p @ q), (a, a), 2.0 * 2048**3), **cases}
  times = timed_rounds(cases, args.rounds, args.budget)
  summary = summarize(times, {n: c[2] for n, c in cases.items()})
  print(f"fp32 matmul 2048^3: {summary['matmul']['gflops']:.0f} GFLOP/s")
  for impl in impls:
    r = summary[impl]
    r["compile_s"] = compile_s[impl]
    print(f"{impl:14s} step {r['seconds']:7.2f} s  {r['gflops']:5.0f} GFLOP/s "
          f"({r['ratio_to_matmul']:.2f} x matmul)  compile {compile_s[impl]:5.1f} s  "
          f"[{r['calls']} steps]")
  return {"model": args.model, "flops_per_step": flops, "steps": summary}


def print_table(size, args, summary, impls):
  mm = summary["matmul"]
  reference = f"fp32 matmul 2048^3 {mm['gflops']:.0f} GFLOP/s"
  if args.dtype == "bfloat16":
    reference = (f"bf16 matmul of one conv's FLOPs (im2col shape, f32 sums) {mm['gflops']:.0f} "
                 f"GFLOP/s; fp32 matmul 2048^3 {summary['fp32_matmul']['gflops']:.0f} GFLOP/s")
  print(f"\n{args.batch}x{size}x{size}, {args.cin} -> {args.cout}, {args.kernel}x{args.kernel}"
        + (f", {args.dtype}" if args.dtype != "float32" else "")
        + (f", rolled scan of {args.steps} steps (per step)" if args.mode == "scan" else "")
        + f": {reference}")
  print(f"{'impl':14s} {'fwd':>12s} {'dX':>12s} {'dK':>12s} {'total':>12s} {'trio':>12s}"
        "   GFLOP/s (x matmul)")
  names = list(impls) + (["xla_unrolled"] if args.mode == "scan" and "xla" in impls else [])
  for impl in names:
    cells = []
    for part in ("fwd", "dX", "dK", "total", "trio"):
      r = summary.get(f"{impl}/{part}")
      cells.append(f"{r['gflops']:5.0f} ({r['ratio_to_matmul']:.2f})" if r else "-")
    print(f"{impl:14s} " + " ".join(f"{c:>12s}" for c in cells))
  variants = [n for n in summary if n.startswith("variant/")]
  for n in variants:
    r = summary[n]
    print(f"  dK {n[8:-3]:24s} {r['gflops']:5.0f} ({r['ratio_to_matmul']:.2f})"
          f"  {r['seconds'] * 1e3:7.1f} ms")


def main(argv=None):
  args = parse_args(argv)
  # Before JAX allocates anything.
  tuned = host_memory.keep_freed_memory() if args.malloc_tuning else False
  import jax

  impls = [i for i in args.impls.split(",") if i]
  unknown = set(impls) - set(IMPLS)
  if unknown:
    raise SystemExit(f"unknown --impls {sorted(unknown)}; valid: {', '.join(IMPLS)}")
  if args.dtype != "float32" and args.mode != "single":
    raise SystemExit("--dtype applies to --mode=single only")
  from msrnn_jax import onednn
  isa = onednn.cpu_isa() if jax.default_backend() == "cpu" and onednn.available() else None
  print(f"CPU: {cpu_model()}; oneDNN {onednn.version()} ISA {isa}"
        + (f", bfloat16 convolutions {'on' if onednn.bf16_supported() else 'off'}"
           if isa and args.dtype == "bfloat16" else ""))
  load0 = os.getloadavg()
  results = {}
  if args.mode == "step":
    results = run_steps(args)
  for size in (int(s) for s in args.sizes.split(",") if args.mode != "step"):
    build = build_single if args.mode == "single" else build_scan
    cases = build(args, size, impls)
    times = timed_rounds(cases, args.rounds, args.budget)
    flops = {n: c[2] for n, c in cases.items()}
    summary = summarize(times, flops)
    add_trios(times, flops, summary)
    results[str(size)] = summary
    print_table(size, args, summary, impls)
  load1 = os.getloadavg()
  cores = os.cpu_count() or 1
  if max(load0[0], load1[0]) > cores:
    print(f"\nWARNING: load average {load0[0]:.1f} -> {load1[0]:.1f} on {cores} cores: other "
          "processes shared the CPU, absolute figures are inflated (ratios less so).")
  record = {
      "mode": args.mode, "settings": vars(args), "malloc_tuned": tuned,
      "jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": cores,
      "machine": platform.machine(), "cpu": cpu_model(), "onednn_isa": isa,
      "loadavg_start": load0, "loadavg_end": load1, "results": results,
  }
  suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 f"conv_bench_{args.mode}{suffix}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as fh:
    json.dump(record, fh, indent=1)
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
