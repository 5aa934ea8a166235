"""Renders the docs' measured figures from the committed data in ``experiments/measured/``.

A figure lives in one place: the data file an experiment wrote (with its command,
machine, commit and date). The Markdown pages hold rendered copies between markers (indented
like the opening marker, so a block can sit in a list item)::

    <!-- render: NAME -->
    ...generated...
    <!-- /render -->

    python experiments/render.py           # rewrite every block (and the plots)
    python experiments/render.py --check   # exit 1 naming each block that differs from its data

``tests/test_render.py`` runs the check, so a page and its data cannot disagree.
"""

import argparse
import json
import pathlib
import re
import statistics
import sys
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
MEASURED = REPO / "experiments" / "measured"
PAGES = ("README.md", "docs/model.md", "docs/performance.md", "docs/data.md", "docs/running.md",
         "experiments/README.md")
BLOCK = re.compile(r"^(?P<indent>[ ]*)<!-- render: (?P<name>[\w-]+) -->\n(?P<body>.*?)"
                   r"^(?P=indent)<!-- /render -->", re.DOTALL | re.MULTILINE)
# The families in the paper's Table I order (later families follow when measured).
FAMILY_ORDER = ("convlstm", "trajgru", "predrnn", "predrnn_pp", "mim", "motionrnn", "predrnn_v2",
                "cms_lstm", "modernn", "preciplstm", "mk_lstm")
PRETTY = {"convlstm": "ConvLSTM", "trajgru": "TrajGRU", "predrnn": "PredRNN",
          "predrnn_pp": "PredRNN++", "mim": "MIM", "motionrnn": "MotionRNN",
          "predrnn_v2": "PredRNN-V2", "cms_lstm": "CMS-LSTM", "modernn": "MoDeRNN",
          "preciplstm": "PrecipLSTM", "mk_lstm": "MK-LSTM"}


# --------------------------------------------------------------------------- reproduction

def load_receipts(folder: pathlib.Path) -> list[dict]:
  """Every receipt of a ``reproduce.py`` output folder, sorted by model and seed."""
  receipts = [json.loads(p.read_text()) for p in sorted(folder.glob("*_seed*.json"))]
  return sorted(receipts, key=lambda r: (r["model"], r["seed"]))


