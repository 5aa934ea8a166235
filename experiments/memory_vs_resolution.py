"""Training memory vs frame size, and the largest frame that fits a budget.

For each model (every family, plain and MS) and remat mode, compiles the
real training step at each frame size without running it
(``msrnn_jax.analysis.footprint.analyze``) and records XLA's per-device
memory analysis; then finds the largest square frame whose step fits the budget
(``footprint.find_max_resolution``, seeded with the sweep's own figures). The
defaults are the paper's settings: 6 layers x 64 channels, 3x3 kernels,
T = 20 (10 -> 10), one example per device, float32, Adam.

Writes ``<out>.json`` (every analysis; the sweep resumes from it, skipping
entries already there), ``<out>.csv``, ``<out>.png`` (memory vs resolution,
log scale) and ``<out>_max.png`` (largest frame in the budget), and prints a
table. Examples::

    # Full sweep (hours on 2 CPU cores; resumable: rerun to continue).
    python experiments/memory_vs_resolution.py
    # Some models, sizes and remat modes only.
    python experiments/memory_vs_resolution.py --models convlstm,ms_convlstm \\
        --remat step --sizes 256,512,1024
    # CI-sized run (two models, small hidden, two sizes, a 50 MB budget).
    python experiments/memory_vs_resolution.py --quick

Convolutions default to ``--conv-impl xla`` (the models' ``conv_impl``): the GPU path (``conv_impl='auto'``
resolves to it on GPU), which is where a 40 GB budget applies. The CPU path
(``matmul``) builds im2col patches for the kernel gradient and needs more
temporary memory (see experiments/README.md).
"""

import argparse
import csv
import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msrnn_jax.analysis import footprint  # noqa: E402
from msrnn_jax.model import cells  # noqa: E402

CELLS = tuple(cells.FAMILIES)
ALL_MODELS = tuple(n for c in CELLS for n in (c, f"ms_{c}"))
REMATS = ("none", "step", "cell")
DEFAULT_SIZES = (32, 64, 128, 256, 512, 1024)
# --quick's values of the flags the command line does not give.
QUICK = dict(models="convlstm,ms_convlstm", sizes="16,32", remat="none,step", hidden=8,
             budget_gb=0.05, max_size=256)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CSV_FIELDS = ("model", "remat", "size", "total_bytes", "temp_bytes", "argument_bytes",
              "output_bytes", "alias_bytes", "params", "paper_all_bytes", "implied_units",
              "compile_s", "host_max_rss_bytes", "conv_impl", "hidden", "num_layers", "seq_len",
              "batch_per_device")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(ALL_MODELS),
                 help="comma-separated model names (default: every family, plain and MS)")
  p.add_argument("--remat", default=",".join(REMATS), help="comma-separated remat modes")
  p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                 help="comma-separated square frame sizes")
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--num-layers", type=int, default=6)
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--batch", type=int, default=1, help="examples per device")
  p.add_argument("--conv-impl", default="xla",
                 help="the models' convolution kernel (conv_impl; see module docstring)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype (bfloat16: activations and residuals in bfloat16; "
                      "parameters and Adam state stay float32)")
  p.add_argument("--budget-gb", type=float, default=40.0, help="memory budget per device, GB")
  p.add_argument("--no-max-res", action="store_true", help="skip the max-resolution search")
  p.add_argument("--max-size", type=int, default=8192, help="cap of the max-resolution search")
  p.add_argument("--out", default=None,
                 help="output path without extension (default experiments/results/"
                      "memory_vs_resolution[_quick])")
  p.add_argument("--quick", action="store_true",
                 help="CI-sized: convlstm + ms_convlstm, hidden 8, sizes 16,32, remat none,step, "
                      "budget 0.05 GB (explicit flags still override models/sizes/remat)")
  p.add_argument("--no-plot", action="store_true")
  p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
  args = p.parse_args(argv)
  if args.quick:
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    for key, value in QUICK.items():
      if "--" + key.replace("_", "-") not in given:
        setattr(args, key, value)
  args.out = args.out or os.path.join(
      RESULTS, "memory_vs_resolution" + ("_quick" if args.quick else ""))
  return args


def settings_of(args) -> dict:
  """The settings every entry of one results file shares."""
  return {"hidden": args.hidden, "num_layers": args.num_layers, "seq_len": args.seq_len,
          "batch_per_device": args.batch, "conv_impl": args.conv_impl, "kernel_size": 3,
          "channels": 1, "dtype": args.dtype, "optimizer": "adam"}


def load(path: str, settings: dict) -> dict:
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
    if data.get("settings") != settings:
      raise SystemExit(f"{path} holds results for other settings {data.get('settings')}; "
                       f"use --out for a new file.")
    return data
  return {"settings": settings, "entries": [], "max_resolution": []}


