"""Our training step against the PyTorch reference's, interleaved step by step.

A shared machine's speed drifts by 20-30% within minutes (docs/performance.md),
so timing the two frameworks one after the other compares the machine's moods
as much as the code. Here each training step runs in a process of its own
that waits for orders: the PyTorch rebuild of the authors' step
(``torch_reference.py --serve``, run with an interpreter that has torch) and
our compiled JAX step (this file's ``--serve-jax``). They take turns: one JAX
step, one PyTorch step, per round. Each round gives a ratio; the median of
the per-round ratios is the figure to read. Each process's peak resident
memory is its own: the one number that decides whether a run fits.

    python experiments/vs_torch.py --torch-python /path/to/torch-venv/bin/python \\
        --models convlstm,ms_convlstm --rounds 8
    python experiments/vs_torch.py --torch-python ... --dtype bfloat16 \\
        --models trajgru,ms_trajgru --batch 1
    python experiments/vs_torch.py --quick     # tiny shape, one round, a few seconds

Every family runs, plain and MS (ConvLSTM, TrajGRU, PredRNN, PredRNN++, MIM,
MotionRNN, PredRNN-V2, CMS-LSTM, MoDeRNN, PrecipLSTM, MK-LSTM; all 22 by
default). ``--dtype
bfloat16`` compares mixed precision on both sides: our
``model.dtype='bfloat16'`` against PyTorch's forward pass under
``torch.autocast('cpu', dtype=torch.bfloat16)``; ``--dtype both`` runs the
float32 pair and the bfloat16 pair in the same rounds, and also gives our
bfloat16 step against PyTorch's float32 one.

Shapes are the paper's (6 x 64 hidden, 64x64, T = 20) at ``--batch`` (4).
The JAX step is ``msrnn_jax.training.step.make_train_step`` (forward, loss,
backward, Adam; donated state) compiled ahead of time, one process per
``--conv-impls`` kernel; the PyTorch step is the reference's (see
``torch_reference.py``). ``--quick`` runs a tiny shape (6 x 4, 16x16,
T = 4, batch 1) for one round, to check that everything runs; without torch
it times the JAX step alone and says so.
Results go to ``experiments/results/vs_torch.json`` and a table is printed.

The JAX processes keep freed host memory for reuse as ``msrnn_jax.main`` does
(``msrnn_jax.backend.prepare_host``; ``--no-keep-freed-memory`` to compare);
the PyTorch processes run with glibc's defaults, as the authors run them,
unless ``--torch-malloc keep`` gives them the same settings.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
from parity import MODELS  # noqa: E402  (numpy only; the 22 models)

from msrnn_jax.analysis import timing  # noqa: E402

SHAPE = dict(hidden=64, num_layers=6, size=64, seq_len=20)
QUICK_SHAPE = dict(hidden=4, num_layers=6, size=16, seq_len=4)
SUFFIX = {"float32": "", "bfloat16": "_bf16"}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch-python", default=sys.executable,
                 help="a Python interpreter with torch installed (default: this one)")
  p.add_argument("--models", default=None,
                 help=f"comma-separated, of {', '.join(MODELS)} (default: all; --quick: convlstm)")
  p.add_argument("--conv-impls", default="auto",
                 help="JAX conv_impl values to compare, comma-separated (default: auto, what "
                      "msrnn_jax.create and the CLI use)")
  p.add_argument("--batch", type=int, default=None, help="batch size (default 4; --quick: 1)")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32",
                 help="bfloat16: our model.dtype='bfloat16' against PyTorch under "
                      "torch.autocast('cpu', torch.bfloat16); both: the two pairs interleaved")
  p.add_argument("--torch-reference", choices=("autocast", "fp32", "both"), default="autocast",
                 help="with --dtype bfloat16, the PyTorch step(s) ours is timed against: "
                      "autocast, float32 (not ours: the bfloat16 / PyTorch fp32 ratio in less "
                      "memory than --dtype both), or both")
  p.add_argument("--no-torch", action="store_true",
                 help="time our step alone at the full shape (where PyTorch's does not fit "
                      "beside it)")
  p.add_argument("--remat", default="auto",
                 help="our model's remat ('none', 'step', 'cell'; default auto: as the CLI, 'none' "
                      "when the step fits msrnn_jax.training.memory_fit's budget, else 'step')")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed steps first (two: the kept heap settles after the second)")
  p.add_argument("--quick", action="store_true",
                 help="tiny shape, one round, one warm-up step: checks that the comparison runs")
  p.add_argument("--out", default=None,
                 help="JSON to write (default experiments/results/vs_torch.json, "
                      "--quick: vs_torch_quick.json)")
  p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                 help="leave glibc malloc as it is in the JAX processes (default: "
                      "msrnn_jax.backend.prepare_host(), as msrnn_jax.main does)")
  p.add_argument("--torch-malloc", choices=("default", "keep"), default="default",
                 help="'keep' gives the PyTorch processes the same glibc settings (GLIBC_TUNABLES)")
  args = p.parse_args(argv)
  args.models = args.models or ("convlstm" if args.quick else ",".join(MODELS))
  bad = [m for m in args.models.split(",") if m not in MODELS]
  if bad:
    p.error(f"unknown model(s) {', '.join(bad)}; valid: {', '.join(MODELS)}")
  args.shape = dict(QUICK_SHAPE if args.quick else SHAPE)
  args.shape["batch"] = args.batch or (1 if args.quick else 4)
  if args.shape["batch"] < 1:
    p.error("--batch must be >= 1")
  if args.quick:
    args.rounds, args.warmup = 1, 1
  elif args.rounds < 3:
    p.error("--rounds must be >= 3 (the median of per-round ratios; --quick for a check)")
  args.out = args.out or os.path.join(
      HERE, "results", "vs_torch_quick.json" if args.quick else "vs_torch.json")
  return args


# ---------------------------------------------------------------------------
# The JAX side: one process per step (this file with --serve-jax).


def jax_step(name: str, shape: dict, conv_impl: str, dtype: str, remat: str):
  """Builds our compiled training step on random frames (as ``benchmark.py`` runs it).

  Args:
    name: the model name (``msrnn_jax.create``).
    shape: ``hidden``, ``num_layers``, ``size``, ``seq_len``, ``batch``.
    conv_impl: the convolution kernel the step is compiled with.
    dtype: the model's compute dtype.
    remat: the model's remat; ``'auto'`` decides as the training loop does
      (``msrnn_jax.training.memory_fit``).

  Returns:
    ``(step, remat, compile)``: a function that runs one step (forward,
    loss, backward, Adam on donated state) and returns the new state and
    the step's metrics; the remat it was compiled with; a function that
    compiles the step again and returns the executable (for its program).
  """
  import jax
  import jax.numpy as jnp
  import optax
  from benchmark import step_call

  from msrnn_jax import model as model_lib
  from msrnn_jax.training import memory_fit
  from msrnn_jax.training import step as train_step

  t = shape["seq_len"]
  frames_shape = (shape["batch"], t, shape["size"], shape["size"], 1)
  tx = optax.adam(3e-4)

  def model(mode, scan_unroll="auto"):
    return model_lib.create(name, hidden=shape["hidden"], num_layers=shape["num_layers"],
                            channels=1, in_len=t // 2, dtype=dtype, remat=mode,
                            conv_impl=conv_impl, scan_unroll=scan_unroll)

  def build(mode, scan_unroll="auto"):
    return train_step.make_train_step(model(mode, scan_unroll), tx, t // 2, 0.01)

  # Abstract arguments: the state's tree is the same whatever the remat and loop.
  base = model("none")
  state = jax.eval_shape(lambda: train_step.create_train_state(base, tx, frames_shape, 0))
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  args = (state, jax.ShapeDtypeStruct(frames_shape, jnp.float32), scalar, scalar)
  mode, step = memory_fit.fitted_train_step(
      remat, build, args,
      rolled=(lambda: build("none", 1)) if base.config.auto_unrolls(frames_shape) else None)
  # Called on real arrays, the jitted step runs the executable compiled for the check.
  return step_call(step, base, tx, frames_shape), mode, lambda: step.lower(*args).compile()


def serve(step, warmup: int, info: dict) -> None:
  """After ``warmup`` steps prints ``ready <info JSON>``; then one timed step per
  ``step`` line on stdin (prints its seconds), peak resident memory in GB per
  ``rss`` line; anything else ends it."""
  from msrnn_jax import backend
  for _ in range(warmup):
    timing.timed(step)
    backend.release_if_heap_moved()  # as the training loop does after every step
  print("ready " + json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() == "rss":
      print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, flush=True)
    elif line.strip() == "step":
      print(f"{timing.timed(step)[1]:.6f}", flush=True)
      backend.release_if_heap_moved()
    else:
      break


def serve_jax(argv: list[str]) -> int:
  """The ``--serve-jax`` child: ``MODEL CONV_IMPL DTYPE REMAT WARMUP KEEP SHAPE_JSON``."""
  name, conv_impl, dtype, remat, warmup, keep, shape = argv
  from msrnn_jax import backend

  kept = backend.prepare_host(keep_freed_memory=keep == "keep", restart_program=True)
  try:
    info = backend.describe(conv_impl)
    step, remat, _ = jax_step(name, json.loads(shape), conv_impl, dtype, remat)
  except ValueError as e:  # an unknown or unavailable kernel, a model option
    print(f"error: {e}", flush=True)
    return 2
  import jax
  # As the training loop does after compiling and after its first step
  # (msrnn_jax/backend/allocator.py).
  backend.release_freed_memory()
  jax.block_until_ready(step())
  backend.release_freed_memory()
  serve(step, max(int(warmup) - 1, 0),
        {"conv_impl": info.get("conv_impl"), "onednn": info.get("onednn"),
         "onednn_isa": info.get("cpu_isa"), "jax": jax.__version__, "keep_freed_memory": kept,
         "remat": remat})
  return 0


# ---------------------------------------------------------------------------
# The comparison.


class Served:
  """A child process serving one training step (``serve``'s protocol)."""

  def __init__(self, cmd: list[str], env: dict | None = None):
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env, cwd=ROOT)
    line = self.proc.stdout.readline().strip()
    if line.startswith("error:"):
      self.close()
      raise UserError(line)
    if not line.startswith("ready"):
      self.close()
      raise RuntimeError(f"{' '.join(cmd)} did not start (exit status {self.proc.returncode}, "
                         f"said {line!r})")
    self.info = json.loads(line[len("ready"):] or "{}")

  def _ask(self, order: str) -> float:
    self.proc.stdin.write(order + "\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def __call__(self) -> float:
    return self._ask("step")

  def max_rss_gb(self) -> float:
    return self._ask("rss")

  def close(self) -> None:
    if self.proc.stdin and not self.proc.stdin.closed:
      self.proc.stdin.close()
    self.proc.wait(timeout=120)


class UserError(Exception):
  """A problem with the command line, reported as one ``error:`` line."""


def torch_available(python: str) -> bool:
  try:
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
  except OSError:
    return False


def start_torch(args, name: str, dtype: str) -> Served:
  s = args.shape
  cmd = [args.torch_python, os.path.join(HERE, "torch_reference.py"), "--model", name, "--serve",
         "--warmup", str(args.warmup), "--hidden", str(s["hidden"]), "--size", str(s["size"]),
         "--batch", str(s["batch"]), "--seq-len", str(s["seq_len"]), "--dtype", dtype]
  env = dict(os.environ)
  if args.torch_malloc == "keep":  # the same glibc settings as backend.prepare_host()
    from msrnn_jax.backend import allocator
    env["GLIBC_TUNABLES"] = allocator.GLIBC_TUNABLES
  return Served(cmd, env)


def start_jax(args, name: str, conv_impl: str, dtype: str) -> Served:
  cmd = [sys.executable, os.path.abspath(__file__), "--serve-jax", name, conv_impl, dtype,
         args.remat, str(args.warmup), "keep" if args.keep_freed_memory else "default",
         json.dumps(args.shape)]
  return Served(cmd)


def _dtypes(arg: str) -> list[str]:
  return ["float32", "bfloat16"] if arg == "both" else [arg]


def compare(name: str, impls: list[str], args, with_torch: bool) -> dict:
  """Interleaved rounds of one model.

  Returns:
    ``times`` and ``max_rss_gb`` per step (``torch`` / ``<impl>`` float32,
    ``torch_bf16`` / ``<impl>_bf16`` mixed precision), ``torch*_step_s``, and
    per JAX step its time and resident-memory ratios to its PyTorch step.
  """
  torch_steps, jax_steps = {}, {}
  try:
    if with_torch:
      torch_dtypes = _dtypes(args.dtype)
      if args.dtype == "bfloat16":
        torch_dtypes = {"autocast": ["bfloat16"], "fp32": ["float32"],
                        "both": ["float32", "bfloat16"]}[args.torch_reference]
      for dtype in torch_dtypes:
        torch_steps["torch" + SUFFIX[dtype]] = start_torch(args, name, dtype)
    for dtype in _dtypes(args.dtype):
      for impl in impls:
        jax_steps[impl + SUFFIX[dtype]] = start_jax(args, name, impl, dtype)
    order = (*torch_steps, *jax_steps)

    def progress(r: int, wall: dict[str, list[float]]) -> None:
      print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {wall[k][-1]:.2f}s" for k in order),
            flush=True)

    # The children time their own steps (warmed up before they said ready): a
    # parent's clock would add the pipe's latency and read none of their CPU time.
    wall, _ = timing.interleaved({**jax_steps, **torch_steps}, args.rounds, warmup=0,
                                 self_timed=True, on_round=progress)
    times = {k: wall[k] for k in order}
    rss = {k: s.max_rss_gb() for k, s in (*jax_steps.items(), *torch_steps.items())}
    info = next(iter(jax_steps.values())).info
  finally:
    for s in (*torch_steps.values(), *jax_steps.values()):
      s.close()
  out = {"times": times, "max_rss_gb": rss, "jax_info": info,
         **{f"{k}_step_s": statistics.median(times[k]) for k in torch_steps}}
  for key in jax_steps:
    out[key] = {"step_s": statistics.median(times[key]), "max_rss_gb": rss[key],
                "remat": jax_steps[key].info.get("remat")}
    ref = "torch_bf16" if key.endswith("_bf16") and "torch_bf16" in times else "torch"
    if ref in times:
      out[key].update(timing.ratio(times[key], times[ref]), rss_ratio=rss[key] / rss[ref])
    if key.endswith("_bf16") and "torch" in times and ref != "torch":
      # mixed precision against PyTorch's fp32 step
      out[key]["vs_torch_fp32"] = timing.ratio(times[key], times["torch"])
  return out


