"""Where one training step's time goes, operation by operation (``jax.profiler``).

Compiles the real training step at the paper's shape (or the one ``--hidden``, ``--size`` and
``--seq-len`` give) as ``vs_torch.py`` does (``vs_torch.jax_step``), runs two warm-up steps,
traces a third with ``jax.profiler`` and joins each traced operation with the compiled
program's instruction of the same name: its kind (a custom call's target such as
``msrnn_onednn_conv_bwd``, an XLA fusion, a concatenate, ...), its shape and the model code it
came from. Prints the time per kind and the slowest operations, and writes JSON.

    python experiments/profile_step.py --model predrnn --dtype float32 --batch 2
    python experiments/profile_step.py --model predrnn_pp --dtype bfloat16 --top 30
    python experiments/profile_step.py --quick   # tiny shape (6 x 4, 16x16, T = 4), seconds
    python experiments/profile_step.py --model cms_lstm --batch 8 --hidden 16 --size 32 --seq-len 10

The times are the operations' wall times. XLA:CPU runs independent operations side by side,
so their sum can exceed the step, and an operation's time includes waiting for cores that
another one holds (a oneDNN convolution dispatched beside another waits for it): read the
kinds' shares and their ``wall s`` (the time in which any operation of the kind ran), and time
a suspect on its own before acting on it. Run it on a quiet machine.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

# A thunk's name in the trace is its instruction's; these events are the runtime's own.
_RUNTIME = re.compile(r"^\$|Execute|PjitFunction|ThreadPool|Handle$|ParseArguments|Wait$|"
                      r"CreateOutputs|AllocateOutputBuffers|CollectGarbage|Listener|^end:")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="predrnn")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--hidden", type=int, default=None, help="channels (default: the paper's 64)")
  p.add_argument("--size", type=int, default=None, help="frame side (default: the paper's 64)")
  p.add_argument("--seq-len", type=int, default=None, help="frames (default: the paper's 20)")
  p.add_argument("--remat", default="none",
                 help="the model's remat (default none; auto: as the training loop decides)")
  p.add_argument("--top", type=int, default=20, help="slowest operations to list")
  p.add_argument("--quick", action="store_true", help="a tiny shape, to check that it runs")
  p.add_argument("--out", default=None,
                 help="JSON path (default experiments/results/profile_<model>_<dtype>.json)")
  return p.parse_args(argv)


def instructions(hlo_text: str) -> dict[str, dict]:
  """Each instruction of the compiled program: its kind, result type and model op name."""
  table = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?(\S+) = (\(.*?\)|\S+) ([\w-]+)\(", line)
    if not m:
      continue
    name, result, opcode = m.groups()
    target = re.search(r'custom_call_target="([^"]+)"', line)
    op_name = re.search(r'op_name="([^"]+)"', line)
    kind = target.group(1) if target else ("fusion: " + re.sub(r"\.\d+$", "", name)
                                           if opcode == "fusion" else opcode)
    table[name] = {"kind": kind, "result": result,
                   "op_name": op_name.group(1) if op_name else ""}
  return table


def trace_events(trace_dir: str) -> list[dict]:
  """The complete events (``ph == 'X'``) of the perfetto trace ``jax.profiler`` wrote."""
  path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  return [e for e in events if e.get("ph") == "X"]


def covered_s(intervals: list[tuple[float, float]]) -> float:
  """Seconds covered by the union of ``(start_us, end_us)`` intervals."""
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total / 1e6


def summarise(events: list[dict], table: dict[str, dict], top: int) -> dict:
  """Seconds per kind of operation and the slowest operations, from the trace."""
  seconds, calls = collections.Counter(), collections.Counter()
  spans = collections.defaultdict(list)
  for e in events:
    if not _RUNTIME.search(e["name"]):
      seconds[e["name"]] += e.get("dur", 0) / 1e6
      calls[e["name"]] += 1
      spans[e["name"]].append((e["ts"], e["ts"] + e.get("dur", 0)))
  kinds = collections.Counter()
  for name, s in seconds.items():
    kinds[table.get(name, {"kind": "other"})["kind"]] += s
  total = sum(seconds.values())
  # Fusions grouped by their kind name (e.g. every dynamic-update-slice fusion together).
  groups = collections.Counter()
  group_spans = collections.defaultdict(list)
  for name, s in seconds.items():
    kind = table.get(name, {"kind": "other"})["kind"]
    group = "fusion" if kind.startswith("fusion: ") else kind
    groups[group] += s
    group_spans[group] += spans[name]
  return {
      "total_s": total,
      # wall_s: the time in which at least one operation of the kind ran. Summed durations
      # (s) count twice what overlaps, and a convolution waiting for another one's cores
      # (backend/native/onednn_conv.cc runs them one at a time) counts that one's time too.
      "by_kind": [{"kind": k, "s": s, "share": s / total, "wall_s": covered_s(group_spans[k])}
                  for k, s in groups.most_common()],
      "fusions": [{"kind": k.removeprefix("fusion: "), "s": s, "share": s / total}
                  for k, s in kinds.most_common() if k.startswith("fusion: ")][:top],
      "slowest": [{"name": n, "s": s, "calls": calls[n], **table.get(n, {})}
                  for n, s in seconds.most_common(top)],
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  from msrnn_jax import backend
  backend.prepare_host(keep_freed_memory=True, restart_program=True)  # as msrnn_jax.main
  import jax
  from vs_torch import QUICK_SHAPE, SHAPE, jax_step

  shape = dict(QUICK_SHAPE if args.quick else SHAPE, batch=args.batch)
  shape.update({k: v for k in ("hidden", "size", "seq_len") if (v := getattr(args, k)) is not None})
  step, args.remat, compile_step = jax_step(args.model, shape, "auto", args.dtype, args.remat)
  table = instructions(compile_step().as_text())
  for _ in range(2):
    jax.block_until_ready(step())
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      jax.block_until_ready(step())
    step_s = time.perf_counter() - start
    summary = summarise(trace_events(trace_dir), table, args.top)

  print(f"{args.model}, {args.dtype}, {shape}, remat {args.remat}: traced step "
        f"{step_s:.2f} s, operations {summary['total_s']:.2f} s\n")
  print("| kind | s | share | wall s |\n|---|---|---|---|")
  for row in summary["by_kind"][:12]:
    print(f"| {row['kind']} | {row['s']:.3f} | {row['share']:.1%} | {row['wall_s']:.3f} |")
  print("\n| fusion | s | share |\n|---|---|---|")
  for row in summary["fusions"][:12]:
    print(f"| {row['kind']} | {row['s']:.3f} | {row['share']:.1%} |")
  print("\n| operation | kind | result | s | calls | model op |\n|---|---|---|---|---|---|")
  for row in summary["slowest"]:
    op = row.get("op_name", "").replace("jit(train_step)/", "")[-60:]
    print(f"| {row['name']} | {row.get('kind', '?')} | {row.get('result', '')[:28]} | "
          f"{row['s']:.3f} | {row['calls']} | {op} |")
  out = args.out or os.path.join(HERE, "results", f"profile_{args.model}_{args.dtype}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"settings": vars(args), "step_s": step_s, "backend": backend.describe("auto"),
               "jax": jax.__version__, **summary}, f, indent=1)
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