def _stats(values: list[float]) -> tuple[float, float | None]:
  """Mean and sample standard deviation (None for one value: there is no spread to give)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(receipts: list[dict]) -> dict:
  """Per model: seeds and metrics; per family: MS/plain; the baselines' mean over runs.

  Returns:
    ``{"models": {name: {...}}, "families": [{...}], "baselines": {name: {...}}}``
    where a model's entry holds ``seeds``, per-seed future MSE and the mean and
    standard deviation of each metric, and a family's entry the MS/plain ratio of
    the means over the seeds both models have, the per-seed ratios and whether MS
    is lower in every one of those seeds. Every family of ``FAMILY_ORDER`` has an
    entry; one without a seed measured for both models has no ratio.
  """
  by_model: dict[str, dict[int, dict]] = {}
  for r in receipts:
    by_model.setdefault(r["model"], {})[r["seed"]] = r
  baselines = {}
  for name in ("blank", "copy_last"):
    runs = [r["baselines"][name] for r in receipts]
    if runs:
      baselines[name] = {f"{m}_{p}": statistics.fmean(b[p][m] for b in runs)
                         for p in ("all", "future") for m in ("mse", "mae", "ssim", "psnr")}
  models = {}
  for name, seeds in by_model.items():
    entry = {"seeds": sorted(seeds), "mse_future_per_seed": {s: seeds[s]["future"]["mse"]
                                                             for s in sorted(seeds)}}
    for p in ("all", "future"):
      for m in ("mse", "mae", "ssim", "psnr"):
        entry[f"{m}_{p}"] = _stats([seeds[s][p][m] for s in sorted(seeds)])
    entry["wall_s"] = statistics.fmean(seeds[s]["receipt"]["wall_s"] for s in seeds)
    # A sitting killed before it could record its end leaves its time out of wall_s.
    entry["wall_partial"] = any(seg.get("end") is None for s in seeds
                                for seg in seeds[s]["receipt"]["segments"])
    models[name] = entry
  # Every family of the library has a row, so the table says which are still missing.
  measured = {m.removeprefix("ms_") for m in models if "_noskip" not in m}
  families = []
  for family in FAMILY_ORDER + tuple(sorted(measured - set(FAMILY_ORDER))):
    plain, ms = by_model.get(family, {}), by_model.get(f"ms_{family}", {})
    # Seeds only one of the two models has would make the ratio compare different draws.
    shared = sorted(set(plain) & set(ms))
    if not shared:
      families.append({"family": family, "complete": False})
      continue
    per_seed = {s: ms[s]["future"]["mse"] / plain[s]["future"]["mse"] for s in shared}
    families.append({
        "family": family, "complete": len(shared) >= 3, "seeds": shared,
        "ratio": (statistics.fmean(ms[s]["future"]["mse"] for s in shared)
                  / statistics.fmean(plain[s]["future"]["mse"] for s in shared)),
        "per_seed": per_seed, "ms_lower_every_seed": all(v < 1 for v in per_seed.values()),
    })
  return {"models": models, "families": families, "baselines": baselines}


def _pm(stat: tuple[float, float | None], digits: int = 2) -> str:
  mean, std = stat
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def reproduce_table(folder: pathlib.Path) -> str:
  """experiments/README: every model and the baselines, then MS/plain per family."""
  s = summarize(load_receipts(folder))
  blank = s["baselines"].get("blank", {}).get("mse_future")
  lines = ["| model | seeds | MSE all | MSE future | future MSE per seed | SSIM future "
           "| PSNR future | / blank | minutes per run |", "|---|---|---|---|---|---|---|---|---|"]
  for name, b in s["baselines"].items():
    lines.append(f"| {name} | - | {b['mse_all']:.2f} | {b['mse_future']:.2f} | - | "
                 f"{b['ssim_future']:.4f} | {b['psnr_future']:.2f} | "
                 f"{b['mse_future'] / blank:.2f} | - |")
  order = sorted(s["models"], key=lambda m: ((FAMILY_ORDER + (m,)).index(
      m.removeprefix("ms_").removesuffix("_noskip")), m.startswith("ms_"), m.endswith("_noskip")))
  for name in order:
    e = s["models"][name]
    seeds = " / ".join(f"{v:.2f}" for v in e["mse_future_per_seed"].values())
    lines.append(f"| {name} | {len(e['seeds'])} | {_pm(e['mse_all'])} | {_pm(e['mse_future'])} "
                 f"| {seeds} | {_pm(e['ssim_future'], 4)} | {_pm(e['psnr_future'])} | "
                 f"{e['mse_future'][0] / blank:.2f} | {e['wall_s'] / 60:.0f}"
                 f"{'+' if e['wall_partial'] else ''} |")
  if any(e["wall_partial"] for e in s["models"].values()):
    lines += ["", "+: a sitting of the run was killed before it recorded its time, which is "
              "left out."]
  lines += ["", "| family | MS / plain (future MSE, seeds both have) | per seed | MS lower in every seed |",
            "|---|---|---|---|"]
  for f in s["families"]:
    if "ratio" not in f:
      lines.append(f"| {PRETTY.get(f['family'], f['family'])} | not yet measured | - | - |")
      continue
    seeds = " / ".join(f"{v:.2f}" for v in f["per_seed"].values())
    every = ("yes" if f["ms_lower_every_seed"] else "**no**") + (
        "" if f["complete"] else f" ({len(f['seeds'])} of 3 seeds)")
    lines.append(f"| {PRETTY.get(f['family'], f['family'])} | {f['ratio']:.2f} | {seeds} "
                 f"| {every} |")
  return "\n".join(lines) + "\n"


def reproduce_headline(folder: pathlib.Path) -> str:
  """README: one line per family."""
  s = summarize(load_receipts(folder))
  parts = []
  for f in s["families"]:
    if "ratio" not in f:
      continue
    name = PRETTY.get(f["family"], f["family"])
    if f["complete"]:
      seeds = "every seed" if f["ms_lower_every_seed"] else "not every seed"
    else:
      seeds = f"{len(f['seeds'])} of 3 seeds so far" + (
          "" if f["ms_lower_every_seed"] else ", not lower in every one")
    parts.append(f"MS-{name} {f['ratio']:.2f}x {name} ({seeds})")
  return ("; ".join(parts) if parts else "no family has both models measured yet") + ".\n"


def reproduce_plot(folder: pathlib.Path, path: pathlib.Path) -> None:
  """MS/plain future MSE per family, one point per seed, the mean as a bar."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  families = [f for f in summarize(load_receipts(folder))["families"] if "ratio" in f]
  fig = Figure(figsize=(1.2 * max(4, len(families)) + 1.5, 3.4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for i, f in enumerate(families):
    ax.bar(i, f["ratio"], color="tab:blue", alpha=0.35, width=0.6)
    ax.scatter([i] * len(f["per_seed"]), list(f["per_seed"].values()), color="tab:blue", s=18,
               zorder=3)
  ax.axhline(1.0, color="black", lw=0.8, ls="--")
  ax.set_xticks(range(len(families)), [PRETTY.get(f["family"], f["family"]) for f in families],
                fontsize=8)
  ax.set_ylabel("MS / plain future MSE")
  ax.set_title("Below 1: the multi-scale model predicts better (points: seeds)", fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110, metadata={"Software": None})


# --------------------------------------------------------------------------- measured tables

def _data(name: str) -> dict:
  return json.loads((MEASURED / f"{name}.json").read_text())


def _source(d: dict) -> str:
  """The provenance line under a table: command, machine, commit, date."""
  return (f"`{d['command']}`; {d['note'] + '; ' if d.get('note') else ''}{d['machine']}; "
          f"commit {d['commit']}, {d['date']}.\n")


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def demo_table() -> str:
  d = _data("demo")
  rows = [[r["dtype"], r["wall"], f"{r['steps_per_s']}", f"{r['mse_all']:.2f}",
           f"**{r['mse_future']:.2f}**", f"{r['mae_future']:.2f}", f"{r['ssim_future']:.3f}",
           f"{r['psnr_future']:.2f}", f"{r['mse_future'] / r['blank_mse_future']:.2f}",
           f"{r['mse_future'] / r['copy_last_mse_future']:.2f}"] for r in d["rows"]]
  return _table(["dtype", "wall", "steps/s", "MSE all", "MSE future", "MAE future", "SSIM future",
                 "PSNR future", "/ blank", "/ copy-last"], rows) + "\n" + _source(d)


def demo_output() -> str:
  """README: what the demo prints (the first row of the demo data)."""
  r = _data("demo")["rows"][0]
  return ("```\n"
          f"  model     future MSE {r['mse_future']:9.3f}  MAE {r['mae_future']:9.3f}  "
          f"SSIM {r['ssim_future']:.4f}  PSNR {r['psnr_future']:.2f}\n"
          f"  copy_last future MSE {r['copy_last_mse_future']:9.3f}  ...\n"
          f"  blank     future MSE {r['blank_mse_future']:9.3f}  ...\n"
          f"  model future MSE = {r['mse_future'] / r['copy_last_mse_future']:.2f}x copy_last, "
          f"{r['mse_future'] / r['blank_mse_future']:.2f}x blank "
          "(below 1 = better than that baseline)\n```\n")


def parity_table(name: str = "parity") -> str:
  d = _data(name)
  rows = [[r["model"], f"{r['params_16']:,} / {r['params_64']:,}", f"{r['output']:.1e}",
           f"{r['loss']:.1e}", f"{r['gradient']:.1e} (`{r['tensor']}`)"] for r in d["rows"]]
  return _table(["model", "parameters (x16 / x64)", "output", "loss",
                 "worst gradient (tensor)"], rows) + "\n" + _source(d)


def _opt(v) -> str:
  return "-" if v is None else f"{v:.2f}"


def vs_torch_bf16_table() -> str:
  d = _data("vs_torch_bf16")
  rows = [[r["model"], f"{r['torch_fp32_s']:.2f} s", f"{r['autocast_s']:.2f} s",
           f"{r['ours_bf16_s']:.2f} s", f"**{r['vs_autocast']:.2f}** ({r['vs_autocast_range']})",
           f"**{r['vs_fp32']:.2f}** ({r['vs_fp32_range']})",
           f"{_opt(r['remat_vs_autocast'])}, {_opt(r['remat_vs_fp32'])}"] for r in d["rows"]]
  return _table(["model", "PyTorch fp32", "PyTorch autocast", "ours bf16", "/ autocast",
                 "/ PyTorch fp32", "`remat='step'`: / autocast, / fp32"], rows) + "\n" + _source(d)


def _compared_rows(name: str) -> tuple[list[dict], list[str]]:
  """The rows of a vs_torch data file measured beside PyTorch, and its CPUs as the runs name
  them (e.g. 'AMD EPYC with AVX2, no AVX-512')."""
  runs = [run for run in _data(name)["runs"] if any(r["ratio"] is not None for r in run["rows"])]
  cpus = sorted({" with ".join(run["machine"].split("; ")[0].split(" (")) for run in runs})
  return [r for run in runs for r in run["rows"] if r["ratio"] is not None], cpus


def _span(rows: list[dict], dtype: str, key: str) -> str:
  values = [r[key] for r in rows if r["dtype"] == dtype]
  return f"{min(values):.2f}-{max(values):.2f}x"


def _other_cpu(name: str, section: str) -> str:
  """One sentence of the summary for a CPU with its own table."""
  rows, cpus = _compared_rows(name)
  dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)]
  spans = "; ".join(f"{d} {_span(rows, d, 'ratio')} PyTorch's "
                    f"{'autocast ' if d == 'bfloat16' else ''}step with "
                    f"{_span(rows, d, 'rss_ratio')} its memory" for d in dtypes)
  return f" On an {', '.join(cpus)}: {spans} (docs/performance.md, \"{section}\")."


