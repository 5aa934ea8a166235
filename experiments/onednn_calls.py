"""Our training step's oneDNN calls against PyTorch's, primitive by primitive.

Both frameworks run their convolutions on oneDNN, which reports every call it
executes (primitive, implementation, problem, milliseconds) when
``ONEDNN_VERBOSE=1``. This runs one JAX step process and one PyTorch step
process with that setting (paper shape, as ``vs_torch.py``). They take turns,
one step each per round after a warm-up step, so the machine's drift falls on
both alike. Every step executes the same calls, so each process's log splits
into its steps by count. Printed: per primitive and problem, the calls per step
and the milliseconds per step on each side (means over the rounds), then each
side's oneDNN total beside its step's wall time. What a step spends outside
oneDNN is its wall time less its oneDNN total.

    python experiments/onednn_calls.py --torch-python /path/to/torch-venv/bin/python \\
        --model ms_predrnn_pp --batch 2 [--dtype bfloat16]

Results go to ``experiments/results/onednn_calls_<model>_<dtype>.json``. Verbose
logging adds a little to every call on both sides.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PREFIX = "onednn_verbose,"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="ms_predrnn_pp")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--rounds", type=int, default=3, help="timed steps per process (after 1 warm-up)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="bfloat16: our model.dtype='bfloat16' against PyTorch under "
                      "torch.autocast(bfloat16), as vs_torch.py --dtype bfloat16")
  p.add_argument("--torch-python", default=None,
                 help="an interpreter with torch; without it only our calls are listed")
  p.add_argument("--out", default=None)
  p.add_argument("--quick", action="store_true", help="tiny shape (vs_torch.py's), a few seconds")
  p.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--shape", help=argparse.SUPPRESS)  # the child's, as JSON
  args = p.parse_args(argv)
  sys.path[:0] = [HERE, ROOT]
  from parity import MODELS  # numpy only: the torch child imports it too
  if args.model not in MODELS:
    p.error(f"unknown model {args.model!r}; valid: {', '.join(MODELS)}")
  if args.rounds < 1 or args.batch < 1:
    p.error("--rounds and --batch must be >= 1")
  args.out = args.out or os.path.join(HERE, "results",
                                     f"onednn_calls_{args.model}_{args.dtype}.json")
  return args


def child(args: argparse.Namespace) -> None:
  """Runs a step per ``step`` line on stdin; prints its seconds to stderr as ``step S``."""
  shape = json.loads(args.shape)
  if args.child == "jax":
    from msrnn_jax import backend
    backend.prepare_host(keep_freed_memory=True, restart_program=True)
    import jax
    from vs_torch import jax_step
    step_fn, _, _ = jax_step(args.model, shape, "auto", args.dtype, "none")

    def step():
      jax.block_until_ready(step_fn())
  else:
    import torch
    import torch_reference as ref
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(2022)
    generator = torch.Generator().manual_seed(0)
    model = ref.build(args.model, shape["hidden"], shape["num_layers"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    t = shape["seq_len"]
    frames = torch.rand(t, args.batch, 1, shape["size"], shape["size"], generator=generator)

    def step():
      ref.train_step(model, opt, frames, t // 2, 0.5, generator,
                     autocast=args.dtype == "bfloat16")
  for line in sys.stdin:
    if line.strip() != "step":
      break
    start = time.perf_counter()
    step()
    print(f"step {time.perf_counter() - start:.4f}", file=sys.stderr, flush=True)


def executions(log: str) -> list[tuple[str, str, str, float]]:
  """``(primitive kind, implementation, problem, ms)`` of every executed call in a verbose log.

  oneDNN 3.2 writes ``onednn_verbose,exec,cpu,PRIM,IMPL,PROP,MDS,ATTR,AUX,
  PROBLEM,MS``; later versions insert ``v1,primitive,`` after the prefix. The
  implementation is oneDNN's name for it with the source's data type, e.g.
  ``brgconv:avx512_core_bf16 bf16``.
  """
  calls = []
  for line in log.splitlines():
    if not line.startswith(PREFIX):
      continue
    f = line.strip().split(",")[1:]
    if f[:2] == ["v1", "primitive"]:
      f = f[2:]
    if f[0] != "exec":
      continue
    prim, impl, prop, problem, ms = f[2], f[3], f[4], f[-2], float(f[-1])
    kind = prim if prop in ("undef", "") else f"{prim} {prop.removesuffix('_training')}"
    # The first memory descriptor, 'src_bf16::blocked:...' (3.2) or 'src:bf16::...'.
    src = f[5].split(" ")[0].replace(":", "_").split("_")
    if len(src) > 1 and src[1]:
      impl = f"{impl} {src[1]}"
    calls.append((kind, impl, problem, ms))
  return calls


class Side:
  """A step process whose oneDNN log goes to a file; ``step()`` runs one step."""

  def __init__(self, args: argparse.Namespace, side: str, python: str, folder: str):
    from vs_torch import QUICK_SHAPE, SHAPE  # the torch child has no JAX to import them with
    shape = dict(QUICK_SHAPE if args.quick else SHAPE, batch=args.batch)
    self.name, self.log = side, os.path.join(folder, f"{side}.log")
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "PYTHONPATH": ROOT}
    cmd = [python, os.path.abspath(__file__), "--child", side, "--model", args.model,
           "--batch", str(args.batch), "--dtype", args.dtype, "--shape", json.dumps(shape)]
    with open(self.log, "w") as log:
      self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log,
                                   stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    self.tail: list[str] = []
    self.seconds: list[float] = []

  def step(self) -> None:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    for line in self.proc.stderr:  # JAX's and absl's logging come through here too
      if line.startswith("step "):
        self.seconds.append(float(line.split()[1]))
        return
      self.tail = (self.tail + [line.rstrip()])[-3:]
    raise SystemExit(f"the {self.name} process failed (exit {self.proc.wait()}): "
                     f"{' | '.join(self.tail)}")

  def finish(self, rounds: int) -> dict:
    """Ends the process; its per-step calls (warm-up step left out) and step times."""
    self.proc.stdin.close()
    self.proc.wait()  # the log is complete once the process has flushed it at exit
    with open(self.log) as f:
      calls = executions(f.read())
    per_step, rest = divmod(len(calls), rounds + 1)
    if rest or not per_step:
      raise SystemExit(f"the {self.name} steps executed different oneDNN calls ({len(calls)} "
                       f"calls in {rounds + 1} steps); nothing to compare per step")
    table = collections.defaultdict(lambda: [0, 0.0, set()])
    for kind, impl, problem, ms in calls[per_step:]:
      table[(kind, problem)][0] += 1
      table[(kind, problem)][1] += ms
      table[(kind, problem)][2].add(impl)
    return {"step_s": self.seconds[1:], "calls_per_step": per_step,
            "onednn_ms_per_step": sum(ms for *_, ms in calls[per_step:]) / rounds,
            "calls": {f"{k} | {p}": {"calls": n // rounds, "ms": ms / rounds,
                                     "impl": " / ".join(sorted(impls))}
                      for (k, p), (n, ms, impls) in table.items()}}


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    child(args)
    return 0
  with tempfile.TemporaryDirectory() as folder:
    procs = {"ours": Side(args, "jax", sys.executable, folder)}
    if args.torch_python:
      procs["pytorch"] = Side(args, "torch", args.torch_python, folder)
    for r in range(args.rounds + 1):  # round 0 is the warm-up
      for p in (procs.values() if r % 2 else reversed(procs.values())):
        p.step()
    sides = {n: p.finish(args.rounds) for n, p in procs.items()}
  keys = sorted(set().union(*(s["calls"] for s in sides.values())),
                key=lambda k: -max(s["calls"].get(k, {"ms": 0})["ms"] for s in sides.values()))
  names = list(sides)
  print("| primitive | problem | "
        + " | ".join(f"{n} calls | {n} ms | {n} implementation" for n in names) + " |")
  print("|---|---|" + "---|---|---|" * len(names))
  for k in keys:
    kind, problem = k.split(" | ")
    cells = [s["calls"].get(k, {"calls": 0, "ms": 0.0, "impl": "-"}) for s in sides.values()]
    print(f"| {kind} | {problem} | "
          + " | ".join(f"{c['calls']} | {c['ms']:.0f} | {c['impl']}" for c in cells) + " |")
  for n, s in sides.items():
    wall = sum(s["step_s"]) / len(s["step_s"])
    print(f"{n}: {s['calls_per_step']} oneDNN calls per step, {s['onednn_ms_per_step'] / 1e3:.2f} s "
          f"of a {wall:.2f} s step (outside oneDNN: {wall - s['onednn_ms_per_step'] / 1e3:.2f} s)")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"model": args.model, "batch": args.batch, "dtype": args.dtype,
               "rounds": args.rounds, "quick": args.quick, **sides}, f, indent=1)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