def save(path: str, data: dict) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)  # atomic: an interrupted run never corrupts the file


def run_sweep(args, data: dict, path: str) -> None:
  models = [m for m in args.models.split(",") if m]
  remats = [r for r in args.remat.split(",") if r]
  sizes = [int(s) for s in args.sizes.split(",") if s]
  # The rolled time loop at every size, as these curves have always been
  # measured: scan_unroll='auto' would unroll some families from 64x64 on.
  opts = dict(hidden=args.hidden, num_layers=args.num_layers, dtype=args.dtype,
              conv_impl=args.conv_impl, scan_unroll=1)
  done = {(e["model"], e["remat"], e["size"]) for e in data["entries"]}
  for name in models:
    for remat in remats:
      for size in sizes:
        if (name, remat, size) in done:
          continue
        t0 = time.perf_counter()
        try:
          r = footprint.analyze(name, image_size=size, batch_per_device=args.batch,
                                seq_len=args.seq_len, flops="none", remat=remat, **opts)
        except ValueError as e:  # e.g. a size the pyramid cannot take
          print(f"skip {name} remat={remat} {size}: {e}", flush=True)
          continue
        r.update(remat=remat, size=size)
        data["entries"].append(r)
        save(path, data)
        print(f"{name:15s} remat={remat:4s} {size:5d}: total {r['total_bytes'] / 1e9:9.3f} GB "
              f"(temp {r['temp_bytes'] / 1e9:.3f}) compile {r['compile_s']:.1f}s "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)
  if args.no_max_res:
    return
  budget = args.budget_gb * 1e9
  done_max = {(e["model"], e["remat"]) for e in data["max_resolution"]
              if e["budget_bytes"] == budget}
  for name in models:
    for remat in remats:
      if (name, remat) in done_max:
        continue
      known = {e["size"]: e["total_bytes"] for e in data["entries"]
               if e["model"] == name and e["remat"] == remat}
      fit = [s for s, b in known.items() if b <= budget]
      over = [s for s, b in known.items() if b > budget]
      lo = max(fit) if fit else None
      above = [s for s in over if lo is None or s > lo]
      hi = min(above) if above else None
      t0 = time.perf_counter()
      try:
        res = footprint.find_max_resolution(name, budget, batch_per_device=args.batch,
                                            seq_len=args.seq_len, lo=lo, hi=hi,
                                            max_size=args.max_size, known=known, remat=remat,
                                            **opts)
      except ValueError as e:
        print(f"max-res {name} remat={remat}: {e}", flush=True)
        res = {"model": name, "size": None, "bytes": None, "next_size": None,
               "next_bytes": None, "error": str(e), "budget_bytes": budget}
      res.update(remat=remat, seconds=time.perf_counter() - t0)
      data["max_resolution"].append(res)
      save(path, data)
      print(f"{name:15s} remat={remat:4s} max {res['size']} "
            f"({(res['bytes'] or 0) / 1e9:.4g} GB; next {res['next_size']}: "
            f"{(res['next_bytes'] or 0) / 1e9:.4g} GB) "
            f"{len(res.get('evaluations', []))} compiles", flush=True)


def write_csv(path: str, data: dict) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for e in sorted(data["entries"], key=lambda e: (e["model"], e["remat"], e["size"])):
      w.writerow(e)
  with open(path.replace(".csv", "_max.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=("model", "remat", "budget_bytes", "size", "bytes",
                                      "next_size", "next_bytes"), extrasaction="ignore")
    w.writeheader()
    for e in data["max_resolution"]:
      w.writerow(e)


