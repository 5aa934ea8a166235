"""Convolution speed: forward / dX / dK / total GFLOP/s of each implementation vs a matmul.

Measures, in one process, a matmul reference and the forward, input-gradient
(dX), kernel-gradient (dK) and total (forward + dX + dK, one
``value_and_grad``) rates of each ``conv_impl`` at the ConvLSTM gate
convolution (3x3, 128 -> 256 channels, i.e. ``fused_conv`` of X and H at
hidden 64; batch 4) at 64x64 and at the MS pyramid's 32x32 and 16x16. Each
kernel is passed to ``msrnn_jax.backend.conv2d`` (its ``conv_impl``
argument). Cases are interleaved round by round (every case once per round)
and the ratio to the matmul is taken per round, so slow drifts of a shared
machine cancel; medians are reported, and a ``trio`` column adds up the three
separately timed fwd, dX and dK calls. Results go to a JSON file.

    python experiments/conv_bench.py
    python experiments/conv_bench.py --mode=scan --impls=matmul,onednn --rounds=3
    python experiments/conv_bench.py --dtype=bfloat16 --sizes=64 --impls=matmul,onednn --rounds=7

The default mode times single float32 calls against a float32 2048^3
matmul. ``--mode=scan`` times the same inside a rolled ``lax.scan`` of
``--steps`` steps (a while loop, as ``nn.scan`` runs the model), where
XLA:CPU's stock gradients are much slower; the figures are per step, and
``xla`` is also timed fully unrolled (``xla_unrolled``).

``--dtype=bfloat16`` (single ops) times the convolutions as a bfloat16
model runs them (``model.dtype='bfloat16'``): bfloat16 activations and
output gradients, the float32 master kernel handed to ``conv2d``, float32
kernel gradients. The reference is then the bfloat16 matmul of the same
FLOPs as one convolution, the im2col product ``[b*h*w, k*k*cin] @ [k*k*cin,
cout]`` with float32 accumulation (``preferred_element_type``); the float32
2048^3 matmul is timed for context. ``matmul_bf16`` equals ``matmul`` there.

Implementations: ``xla`` (stock autodiff), ``matmul``, ``matmul_bf16``
(``msrnn_jax.backend.matmul_grads``) and ``onednn``
(``msrnn_jax.backend.onednn``; its dX and dK are timed through the backward
custom call told to compute only that gradient).
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from msrnn_jax import backend  # noqa: E402  (needs the path entry above)
from msrnn_jax.analysis import timing  # noqa: E402

IMPLS = ("xla", "matmul", "matmul_bf16", "onednn")


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (``argv``, default ``sys.argv[1:]``) as parsed options."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("single", "scan"), default="single")
  p.add_argument("--sizes", default="64,32,16", help="square spatial sizes")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--cin", type=int, default=128)
  p.add_argument("--cout", type=int, default=256)
  p.add_argument("--kernel", type=int, default=3)
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype of the single-op cases (bfloat16: see the module doc)")
  p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (timed calls per case)")
  p.add_argument("--budget", type=float, default=30.0,
                 help="stop timing a case once its timed calls exceed this many seconds")
  p.add_argument("--steps", type=int, default=4, help="scan length in --mode=scan")
  p.add_argument("--out", default=None,
                 help="JSON path (default experiments/results/conv_bench_<mode>.json)")
  p.add_argument("--quick", action="store_true",
                 help="a few seconds: one 8x8 size, 8 -> 16 channels, one round (a smoke test)")
  args = p.parse_args(argv)
  if args.quick:
    args.sizes, args.batch, args.cin, args.cout, args.rounds, args.steps = "8", 1, 8, 16, 1, 2
  return args


def _rates(ts: list[float], f: float, mm: list[float], mm_flops: float) -> dict[str, float]:
  """One case's median seconds, GFLOP/s and ratio to the matmul timed in the same rounds."""
  return {"seconds": statistics.median(ts), "gflops": statistics.median(f / t / 1e9 for t in ts),
          "ratio_to_matmul": statistics.median(f / t / (mm_flops / m)
                                               for t, m in zip(ts, mm, strict=False)),
          "calls": len(ts)}


def summarize(times: dict[str, list[float]], flops: dict[str, float],
              ) -> dict[str, dict[str, float]]:
  """Median seconds and GFLOP/s per case; ratio to the matmul of the same rounds."""
  return {name: _rates(ts, flops[name], times["matmul"], flops["matmul"])
          for name, ts in times.items()}


def add_trios(times: dict[str, list[float]], flops: dict[str, float], summary: dict) -> None:
  """Adds ``<impl>/trio``: fwd + dX + dK, the three calls' times summed round by round."""
  for name in [n[:-4] for n in times if n.endswith("/fwd")]:
    parts = [times.get(f"{name}/{p}") for p in ("fwd", "dX", "dK")]
    if all(parts):
      trio = [sum(ts) for ts in zip(*parts, strict=False)]
      f = sum(flops[f"{name}/{p}"] for p in ("fwd", "dX", "dK"))
      summary[f"{name}/trio"] = _rates(trio, f, times["matmul"], flops["matmul"])