def vs_torch_summary() -> str:
  """README and docs/performance.md: every family's ratios against PyTorch, per CPU."""
  rows, cpus = _compared_rows("vs_torch_families")
  families = sorted({r["model"].removeprefix("MS-") for r in rows})
  return (f"{len(families)} families, plain and MS ({', '.join(cpus)}): float32 steps take "
          f"{_span(rows, 'float32', 'ratio')} PyTorch's fp32 step time with "
          f"{_span(rows, 'float32', 'rss_ratio')} its peak resident memory; bfloat16 steps "
          f"{_span(rows, 'bfloat16', 'ratio')} PyTorch's autocast step with "
          f"{_span(rows, 'bfloat16', 'rss_ratio')} its memory (medians of interleaved rounds; "
          "table, batches and commands: docs/performance.md, \"Every family\")."
          + _other_cpu("vs_torch_amx", "On an Intel Xeon with AMX")
          + _other_cpu("vs_torch_avx2", "On a CPU without bfloat16 instructions") + "\n")


def vs_torch_families_table(name: str = "vs_torch_families") -> str:
  """Every family's training step against PyTorch's, one row per model and run: step time and
  each process's peak resident memory, measured side by side (``vs_torch.py``); one data file
  per CPU."""
  d = _data(name)
  order = [PRETTY[f] for f in FAMILY_ORDER]
  measured, sources = [], []
  for i, run in enumerate(d["runs"], 1):
    sources.append(f"{i}. {_source(run)}")
    measured += [(i, r) for r in run["rows"]]
  # Family order; float32 before bfloat16, beside PyTorch before ours alone, plain before MS.
  def key(item):
    r = item[1]
    return (order.index(r["model"].removeprefix("MS-")), r["dtype"] != "float32",
            r["torch_s"] is None, r["model"].startswith("MS-"))

  rows = []
  for i, r in sorted(measured, key=key):
    torch = r["torch_s"] is not None  # None: ours alone (PyTorch's does not fit beside it)
    rows.append([r["model"], str(r["batch"]), r["dtype"], f"`{r.get('remat', 'none')}`",
                 f"{r['torch_s']:.2f} s" if torch else "-", f"{r['ours_s']:.2f} s",
                 f"**{r['ratio']:.2f}** ({r['lo']:.2f}-{r['hi']:.2f})" if torch else "-",
                 f"{r['torch_rss_gb']:.2f} GB" if torch else "-", f"{r['ours_rss_gb']:.2f} GB",
                 f"**{r['rss_ratio']:.2f}**" if torch else "-", str(i)])
  return _table(["model", "batch", "dtype", "our remat", "PyTorch step", "ours step",
                 "/ PyTorch (range)", "PyTorch peak RSS", "ours peak RSS", "/ PyTorch", "run"],
                rows) + "\n" + "".join(sources)


