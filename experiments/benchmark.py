"""Training-step speed: step time, compile time and achieved GFLOP/s.

For each model, the real jitted training step (``msrnn_jax.training.step.make_train_step``:
forward, loss, backward, Adam; state donated) is compiled ahead of time and
run on random frames:

* the rolled ``nn.scan`` path (``scan_unroll=1``) and the fully unrolled
  loop (``scan_unroll=T-1``; ``'auto'``, the default, picks one of the two
  from the family and the state maps' size): compile time, median step
  time over ``--repeats`` (>= 5) timed steps after ``--warmup`` steps, and
  compiled memory;
* FLOPs per step from XLA's cost analysis of the unrolled program (a rolled
  loop's body is counted once, see ``msrnn_jax/analysis/footprint.py``), hence GFLOP/s of
  both paths;
* the scan path's compile time at T=20 and T=40 (compile only), which should
  hardly grow since the loop body is compiled once.

Shapes: the default is CPU-sized (6 layers x 16 channels, 32x32, T=10,
batch 2, every family, plain and MS); ``--paper`` uses the paper's shape (6 x 64, 64x64,
T=20, batch 4; convlstm, ms_convlstm, predrnn, ms_predrnn; slow: tens of
seconds per step on 2 cores); ``--quick`` is CI-sized. Results go to
``experiments/results/benchmark[_paper|_quick].json`` (resumable: models
already there are skipped) and a table is printed::

    python experiments/benchmark.py
    python experiments/benchmark.py --paper
    python experiments/benchmark.py --quick
    python experiments/benchmark.py --models ms_mim,mim --repeats 7

A model's paths, and an MS model and its plain stack when both are listed,
are timed in the same rounds, one step of each per round
(``msrnn_jax.analysis.timing.interleaved``): a shared machine's drifts hit
them alike, so the table's MS / plain and scan / unrolled ratios compare
steps measured side by side (absolute seconds still drift). Like
``msrnn_jax.main``, the script first makes glibc keep freed memory for reuse
(``msrnn_jax.backend.prepare_host``), so steps do not page-fault their
temporaries in again; ``--no-keep-freed-memory`` leaves malloc as it is
(docs/performance.md). ``--conv-impl`` is the models'
convolution kernel (``msrnn_jax.model.create``'s ``conv_impl``).
"""

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msrnn_jax import backend  # noqa: E402
from msrnn_jax import model as model_lib  # noqa: E402
from msrnn_jax.analysis import footprint, timing  # noqa: E402
from msrnn_jax.model import cells  # noqa: E402
from msrnn_jax.training import step as train_step  # noqa: E402

CELLS = tuple(cells.FAMILIES)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SHAPES = {
    "cpu": dict(hidden=16, num_layers=6, size=32, seq_len=10, batch=2,
                models=tuple(n for c in CELLS for n in (c, f"ms_{c}"))),
    "paper": dict(hidden=64, num_layers=6, size=64, seq_len=20, batch=4,
                  models=("convlstm", "ms_convlstm", "predrnn", "ms_predrnn")),
    "quick": dict(hidden=8, num_layers=6, size=16, seq_len=6, batch=2,
                  models=("convlstm", "ms_convlstm")),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--paper", action="store_true", help="the paper's shape (slow)")
  mode.add_argument("--quick", action="store_true", help="CI-sized run")
  p.add_argument("--models", default=None, help="comma-separated model names")
  p.add_argument("--repeats", type=int, default=5, help="timed steps (median reported), >= 5")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--no-unrolled", action="store_true", help="skip the fully unrolled path")
  p.add_argument("--no-compile-t40", action="store_true",
                 help="skip the T=20 vs T=40 compile-time comparison")
  p.add_argument("--conv-impl", default="auto",
                 help="the models' convolution kernel (msrnn_jax.model.create's conv_impl): "
                      + ", ".join(backend.CONV_IMPLS))
  p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                 help="leave glibc malloc as it is (default: backend.prepare_host(), "
                      "as msrnn_jax.main does)")
  p.add_argument("--malloc-tuning", action="store_true",
                 help="accepted for old command lines; keeping freed memory is the default now")
  p.add_argument("--out", default=None, help="output JSON path")
  p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
  args = p.parse_args(argv)
  if args.repeats < 5:
    p.error("--repeats must be >= 5")
  args.shape = "paper" if args.paper else "quick" if args.quick else "cpu"
  args.out = args.out or os.path.join(
      RESULTS, "benchmark" + ("" if args.shape == "cpu" else f"_{args.shape}") + ".json")
  return args