def conv_flops(b, h, w, cin, cout, k):
  """FLOPs (multiply and add counted apart) of one stride-1 SAME convolution."""
  return 2.0 * b * h * w * cin * cout * k * k


def build_single(args, size, impls):
  """Cases for one spatial size: matmul, then fwd/dX/dK/total per implementation."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax.backend import matmul_grads, onednn
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
    return matmul_grads.xla_conv(x_, k_.astype(x_.dtype), one, pad, one)

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
    if impl == "xla":
      dx = lambda x_, k_, g: jax.vjp(lambda z: xla_conv(z, k_), x_)[1](g)[0]  # noqa: E731
      dk = lambda x_, k_, g: jax.vjp(lambda z: xla_conv(x_, z), k_)[1](g)[0]  # noqa: E731
    elif impl == "onednn":
      dx = lambda x_, k_, g: onednn.conv_backward(x_, k_, g, one, pad, "dx")[0]  # noqa: E731
      dk = lambda x_, k_, g: onednn.conv_backward(x_, k_, g, one, pad, "dk")[1]  # noqa: E731
    else:
      dx = lambda x_, k_, g: matmul_grads.input_grad(  # noqa: E731
          g, k_.astype(g.dtype), x_.shape[1:3], one, pad, one)
      dk = functools.partial(
          lambda x_, k_, g, low: matmul_grads.kernel_grad(x_, g, k_.shape, one, pad, one, low),
          low=impl == "matmul_bf16" or bf16)
    fwd_fn = functools.partial(
        lambda x_, k_, ci: backend.conv2d(x_, k_, conv_impl=ci, dtype=cdt), ci=impl)

    def total(x_, k_, g, fwd_fn=fwd_fn):
      return jax.value_and_grad(
          lambda p, q: jnp.sum((fwd_fn(p, q) * g).astype(jnp.float32)), (0, 1))(x_, k_)

    cases[f"{impl}/fwd"] = (jax.jit(fwd_fn), (x, kern), f)
    cases[f"{impl}/dX"] = (jax.jit(dx), (x, kern, dy), f)
    cases[f"{impl}/dK"] = (jax.jit(dk), (x, kern, dy), f)
    cases[f"{impl}/total"] = (jax.jit(total), (x, kern, dy), 3 * f)
  return cases


def build_scan(args, size, impls):
  """Cases for one size inside a rolled lax.scan of args.steps steps (per-step FLOPs x steps)."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax.backend import matmul_grads, onednn
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
    return matmul_grads.xla_conv(x_, k_, one, pad, one)

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
    else:
      fwd_fn = functools.partial(lambda x_, k_, ci: backend.conv2d(x_, k_, conv_impl=ci),
                                 ci=impl)
      if impl == "onednn":
        dx = lambda g, k_: onednn.conv_backward(zeros_x, k_, g, one, pad, "dx")[0]  # noqa: E731
        dk = lambda x_, g: onednn.conv_backward(x_, kern, g, one, pad, "dk")[1]  # noqa: E731
      else:
        bf16 = impl == "matmul_bf16"
        dx = lambda g, k_: matmul_grads.input_grad(  # noqa: E731
            g, k_, xs.shape[2:4], one, pad, one)
        dk = functools.partial(
            lambda x_, g, bf16: matmul_grads.kernel_grad(x_, g, kern.shape, one, pad, one, bf16),
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
  return cases


def print_table(size, args, summary, impls):
  """Prints one size's GFLOP/s and ratio to the matmul, one row per implementation."""
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


def main(argv=None):
  """Times every size's cases, prints the tables and writes the JSON record."""
  args = parse_args(argv)
  import jax

  impls = [i for i in args.impls.split(",") if i]
  unknown = set(impls) - set(IMPLS)
  if unknown:
    raise SystemExit(f"unknown --impls {sorted(unknown)}; valid: {', '.join(IMPLS)}")
  if args.dtype != "float32" and args.mode != "single":
    raise SystemExit("--dtype applies to --mode=single only")
  from msrnn_jax.backend import onednn
  isa = onednn.cpu_isa() if jax.default_backend() == "cpu" and onednn.available() else None
  print(f"CPU: {timing.cpu_model()}; oneDNN {onednn.version()} ISA {isa}"
        + (f", bfloat16 convolutions {'on' if onednn.bf16_supported() else 'off'}"
           if isa and args.dtype == "bfloat16" else ""))
  load0 = os.getloadavg()
  results = {}
  build = build_single if args.mode == "single" else build_scan
  for size in (int(s) for s in args.sizes.split(",")):
    cases = build(args, size, impls)
    times, _ = timing.interleaved({name: functools.partial(fn, *fn_args)
                                  for name, (fn, fn_args, _) in cases.items()},
                                 args.rounds, budget_s=args.budget)
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
      "mode": args.mode, "settings": vars(args),
      "jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": cores,
      "machine": platform.machine(), "cpu": timing.cpu_model(), "onednn_isa": isa,
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