def benchmark_table() -> str:
  d = _data("benchmark_paper")
  rows = [[r["model"], f"{r['step_s']} s", f"{r['gflops']}", _opt(r["ms_over_plain"]).replace(
      "-", "")] for r in d["rows"]]
  return _table(["model (paper shape)", "step", "GFLOP/s", "MS / plain step"], rows) + "\n" + \
      _source(d)


def conv_bench_table() -> str:
  d = _data("conv_bench_scan")
  def cell(v, bold):
    text = f"{v[0]} ({v[1]:.2f})"
    return f"**{text}**" if bold else text
  rows = [[str(r["size"]), f"**{r['impl']}**" if r["impl"] == "onednn" else r["impl"],
           *(cell(r[k], k == "all" and r["impl"] == "onednn") for k in ("fwd", "dx", "dk", "all"))]
          for r in d["rows"]]
  return _table(["size", "impl", "fwd", "dX", "dK", "fwd + dX + dK"], rows) + "\n" + _source(d)


def conv_bench_bf16() -> str:
  """The bfloat16 convolution trio against a bfloat16 matmul, one line per machine."""
  d = _data("conv_bench_bf16")
  lines = [f"* {run['machine'].split(' (')[0]}: oneDNN fwd + dX + dK **{run['onednn']['trio']:.2f}x** "
           f"(fwd {run['onednn']['fwd']:.2f}, dX {run['onednn']['dX']:.2f}, dK "
           f"{run['onednn']['dK']:.2f}), `matmul` {run['matmul_trio']:.2f}x "
           f"(`{run['command']}`; {run['note'] + '; ' if run['note'] else ''}{run['machine']}; "
           f"commit {run['commit']}, {run['date']}).\n" for run in d["runs"]]
  return f"{d['what']}:\n\n" + "".join(lines)


