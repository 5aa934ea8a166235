"""A/B: the fused gate VJPs (``msrnn_jax.model.gates``) against plain autodiff of the same maths.

Compiles the real training step (``footprint.compile_train_step``, state donated)
twice in one process: with the cells' fused custom-VJP gate functions (the
library) and with those functions' plain bodies, so autodiff derives the
backward pass. Reports compiled memory of both and step times measured
interleaved (one step of each per round, median over rounds), so drifts of a
shared machine hit both alike.

    python experiments/gates_ab.py --model convlstm            # paper shape
    python experiments/gates_ab.py --model predrnn --size 32 --seq-len 10 --rounds 5
"""

import argparse
import importlib
import json
import os
import pkgutil
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msrnn_jax import model as model_lib  # noqa: E402
from msrnn_jax.analysis import footprint  # noqa: E402
from msrnn_jax.model import cells, gates  # noqa: E402
from msrnn_jax.training import step as train_step  # noqa: E402

GATE_FUNCTIONS = ("lstm_update", "memory_update", "gated_tanh")
# The cell modules (one file per cell), which import the gate functions by name.
CELL_MODULES = tuple(importlib.import_module(f"{cells.__name__}.{m.name}")
                     for m in pkgutil.iter_modules(cells.__path__))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="convlstm")
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--out", default=None, help="JSON path (default: print only)")
  return p.parse_args(argv)


def use_fused_gates(fused: bool) -> None:
  """Points the cells at the custom-VJP gate functions or at their plain bodies."""
  for name in GATE_FUNCTIONS:
    fn = getattr(gates, name)
    for module in CELL_MODULES:
      if hasattr(module, name):
        # The plain body of the backend.on_activations custom VJP behind each.
        setattr(module, name, fn if fused else getattr(gates, f"_{name}").fun)


def main(argv=None) -> dict:
  args = parse_args(argv)
  shape = (args.batch, args.seq_len, args.size, args.size, 1)
  in_len = args.seq_len // 2
  frames = jax.random.uniform(jax.random.PRNGKey(1), shape)
  inputs = (frames, jnp.float32(0.5), jnp.float32(1.0))
  runs, result = {}, {"settings": vars(args), "variants": {}}
  try:
    for variant in ("autodiff", "fused"):
      use_fused_gates(variant == "fused")
      model = model_lib.create(args.model, channels=1, in_len=in_len, hidden=args.hidden)
      tx = optax.adam(1e-4)
      state = jax.jit(
          lambda model=model, tx=tx: train_step.create_train_state(model, tx, shape, 0))()
      _, compiled, _, compile_s = footprint.compile_train_step(model, tx, shape, in_len, 0.0)
      state, _ = compiled(state, *inputs)  # warm-up
      jax.block_until_ready(state)
      runs[variant] = [compiled, state]
      result["variants"][variant] = {"compile_s": compile_s,
                                     "total_bytes": footprint.memory_sizes(compiled)["total"],
                                     "times": []}
  finally:
    use_fused_gates(True)
  for _ in range(args.rounds):
    for variant, run in runs.items():
      t0 = time.perf_counter()
      run[1], _ = run[0](run[1], *inputs)
      jax.block_until_ready(run[1])
      result["variants"][variant]["times"].append(time.perf_counter() - t0)
  ratios = [f / a for f, a in zip(result["variants"]["fused"]["times"],
                                  result["variants"]["autodiff"]["times"], strict=True)]
  result["time_ratio_fused_over_autodiff"] = statistics.median(ratios)
  result["memory_ratio_fused_over_autodiff"] = (result["variants"]["fused"]["total_bytes"]
                                                / result["variants"]["autodiff"]["total_bytes"])
  print(f"{args.model} {args.size}x{args.size} T={args.seq_len} batch {args.batch} "
        f"hidden {args.hidden}")
  print("| gates | step s (median) | memory GB | compile s |")
  print("|---|---|---|---|")
  for variant, r in result["variants"].items():
    r["step_s"] = statistics.median(r["times"])
    print(f"| {variant} | {r['step_s']:.2f} | {r['total_bytes'] / 1e9:.3f} | "
          f"{r['compile_s']:.1f} |")
  print(f"fused / autodiff: time {result['time_ratio_fused_over_autodiff']:.3f} "
        f"(median of per-round ratios), memory {result['memory_ratio_fused_over_autodiff']:.3f}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