def available_bytes() -> int | None:
  """Physical memory of the host (CPU backend only; None elsewhere)."""
  if jax.default_backend() != "cpu":
    return None
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def step_call(compiled, model, tx, shape) -> Callable[[], Any]:
  """One training step per call on a real state, which each call advances (donated)."""
  state = jax.jit(lambda: train_step.create_train_state(model, tx, shape, 0))()
  frames = jax.random.uniform(jax.random.PRNGKey(1), shape, jnp.float32)
  # eta = 0.5: scheduled sampling mixes truth and predictions, as in training.
  eta, eta_c = jnp.asarray(0.5, jnp.float32), jnp.asarray(1.0, jnp.float32)

  def step():
    nonlocal state
    state, metrics = compiled(state, frames, eta, eta_c)
    return state, metrics

  return step


def pairs(names: list[str]) -> list[list[str]]:
  """``names`` in order, each MS model grouped with its plain stack when both are listed."""
  groups: dict[str, list[str]] = {}
  for name in names:
    groups.setdefault(name.removeprefix("ms_"), []).append(name)
  return list(groups.values())


def bench_models(names: list[str], args, sh: dict) -> dict[str, dict]:
  """Compiles every path of ``names``, then times all of them in the same rounds.

  Interleaved step by step (``timing.interleaved``), so the MS / plain and
  scan / unrolled ratios compare steps measured side by side.
  """
  t = sh["seq_len"]
  in_len = t // 2
  shape = (sh["batch"], t, sh["size"], sh["size"], 1)
  tx = optax.adam(3e-4)
  opts = dict(hidden=sh["hidden"], num_layers=sh["num_layers"], channels=1, in_len=in_len,
              conv_impl=args.conv_impl)
  paths = {"scan": 1} if args.no_unrolled else {"scan": 1, "unrolled": t - 1}
  outs, calls = {}, {}
  for name in names:
    out = outs[name] = {"model": name, "params": footprint.param_count(
        name, hidden=sh["hidden"], num_layers=sh["num_layers"])}
    for path, unroll in paths.items():
      model = model_lib.create(name, scan_unroll=unroll, **opts)
      # Compiled ahead of time on abstract arguments: nothing is allocated yet.
      compiled, compile_s, compile_cpu_s = timing.timed(
          lambda model=model: footprint.compile_train_step(model, tx, shape, in_len, 0.01)[1])
      need, have = footprint.memory_sizes(compiled)["total"], available_bytes()
      out[path] = {"compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
                   "total_bytes": need, "raw_flops": footprint.flops_of(compiled)}
      if have is not None and need > 0.9 * have:
        # E.g. unrolled PredRNN at the paper's shape needs ~32 GB on a 24 GB host.
        out[path]["skipped"] = f"needs {need / 1e9:.1f} GB, {have / 1e9:.1f} GB available"
        print(f"  {name} {path}: compile {compile_s:.1f}s; not run: {out[path]['skipped']}",
              flush=True)
      else:
        calls[name, path] = step_call(compiled, model, tx, shape)
  wall, cpu = timing.interleaved({f"{n} {p}": c for (n, p), c in calls.items()}, args.repeats,
                                 args.warmup)
  for name, path in calls:
    times, cpu_times, p = wall[f"{name} {path}"], cpu[f"{name} {path}"], outs[name][path]
    p.update(step_s=statistics.median(times), step_min_s=min(times), times=times,
             step_cpu_s=statistics.median(cpu_times), cpu_times=cpu_times)
    print(f"  {name} {path}: compile {p['compile_s']:.1f}s ({p['compile_cpu_s']:.1f} CPU-s), "
          f"step {p['step_s']:.3f}s (min {min(times):.3f}, max {max(times):.3f}; "
          f"CPU {p['step_cpu_s']:.3f}s)", flush=True)
  del calls  # the states
  for name, out in outs.items():
    # Compiled even if too large to run; custom-call kernels hide their FLOPs.
    if args.shape == "quick":  # a check that everything runs: FLOP counting compiles twice more
      out["flops"] = None
    elif "unrolled" in out and backend.resolve(args.conv_impl) in backend.FLOP_COUNTABLE:
      out["flops"] = out["unrolled"]["raw_flops"]
    else:
      # footprint.analyze counts the FLOPs of kernels XLA's cost analysis cannot
      # see into (custom calls) on a visible kernel (backend.FLOP_COUNTABLE).
      out["flops"] = footprint.analyze(name, image_size=sh["size"], batch_per_device=sh["batch"],
                                       seq_len=t, flops="multiply", hidden=sh["hidden"],
                                       num_layers=sh["num_layers"],
                                       conv_impl=args.conv_impl)["flops"]
    for path in paths:
      if "step_s" in out[path] and out["flops"]:
        out[path]["gflops_per_s"] = out["flops"] / out[path]["step_s"] / 1e9
    if not args.no_compile_t40:
      def compile_at(tt, name=name):
        model = model_lib.create(name, scan_unroll=1, **{**opts, "in_len": tt // 2})
        return lambda: footprint.compile_train_step(
            model, tx, (sh["batch"], tt, sh["size"], sh["size"], 1), tt // 2, 0.01)[1]
      secs, cpu_secs = timing.interleaved({f"T{tt}": compile_at(tt) for tt in (20, 40)},
                                          rounds=1, warmup=0)
      for key in secs:
        out[f"scan_compile_s_{key}"] = secs[key][0]
        out[f"scan_compile_cpu_s_{key}"] = cpu_secs[key][0]
      print(f"  {name} scan compile T=20 {out['scan_compile_s_T20']:.1f}s "
            f"({out['scan_compile_cpu_s_T20']:.1f} CPU-s), T=40 {out['scan_compile_s_T40']:.1f}s "
            f"({out['scan_compile_cpu_s_T40']:.1f} CPU-s)", flush=True)
  return outs


def _giga(value: float | None, unit: float = 1e9, digits: int = 2) -> str:
  """``value / unit`` for the table; blank where it was not measured (``--quick``: no FLOPs)."""
  return "" if value is None else f"{value / unit:.{digits}f}"


def table(results: dict, markdown: bool = False) -> str:
  rows = results["models"]
  cols = ["model", "path", "compile s", "step s", "step CPU s", "GFLOP", "GFLOP/s",
          "mem GB", "MS/plain", "scan/unrolled", "compile T40/T20"]
  out = []
  for name, r in rows.items():
    for path in ("scan", "unrolled"):
      if path not in r:
        continue
      p = r[path]
      ms = su = ct = ""
      if "step_s" not in p:  # compiled but too large to run on this host
        out.append([name, path, f"{p['compile_s']:.1f}", "not run", "", _giga(r["flops"]),
                    "", f"{p['total_bytes'] / 1e9:.3f}", "", "", ""])
        continue
      plain = rows.get(name[3:], {}) if name.startswith("ms_") else {}
      if "step_s" in plain.get(path, {}):
        ms = f"{p['step_s'] / plain[path]['step_s']:.2f} ({p['step_cpu_s'] / plain[path]['step_cpu_s']:.2f})"
      if path == "scan" and "step_s" in r.get("unrolled", {}):
        su = f"{p['step_s'] / r['unrolled']['step_s']:.2f} ({p['step_cpu_s'] / r['unrolled']['step_cpu_s']:.2f})"
      if path == "scan" and "scan_compile_s_T40" in r:
        ct = (f"{r['scan_compile_s_T40'] / r['scan_compile_s_T20']:.2f} "
              f"({r['scan_compile_cpu_s_T40'] / r['scan_compile_cpu_s_T20']:.2f})")
      out.append([name, path, f"{p['compile_s']:.1f}", f"{p['step_s']:.3f}",
                  f"{p['step_cpu_s']:.3f}", _giga(r["flops"]), _giga(p.get("gflops_per_s"), 1e0, 1),
                  f"{p['total_bytes'] / 1e9:.3f}", ms, su, ct])
  if markdown:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in out])
  widths = [max([len(c)] + [len(r[i]) for r in out]) for i, c in enumerate(cols)]
  fmt = lambda r: " ".join(v.ljust(w) if i < 2 else v.rjust(w)  # noqa: E731
                           for i, (v, w) in enumerate(zip(r, widths, strict=True)))
  note = "ratios: wall (process CPU time)"
  return "\n".join([note, fmt(cols), "-" * len(fmt(cols))] + [fmt(r) for r in out])


def main(argv=None) -> None:
  args = parse_args(argv)
  # Before JAX starts its backend, as msrnn_jax.main does (docs/performance.md).
  malloc_tuned = backend.prepare_host(keep_freed_memory=args.keep_freed_memory,
                                      restart_program=True)
  sh = SHAPES[args.shape]
  names = args.models.split(",") if args.models else list(sh["models"])
  settings = {k: v for k, v in sh.items() if k != "models"}
  settings.update(conv_impl=args.conv_impl, repeats=args.repeats, warmup=args.warmup,
                  malloc_tuned=malloc_tuned,
                  backend=jax.default_backend(), device=str(jax.devices()[0].device_kind))
  results = {"settings": settings, "models": {}}
  if os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)
    if old.get("settings") == settings:
      results = old
  print(f"shape {args.shape}: {settings}", flush=True)
  print(backend.summary(args.conv_impl), flush=True)

  def done(name):
    return name in results["models"] and ("unrolled" in results["models"][name]
                                          or args.no_unrolled)

  for group in pairs(names):
    todo = [n for n in group if not done(n)]
    if not todo:
      continue
    print(f"{', '.join(todo)}:", flush=True)
    results["models"].update(bench_models(todo, args, sh))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
  print(table(results, args.markdown))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