def memory_table() -> str:
  d = _data("memory_vs_resolution")
  rows = []
  for cell_name, v in d["remat_step_gb"].items():
    rows.append([cell_name, *(f"{v[s][0]:.3f} / {v[s][1]:.3f}" for s in ("64", "256", "1024")),
                 f"{v['1024'][1] / v['1024'][0]:.3f}",
                 f"{v['max_res'][0]} / **{v['max_res'][1]}**", str(v["source"])])
  table = _table(["cell", "64", "256", "1024", "MS / plain @1024", "largest frame in 40 GB",
                  "run"], rows)
  no_remat = ", ".join(f"{k} {a:.3f} -> {b:.3f} ({b / a:.3f}x)"
                       for k, (a, b) in d["no_remat_64_gb"].items())
  sources = "".join(f"{i}. {_source({**run, 'note': ''})}"
                    for i, run in enumerate(d["sources"], 1))
  bf16 = d["bf16"]
  return (f"`remat='step'`, GB plain / MS:\n\n{table}\nWithout remat at 64x64, plain -> MS GB: "
          f"{no_remat}.\n\n{d['note']}:\n\n{sources}\nbfloat16, `remat='step'`, `onednn`: "
          f"MS-ConvLSTM {bf16['ms_convlstm_256_gb']:.3f} GB at 256, largest frame "
          f"**{bf16['max_res']}** in 40 GB (`{bf16['command']}`; {bf16['machine']}; commit "
          f"{bf16['commit']}, {bf16['date']}).\n")


def memory_summary() -> str:
  """README: the memory figures in one sentence."""
  d = _data("memory_vs_resolution")
  a, b = d["no_remat_64_gb"]["convlstm"]
  conv = d["remat_step_gb"]["convlstm"]["max_res"]
  return (f"MS-ConvLSTM needs {b / a:.2f}x the training memory of ConvLSTM at 64x64 (no remat); "
          f"with `remat='step'` it trains {conv[1]}x{conv[1]} frames in 40 GB per device in "
          f"float32, {d['bf16']['max_res']}x{d['bf16']['max_res']} in bfloat16 (plain ConvLSTM "
          f"{conv[0]}; the paper's Fig. 1: ConvLSTM 220x220; compile-only).\n")


def quality_bf16() -> str:
  """bfloat16 against float32 future MSE, per seed, in the reproduction recipe."""
  d = _data("quality_bf16")
  rows = [[r["model"], r["dtype"], " / ".join(f"{v:.2f}" for v in r["mse_future"]),
           _pm((statistics.fmean(r["mse_future"]), statistics.stdev(r["mse_future"])))]
          for r in d["rows"]]
  return _table(["model", "dtype", "future MSE per seed", "mean ± std"], rows) + "\n" + _source(d)


