"""Our training step against the PyTorch reference's, interleaved step by step.

This VM's speed drifts by 20-30% within minutes (docs/performance.md), so
timing the two frameworks one after the other compares the machine's moods
as much as the code. Here a PyTorch process (``torch_reference.py --serve``,
run with a separate interpreter that has torch) and this process's compiled
JAX step take turns: one JAX step, one PyTorch step, per round. Each round
gives a ratio; the median of the per-round ratios is the figure to read.

    python experiments/vs_torch.py --torch-python /path/to/torch-venv/bin/python \\
        --models convlstm,ms_convlstm --conv-impls onednn,matmul --rounds 8
    python experiments/vs_torch.py --torch-python ... --dtype bfloat16 \
        --models convlstm,ms_convlstm,predrnn,ms_predrnn --conv-impls onednn

``--dtype bfloat16`` compares mixed precision on both sides: our
``model.dtype='bfloat16'`` against PyTorch's forward pass under
``torch.autocast('cpu', dtype=torch.bfloat16)``; ``--dtype both`` runs the
float32 pair and the bfloat16 pair in the same rounds, and also gives our
bfloat16 step against PyTorch's float32 one.

Shapes are the paper's (6 x 64 hidden, 64x64, T = 20, batch 4). The JAX
step is ``msrnn_jax.training.step.make_train_step`` (forward, loss,
backward, Adam; donated state), the PyTorch step the reference's (see
``torch_reference.py``). Each ``--conv-impls`` kernel is a model of its
own (``conv_impl``), so the compiled steps of several kernels take turns.
Results go to ``experiments/results/vs_torch.json`` and a table is printed.

This process keeps freed host memory for reuse as ``msrnn_jax.main`` does
(``msrnn_jax.backend.prepare_host``; ``--no-keep-freed-memory`` to compare); the
PyTorch process runs with glibc's defaults, as the authors run it, unless
``--torch-malloc keep`` gives it the same settings. The JSON also records
both processes' peak resident memory.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from msrnn_jax import backend  # noqa: E402
from msrnn_jax import model as model_lib  # noqa: E402
from msrnn_jax.analysis import footprint  # noqa: E402
from msrnn_jax.training import step as train_step  # noqa: E402

SHAPE = dict(hidden=64, num_layers=6, size=64, seq_len=20, batch=4)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch-python", required=True,
                 help="a Python interpreter with torch installed (e.g. a separate venv)")
  p.add_argument("--models", default="convlstm,ms_convlstm")
  p.add_argument("--conv-impls", default="onednn,matmul", help="JAX conv_impl values to compare")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32",
                 help="bfloat16: our model.dtype='bfloat16' against PyTorch under "
                      "torch.autocast('cpu', torch.bfloat16); both: the two pairs interleaved")
  p.add_argument("--torch-reference", choices=("autocast", "fp32", "both"), default="autocast",
                 help="with --dtype bfloat16, the PyTorch step(s) ours is timed against: "
                      "autocast, float32 (not ours: the bfloat16 / PyTorch fp32 ratio in less "
                      "memory than --dtype both), or both")
  p.add_argument("--remat", default="none", help="our model's remat ('none', 'step', 'cell')")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed steps first (two: the kept heap settles after the second)")
  p.add_argument("--out", default=os.path.join(HERE, "results", "vs_torch.json"))
  p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                 help="leave glibc malloc as it is in this (JAX) process (default: "
                      "msrnn_jax.backend.prepare_host(), as msrnn_jax.main does)")
  p.add_argument("--torch-malloc", choices=("default", "keep"), default="default",
                 help="'keep' gives the PyTorch process the same glibc settings (GLIBC_TUNABLES)")
  args = p.parse_args(argv)
  if args.rounds < 3:
    p.error("--rounds must be >= 3")
  return args


class TorchStep:
  """A persistent ``torch_reference.py --serve`` process: one step per call."""

  def __init__(self, python: str, model: str, warmup: int, keep_freed_memory: bool = False,
               dtype: str = "float32"):
    cmd = [python, os.path.join(HERE, "torch_reference.py"), "--model", model, "--serve",
           "--warmup", str(warmup), "--size", str(SHAPE["size"]), "--batch", str(SHAPE["batch"]),
           "--seq-len", str(SHAPE["seq_len"]), "--dtype", dtype]
    env = dict(os.environ)
    if keep_freed_memory:  # the same glibc settings as backend.prepare_host()
      env["GLIBC_TUNABLES"] = backend.allocator.GLIBC_TUNABLES
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    line = self.proc.stdout.readline().strip()
    if line != "ready":
      raise RuntimeError(f"{' '.join(cmd)} did not start (said {line!r})")

  def __call__(self) -> float:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def max_rss_gb(self) -> float:
    self.proc.stdin.write("rss\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


class JaxStep:
  """The compiled JAX training step on random frames (as ``benchmark.py`` runs it).

  The model carries its ``conv_impl``, so steps of several kernels can take
  turns in one process.
  """

  def __init__(self, name: str, conv_impl: str, warmup: int, dtype: str = "float32",
               remat: str = "none"):
    t = SHAPE["seq_len"]
    self.shape = (SHAPE["batch"], t, SHAPE["size"], SHAPE["size"], 1)
    model = model_lib.create(name, hidden=SHAPE["hidden"], num_layers=SHAPE["num_layers"],
                             channels=1, in_len=t // 2, dtype=dtype, remat=remat,
                             conv_impl=conv_impl)
    tx = optax.adam(3e-4)
    _, self.compiled, _, _ = footprint.compile_train_step(model, tx, self.shape, t // 2, 0.01)
    self.state = jax.jit(lambda: train_step.create_train_state(model, tx, self.shape, 0))()
    self.frames = jax.random.uniform(jax.random.PRNGKey(1), self.shape, jnp.float32)
    self.eta = (jnp.asarray(0.5, jnp.float32), jnp.asarray(1.0, jnp.float32))
    for _ in range(warmup):
      self()

  def __call__(self) -> float:
    t0 = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.frames, *self.eta)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


def _dtypes(arg: str) -> list[str]:
  return ["float32", "bfloat16"] if arg == "both" else [arg]


def _ratio(times: list[float], reference: list[float]) -> dict:
  ratios = [j / p for j, p in zip(times, reference, strict=True)]
  return {"step_s": statistics.median(times), "ratio_median": statistics.median(ratios),
          "ratio_min": min(ratios), "ratio_max": max(ratios), "ratios": ratios}


def compare(name: str, impls: list[str], args) -> dict:
  """Interleaved rounds; keys ``torch`` / ``<impl>`` (float32) and ``torch_bf16`` /
  ``<impl>_bf16`` (mixed precision)."""
  suffix = {"float32": "", "bfloat16": "_bf16"}
  torch_steps, jax_steps = {}, {}
  try:
    torch_dtypes = _dtypes(args.dtype)
    if args.dtype == "bfloat16":
      torch_dtypes = {"autocast": ["bfloat16"], "fp32": ["float32"],
                      "both": ["float32", "bfloat16"]}[args.torch_reference]
    for dtype in torch_dtypes:
      torch_steps["torch" + suffix[dtype]] = TorchStep(
          args.torch_python, name, args.warmup, args.torch_malloc == "keep", dtype)
    for dtype in _dtypes(args.dtype):
      for impl in impls:
        jax_steps[impl + suffix[dtype]] = JaxStep(name, impl, args.warmup, dtype, args.remat)
    times = {k: [] for k in (*torch_steps, *jax_steps)}
    for r in range(args.rounds):
      for key, step in (*jax_steps.items(), *torch_steps.items()):
        times[key].append(step())
      print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True)
    # Peak resident memory: the PyTorch processes', and this process's so far
    # (every JAX step built in it up to now).
    rss = {"jax": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           **{k: t.max_rss_gb() for k, t in torch_steps.items()}}
  finally:
    for t in torch_steps.values():
      t.close()
  out = {"times": times, "max_rss_gb": rss,
         **{f"{k}_step_s": statistics.median(times[k]) for k in torch_steps}}
  for key in jax_steps:
    ref = "torch_bf16" if key.endswith("_bf16") and "torch_bf16" in times else "torch"
    out[key] = _ratio(times[key], times[ref])
    if key.endswith("_bf16") and "torch" in times:  # mixed precision against PyTorch's fp32 step
      out[key]["vs_torch_fp32"] = _ratio(times[key], times["torch"])
  return out


def main(argv=None) -> None:
  args = parse_args(argv)
  kept = backend.prepare_host(keep_freed_memory=args.keep_freed_memory)
  impls = [i for i in args.conv_impls.split(",") if i]
  for impl in impls:
    backend.resolve(impl)  # fails here, with the reason, for an unknown or unavailable kernel
  # oneDNN's version and ISA (describe() reports them for the oneDNN kernel).
  info = backend.describe("onednn" if "onednn" in impls else "auto")
  results = {"settings": {**SHAPE, "rounds": args.rounds, "warmup": args.warmup,
                          "remat": args.remat,
                          "dtype": args.dtype, "onednn_isa": info.get("cpu_isa"),
                          "onednn": info.get("onednn"), "loadavg_start": os.getloadavg(),
                          "jax_keep_freed_memory": kept, "torch_malloc": args.torch_malloc},
             "models": {}}
  for name in args.models.split(","):
    print(f"{name}:", flush=True)
    results["models"][name] = compare(name, impls, args)
  results["settings"]["loadavg_end"] = os.getloadavg()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print("| model | step | PyTorch | JAX | JAX / PyTorch (median of rounds, range) | "
        "JAX / PyTorch fp32 |")
  print("|---|---|---|---|---|---|")
  for name, r in results["models"].items():
    for dtype in _dtypes(args.dtype):
      tkey = "torch_bf16" if dtype == "bfloat16" and "torch_bf16_step_s" in r else "torch"
      for i in impls:
        key = i if dtype == "float32" else f"{i}_bf16"
        x = r[key]
        vs32 = x.get("vs_torch_fp32")
        print(f"| {name} | {dtype} `{i}` | {r[tkey + '_step_s']:.2f} s | {x['step_s']:.2f} s | "
              f"**{x['ratio_median']:.2f}** ({x['ratio_min']:.2f}-{x['ratio_max']:.2f}) | "
              + (f"**{vs32['ratio_median']:.2f}** ({vs32['ratio_min']:.2f}-"
                 f"{vs32['ratio_max']:.2f})" if vs32 else "") + " |")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
