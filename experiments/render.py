"""Renders the docs' measured figures from the committed data in ``experiments/measured/``.

A figure lives in one place: the data file an experiment wrote (with its command,
machine, commit and date). The Markdown pages hold rendered copies between markers::

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
BLOCK = re.compile(r"(<!-- render: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /render -->)",
                   re.DOTALL)
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


def _stats(values: list[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(receipts: list[dict]) -> dict:
  """Per model: seeds and metrics; per family: MS/plain; the baselines' mean over runs.

  Returns:
    ``{"models": {name: {...}}, "families": [{...}], "baselines": {name: {...}}}``
    where a model's entry holds ``seeds``, per-seed future MSE and the mean and
    standard deviation of each metric, and a family's entry the MS/plain ratio of
    the means, the per-seed ratios (paired by seed) and whether MS is lower in
    every seed the two share.
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
    models[name] = entry
  families = []
  for family in sorted({m.removeprefix("ms_") for m in models if "_noskip" not in m},
                       key=lambda f: (FAMILY_ORDER + (f,)).index(f)):
    plain, ms = by_model.get(family), by_model.get(f"ms_{family}")
    if not plain or not ms:
      families.append({"family": family, "complete": False})
      continue
    shared = sorted(set(plain) & set(ms))
    per_seed = {s: ms[s]["future"]["mse"] / plain[s]["future"]["mse"] for s in shared}
    families.append({
        "family": family, "complete": len(shared) >= 3, "seeds": shared,
        "ratio": models[f"ms_{family}"]["mse_future"][0] / models[family]["mse_future"][0],
        "per_seed": per_seed, "ms_lower_every_seed": all(v < 1 for v in per_seed.values()),
    })
  return {"models": models, "families": families, "baselines": baselines}


def _pm(stat: tuple[float, float], digits: int = 2) -> str:
  return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


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
                 f"{e['mse_future'][0] / blank:.2f} | {e['wall_s'] / 60:.0f} |")
  lines += ["", "| family | MS / plain (future MSE) | per seed | MS lower in every seed |",
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
    seeds = "every seed" if f["ms_lower_every_seed"] else "not every seed"
    if not f["complete"]:
      seeds += f", {len(f['seeds'])} of 3 seeds so far"
    parts.append(f"MS-{name} {f['ratio']:.2f}x {name} ({seeds})")
  return "; ".join(parts) + ".\n"


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


# --------------------------------------------------------------------------- the blocks

REPRODUCE = MEASURED / "reproduce_cpu"
BLOCKS: dict[str, Callable[[], str]] = {
    "reproduce-table": lambda: reproduce_table(REPRODUCE),
    "reproduce-headline": lambda: reproduce_headline(REPRODUCE),
}
PLOTS = {REPO / "docs/figures/ms_vs_plain.png": lambda p: reproduce_plot(REPRODUCE, p)}


def render_page(text: str) -> str:
  """The page with every marked block replaced by its rendering."""
  def replace(match):
    name = match.group("name")
    if name not in BLOCKS:
      raise KeyError(f"unknown render block {name!r}; known: {', '.join(BLOCKS)}")
    return match.group(1) + BLOCKS[name]() + match.group(4)
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
