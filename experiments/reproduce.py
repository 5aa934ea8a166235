"""Reproduce the paper's comparisons on equal budgets: MS beats plain, skips matter.

Trains each model of a list on the same data with the same budget (steps,
batch, learning rate) for each seed, evaluates with both protocols, and
writes one JSON per run plus a summary (mean and spread over seeds) as
Markdown, CSV and a bar chart. Rerunning skips finished runs (and resumes
interrupted ones from their checkpoints).

CPU recipe (embedded Moving MNIST, see experiments/README.md):

    python experiments/reproduce.py --out=experiments/results/reproduce_cpu

Paper scale (GPU): ``--config=configs/mmnist.py --config.train.num_steps=-1``. Any
config key is overridden as on the main command line (``--config.<key>=<value>``).

``--summarize_only`` trains nothing and summarises the finished runs (e.g. while
other seeds are still training).
"""

import csv
import json
import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a script, so importing this module (tests) adds no flags."""
  config_flags.DEFINE_config_file("config", "configs/mmnist.py:cpu",
                                  "Base config file[:variant]; override keys with --config.x=v.")
  flags.DEFINE_list("models", ["blank", "copy_last", "convlstm", "ms_convlstm_noskip", "ms_convlstm",
                               "predrnn", "ms_predrnn"],
                    "Models: registry names, '<name>_noskip' (MS without skips), and the "
                    "baselines 'copy_last' and 'blank' (all-zero frames).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (parameter init, data order, sampling).")
  flags.DEFINE_string("out", "experiments/results/reproduce", "Output folder.")
  flags.DEFINE_bool("summarize_only", False,
                    "Train nothing: summarise the finished runs of --models/--seeds in --out.")

METRICS = ("mse", "mae", "ssim", "psnr")
# Trivial predictors every run evaluates too (msrnn_jax.evaluation.metrics.BASELINES).
BASELINES = ("copy_last", "blank")


def run_config(base, model: str, seed: int):
  """The config of one run: the model name (and skip topology) and the seed."""
  config = base.copy_and_resolve_references()
  if model.endswith("_noskip"):
    config.model.name = model[:-len("_noskip")]
    config.model.skip = "none"
  else:
    config.model.name = model
  config.seed = seed
  return config


def run_one(base, model: str, seed: int, out: str) -> dict:
  """Trains and evaluates one (model, seed) unless its result exists."""
  from msrnn_jax.training import train
  path = os.path.join(out, f"{model}_seed{seed}.json")
  if os.path.exists(path):
    logging.info("skipping %s seed %d: %s exists", model, seed, path)
    with open(path) as f:
      return json.load(f)
  result_file = _result_file(base, model, seed, out)
  workdir = os.path.dirname(result_file)
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  if not os.path.exists(result_file):
    train.train_and_evaluate(run_config(base, _source(model, seed, out), seed), workdir)
  with open(result_file) as f:
    result = json.load(f)
  record = {"model": model, "seed": seed, "steps": base.train.num_steps,
            "all": result["all"], "future": result["future"],
            "per_frame": result["per_frame"], "num_examples": result["num_examples"]}
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  return record


def _source(model: str, seed: int, out: str) -> str:
  """The model whose run evaluates ``model``: every run evaluates the baselines on the same
  test data, so a baseline is read from the first finished run of its seed (MS-ConvLSTM's,
  if none has finished yet, which trains it)."""
  if model not in BASELINES:
    return model
  runs = sorted(pathlib.Path(out, "runs").glob(f"*_seed{seed}/*_{model}.json"))
  return runs[0].parent.name[:-len(f"_seed{seed}")] if runs else "ms_convlstm"


def _result_file(base, model: str, seed: int, out: str) -> str:
  """Where training writes the evaluation of a (model, seed) run."""
  workdir = os.path.join(out, "runs", f"{_source(model, seed, out)}_seed{seed}")
  suffix = f"_{model}" if model in BASELINES else ""
  return os.path.join(workdir, f"{base.eval.split}{suffix}.json")


def finished_records(base, models: list[str], seeds: list[int], out: str) -> list[dict]:
  """The records of the (model, seed) runs in ``out`` whose evaluation exists (no training)."""
  records = []
  for seed in seeds:
    for model in models:
      if (os.path.exists(os.path.join(out, f"{model}_seed{seed}.json"))
          or os.path.exists(_result_file(base, model, seed, out))):
        records.append(run_one(base, model, seed, out))
  return records


def summarize(records: list[dict], models: list[str], out: str) -> list[dict]:
  """Mean and standard deviation over seeds; writes summary.md, summary.csv, summary.png.

  Models without a finished run are left out of the summary.
  """
  import numpy as np
  rows = []
  for model in models:
    runs = [r for r in records if r["model"] == model]
    if not runs:
      logging.warning("no finished run of %s; left out of the summary", model)
      continue
    row = {"model": model, "seeds": len(runs)}
    for protocol in ("all", "future"):
      for m in METRICS:
        vals = np.array([r[protocol][m] for r in runs])
        row[f"{m}_{protocol}"] = float(vals.mean())
        row[f"{m}_{protocol}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    rows.append(row)
  # How far below the blank frame (all zeros) each model is: the data set's floor.
  blank = next((r["mse_future"] for r in rows if r["model"] == "blank"), None)
  for r in rows:
    r["mse_future_vs_blank"] = r["mse_future"] / blank if blank else float("nan")
  with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  lines = ["| model | seeds | MSE all | MSE future | MAE future | SSIM future | PSNR future "
           "| MSE future / blank |",
           "|---|---|---|---|---|---|---|---|"]
  def cell(row, key):
    digits = 4 if "ssim" in key else 2
    return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"

  for r in rows:
    cells = " | ".join(cell(r, k) for k in ("mse_all", "mse_future", "mae_future", "ssim_future",
                                            "psnr_future"))
    lines.append(f"| {r['model']} | {r['seeds']} | {cells} | {r['mse_future_vs_blank']:.2f} |")
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _bar_chart(rows, os.path.join(out, "summary.png"))
  print("\n".join(lines))
  return rows


def _bar_chart(rows: list[dict], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(9, 3.5))
  FigureCanvasAgg(fig)
  for i, (metric, label) in enumerate((("mse_future", "MSE (future frames)"),
                                       ("ssim_future", "SSIM (future frames)"))):
    ax = fig.add_subplot(1, 2, i + 1)
    names = [r["model"] for r in rows]
    ax.bar(range(len(rows)), [r[metric] for r in rows],
           yerr=[r[metric + "_std"] for r in rows], capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=8)
    ax.set_title(label)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  base = FLAGS.config
  os.makedirs(FLAGS.out, exist_ok=True)
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.summarize_only:
    records = finished_records(base, FLAGS.models, seeds, FLAGS.out)
  else:
    records = [run_one(base, model, seed, FLAGS.out) for seed in seeds for model in FLAGS.models]
  summarize(records, FLAGS.models, FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