def warp_memory_table() -> str:
  """docs/performance.md: the warping families' compiled memory before and after the lean warp."""
  d = _data("warp_memory")
  keys = ("fp32_none", "fp32_step", "bf16_none", "bf16_step")
  rows = [[r["model"], *(f"{r[k][0]:.2f} -> {r[k][1]:.2f}" for k in keys)] for r in d["rows"]]
  return _table(["model", "fp32, no remat", "fp32, `remat='step'`", "bf16, no remat",
                 "bf16, `remat='step'`"], rows) + "\n" + _source(d)


def bf16_inputs_memory_table() -> str:
  """docs/performance.md: bfloat16 compiled temporaries before and after rounded, shared inputs."""
  d = _data("bf16_inputs_memory")
  rows = [[r["model"], str(r["batch"]), f"{r['before_gb']:.2f} -> {r['after_gb']:.2f}",
           f"{r['after_gb'] / r['before_gb']:.2f}"] for r in d["rows"]]
  return _table(["model", "batch", "GB, before -> after", "after / before"], rows) + "\n" + _source(d)


def mixed_precision_memory() -> str:
  """docs/performance.md: MS-ConvLSTM with remat='step', float32 xla against bfloat16 onednn."""
  d = _data("memory_vs_resolution")
  f32 = d["remat_step_gb"]["convlstm"]
  rows = [["`xla`, float32", f"{f32['256'][1]:.3f} GB", str(f32["max_res"][1])],
          ["`onednn`, bfloat16", f"{d['bf16']['ms_convlstm_256_gb']:.3f} GB",
           f"**{d['bf16']['max_res']}**"]]
  return _table(["convolutions, dtype", "MS-ConvLSTM at 256", "largest frame in 40 GB, MS"], rows)


# --------------------------------------------------------------------------- the blocks

REPRODUCE = MEASURED / "reproduce_cpu"
BLOCKS: dict[str, Callable[[], str]] = {
    "reproduce-table": lambda: reproduce_table(REPRODUCE),
    "reproduce-headline": lambda: reproduce_headline(REPRODUCE),
    "demo-table": demo_table,
    "demo-output": demo_output,
    "parity-table": parity_table,
    "parity-later-table": lambda: parity_table("parity_later"),
    "vs-torch-bf16": vs_torch_bf16_table,
    "vs-torch-summary": vs_torch_summary,
    "vs-torch-families": vs_torch_families_table,
    "vs-torch-amx": lambda: vs_torch_families_table("vs_torch_amx"),
    "vs-torch-avx2": lambda: vs_torch_families_table("vs_torch_avx2"),
    "benchmark-table": benchmark_table,
    "conv-bench-table": conv_bench_table,
    "conv-bench-bf16": conv_bench_bf16,
    "memory-table": memory_table,
    "memory-summary": memory_summary,
    "mixed-precision-memory": mixed_precision_memory,
    "quality-bf16": quality_bf16,
    "warp-memory": warp_memory_table,
    "bf16-inputs-memory": bf16_inputs_memory_table,
}
PLOTS = {REPO / "docs/figures/ms_vs_plain.png": lambda p: reproduce_plot(REPRODUCE, p)}


def render_page(text: str) -> str:
  """The page with every marked block replaced by its rendering."""
  def replace(match):
    name = match.group("name")
    if name not in BLOCKS:
      raise KeyError(f"unknown render block {name!r}; known: {', '.join(BLOCKS)}")
    indent = match.group("indent")
    body = "".join(indent + line if line.strip() else line
                   for line in BLOCKS[name]().splitlines(keepends=True))
    return f"{indent}<!-- render: {name} -->\n{body}{indent}<!-- /render -->"
  return BLOCK.sub(replace, text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if a page differs from its data")
  args = parser.parse_args(argv)
  stale = []
  for page in PAGES:
    path = REPO / page
    text = path.read_text()
    new = render_page(text)
    if new != text:
      stale.append(page)
      if not args.check:
        path.write_text(new)
  if not args.check:
    for path, draw in PLOTS.items():
      draw(path)
  for page in stale:
    print(f"{page}: {'differs from' if args.check else 'rendered from'} experiments/measured/")
  return 1 if (args.check and stale) else 0


if __name__ == "__main__":
  sys.exit(main())
