"""PrecipLSTM's local attention: the whole-frame and the offset-rows computations, timed side by side.

``msrnn_jax.model.attention.local_attention`` attends a frame not much wider
than its window as a whole (flash attention over the flattened frame, the
keys outside each pixel's window masked out, ``key_chunk`` keys per step) and
a wider one a row of window offsets at a time; it picks by the products each
needs per pixel (``h * w`` against ``window * (w + window - 1)``,
``attention.FRAME_MAX_COST``). This script times the jitted value and
gradient of both at each frame size, the frame at several key chunks, in
interleaved rounds, and reports each as a ratio to the offset rows of the same
round (median and range), with the path ``local_attention`` takes.

    python experiments/attention_bench.py
    python experiments/attention_bench.py --sizes=32,64 --batch=2 --channels=64 --rounds=7
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from msrnn_jax.analysis import timing  # noqa: E402  (needs the path entry above)


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (``argv``, default ``sys.argv[1:]``) as parsed options."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="8,16,32,48,64", help="square frame sizes")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--channels", type=int, default=16, help="query, key and value channels")
  p.add_argument("--window", type=int, default=30, help="the window's side (PrecipLSTM's 30)")
  p.add_argument("--chunks", default="32,64,128", help="the frame's keys per step, to compare")
  p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
  p.add_argument("--out", default=None,
                 help="JSON path (default experiments/results/attention_bench.json)")
  p.add_argument("--quick", action="store_true",
                 help="a few seconds: one 8x8 frame, batch 1, 2 channels, window 5, one round")
  args = p.parse_args(argv)
  if args.quick:
    args.sizes, args.batch, args.channels, args.window = "8", 1, 2, 5
    args.chunks, args.rounds = "8,16", 1
  return args


def cases(size: int, args) -> dict:
  """Jitted value-and-gradient calls of each computation at one frame size."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax.model import attention
  shape = (args.batch, size, size, args.channels)
  q, k, v = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 3))

  def grad_of(fn):
    loss = lambda q_, k_, v_: jnp.sum(fn(q_, k_, v_) ** 2)  # noqa: E731
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return lambda: step(q, k, v)

  out = {"rows": grad_of(lambda *a: attention._offset_rows_attention(*a, args.window))}
  for chunk in (int(c) for c in args.chunks.split(",")):
    out[f"frame/{chunk}"] = grad_of(
        lambda *a, chunk=chunk: attention._frame_attention(*a, args.window, chunk))
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  from msrnn_jax.model import attention
  results = {}
  for size in (int(s) for s in args.sizes.split(",")):
    wall, _ = timing.interleaved(cases(size, args), args.rounds)
    frame_products, rows_products = attention._products_per_pixel(size, size, args.window)
    results[str(size)] = {
        "products_per_pixel": {"frame": frame_products, "rows": rows_products},
        "local_attention_takes": ("frame" if attention._takes_frame(size, size, args.window)
                                  else "rows"),
        "cases": {name: timing.ratio(ts, wall["rows"]) for name, ts in wall.items()}}
  report = {"settings": vars(args), "machine": timing.machine(), "results": results}
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "attention_bench.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"{args.batch} x {args.channels} channels, window {args.window}, {args.rounds} rounds; "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores")
  print("| frame | products, frame / rows | takes | case | seconds | / rows (range) |")
  print("|---|---|---|---|---|---|")
  for size, r in results.items():
    p = r["products_per_pixel"]
    for name, c in r["cases"].items():
      print(f"| {size}x{size} | {p['frame']} / {p['rows']} | {r['local_attention_takes']} | "
            f"{name} | {c['step_s']:.4f} | {c['ratio_median']:.2f} "
            f"({c['ratio_min']:.2f}-{c['ratio_max']:.2f}) |")
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