def table(data: dict, budget: float, markdown: bool = False) -> str:
  """Total GB per model x remat at each size, MS/plain ratio, max size in the budget."""
  entries = data["entries"]
  sizes = sorted({e["size"] for e in entries})
  by = {(e["model"], e["remat"], e["size"]): e["total_bytes"] for e in entries}
  maxres = {(e["model"], e["remat"]): e for e in data["max_resolution"]
            if e["budget_bytes"] == budget}
  keys = sorted({(e["model"], e["remat"]) for e in entries},
                key=lambda k: (REMATS.index(k[1]) if k[1] in REMATS else 9,
                               CELLS.index(k[0].removeprefix("ms_"))
                               if k[0].removeprefix("ms_") in CELLS else len(CELLS),
                               k[0].startswith("ms_"), k[0]))
  cols = (["model", "remat"] + [str(s) for s in sizes]
          + ["MS/plain@64", "MS/plain@max", f"max in {budget / 1e9:g} GB"])
  rows = []
  for name, remat in keys:
    cells = [by.get((name, remat, s)) for s in sizes]
    row = [name, remat] + [f"{c / 1e9:.3f}" if c is not None else "-" for c in cells]
    ratios = ["", ""]
    if name.startswith("ms_"):
      # MS/plain at 64x64 (the paper's Moving MNIST size) and at the largest
      # size both have (where the fixed parameter/Adam memory matters least).
      common = [s for s in sizes if (name, remat, s) in by and (name[3:], remat, s) in by]
      for i, s in enumerate((64 if 64 in common else None, common[-1] if common else None)):
        if s is not None:
          ratios[i] = f"{by[(name, remat, s)] / by[(name[3:], remat, s)]:.3f}" + (
              f"@{s}" if i else "")
    m = maxres.get((name, remat))
    rows.append(row + ratios + [str(m["size"]) if m else "-"])
  if markdown:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
  widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
            for i, c in enumerate(cols)]
  fmt = lambda r: " ".join(v.rjust(w) if i > 1 else v.ljust(w)  # noqa: E731
                           for i, (v, w) in enumerate(zip(r, widths, strict=True)))
  lines = ["total memory per device, GB (compile-only)", fmt(cols), "-" * len(fmt(cols))]
  return "\n".join(lines + [fmt(r) for r in rows])


def plot(data: dict, out: str, budget: float) -> None:
  entries = data["entries"]
  remats = [r for r in REMATS if any(e["remat"] == r for e in entries)]
  colors = {c: plt.cm.tab20(i) for i, c in enumerate(CELLS)}
  fig, axes = plt.subplots(1, len(remats), figsize=(5 * len(remats), 4.2), squeeze=False,
                           sharey=True)
  for ax, remat in zip(axes[0], remats, strict=True):
    for name in sorted({e["model"] for e in entries}):
      pts = sorted((e["size"], e["total_bytes"] / 1e9) for e in entries
                   if e["model"] == name and e["remat"] == remat)
      if not pts:
        continue
      cell = name.removeprefix("ms_")
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if name.startswith("ms_") else "-",
              marker="o", ms=3, color=colors.get(cell, "k"), label=name)
    ax.axhline(budget / 1e9, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"remat={remat}")
    ax.set_xlabel("frame size (pixels per side)")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][0].set_ylabel("compiled memory per device (GB)")
  axes[0][-1].legend(fontsize=7, ncol=2)
  s = data["settings"]
  fig.suptitle(f"Training-step memory, {s['num_layers']}x{s['hidden']}, T={s['seq_len']}, "
               f"batch/device={s['batch_per_device']}, conv={s['conv_impl']} "
               f"(solid: plain, dashed: MS; dotted: {budget / 1e9:g} GB)", fontsize=9)
  fig.tight_layout()
  fig.savefig(out + ".png", dpi=120)
  plt.close(fig)

  maxres = [e for e in data["max_resolution"] if e["budget_bytes"] == budget]
  if not maxres:
    return
  remats = [r for r in REMATS if any(e["remat"] == r for e in maxres)]
  shown = [c for c in CELLS if any(e["model"].removeprefix("ms_") == c for e in maxres)]
  fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shown) * len(remats) / 2), 4.2))
  width = 0.8 / (2 * len(remats))
  for j, remat in enumerate(remats):
    for k, prefix in enumerate(("", "ms_")):
      vals = []
      for c in shown:
        e = next((e for e in maxres if e["model"] == prefix + c and e["remat"] == remat), None)
        vals.append((e or {}).get("size") or 0)
      pos = [i + (2 * j + k - len(remats) + 0.5) * width for i in range(len(shown))]
      bars = ax.bar(pos, vals, width, label=f"{'MS' if prefix else 'plain'}, remat={remat}",
                    color=plt.cm.Paired(2 * j + k))
      ax.bar_label(bars, fontsize=6, rotation=90, padding=2)
  ax.set_xticks(range(len(shown)), shown)
  ax.set_ylabel(f"largest square frame in {budget / 1e9:g} GB")
  ax.legend(fontsize=7, ncol=len(remats))
  ax.set_title("Max training resolution per device (compile-only)", fontsize=9)
  fig.tight_layout()
  fig.savefig(out + "_max.png", dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  args = parse_args(argv)
  path = args.out + ".json"
  data = load(path, settings_of(args))
  run_sweep(args, data, path)
  write_csv(args.out + ".csv", data)
  budget = args.budget_gb * 1e9
  print(table(data, budget, args.markdown))
  if not args.no_plot:
    plot(data, args.out, budget)
  print(f"wrote {path}, {args.out}.csv" + ("" if args.no_plot else f", {args.out}.png"))


if __name__ == "__main__":
  main()