def table(results: dict, impls: list[str], dtypes: list[str]) -> str:
  """The Markdown table: step times, ratios and peak resident memory side by side."""
  lines = ["| model | step | PyTorch | JAX | JAX / PyTorch (median of rounds, range) | "
           "peak RSS PyTorch | peak RSS JAX (ratio) | JAX / PyTorch fp32 |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in results["models"].items():
    for dtype in dtypes:
      tkey = "torch_bf16" if dtype == "bfloat16" and "torch_bf16" in r["times"] else "torch"
      has_torch = tkey in r["times"]
      for i in impls:
        x = r[i + SUFFIX[dtype]]
        vs32 = x.get("vs_torch_fp32")
        lines.append(
            f"| {name} | {dtype} `{i}` | "
            + (f"{r[tkey + '_step_s']:.2f} s" if has_torch else "-") + f" | {x['step_s']:.2f} s | "
            + (f"**{x['ratio_median']:.2f}** ({x['ratio_min']:.2f}-{x['ratio_max']:.2f})"
               if has_torch else "-")
            + " | " + (f"{r['max_rss_gb'][tkey]:.2f} GB" if has_torch else "-")
            + f" | {x['max_rss_gb']:.2f} GB"
            + (f" ({x['rss_ratio']:.2f})" if has_torch else "") + " | "
            + (f"**{vs32['ratio_median']:.2f}** ({vs32['ratio_min']:.2f}-"
               f"{vs32['ratio_max']:.2f})" if vs32 else "") + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--serve-jax"]:
    return serve_jax(argv[1:])
  args = parse_args(argv)
  impls = [i for i in args.conv_impls.split(",") if i]
  with_torch = not args.no_torch and torch_available(args.torch_python)
  if not with_torch:
    if not (args.quick or args.no_torch):
      print(f"error: {args.torch_python} cannot import torch; pass --torch-python with a "
            "virtualenv that has it (pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu), or --quick to time the JAX step alone")
      return 2
    print("timing the JAX step alone" + ("" if args.no_torch else
                                         f" (PyTorch not found in {args.torch_python})"), flush=True)
  results = {"settings": {**args.shape, "rounds": args.rounds, "warmup": args.warmup,
                          "remat": args.remat, "dtype": args.dtype, "conv_impls": impls,
                          "quick": args.quick, "torch": with_torch,
                          "loadavg_start": os.getloadavg(), "torch_malloc": args.torch_malloc},
             "models": {}}
  try:
    for name in args.models.split(","):
      print(f"{name}:", flush=True)
      results["models"][name] = compare(name, impls, args, with_torch)
  except UserError as e:
    print(e)
    return 2
  info = next(iter(results["models"].values()))["jax_info"]
  results["settings"].update(loadavg_end=os.getloadavg(), onednn_isa=info.get("onednn_isa"),
                             onednn=info.get("onednn"), jax=info.get("jax"),
                             jax_keep_freed_memory=info.get("keep_freed_memory"))
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(table(results, impls, _dtypes(args.dtype)))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
