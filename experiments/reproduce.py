"""Reproduce the paper's comparison on equal budgets: each MS model against its plain stack.

Trains each model of a list on the same data with the same budget (steps, batch,
learning rate) for each seed, evaluates it beside the trivial baselines (blank
frame, copy-last) and writes one receipt per run into ``--out``: the metrics of
both protocols, the baselines on the same test data, and what produced them (the
resolved config, the command, the code commit, the machine and its kernel and
dtype, wall time). The receipts are committed data; ``experiments/render.py``
turns them into the tables and the plot of the docs.

CPU recipe (embedded Moving MNIST, experiments/README.md):

    python experiments/reproduce.py --config.model.dtype=float32 \\
        --config.train.learning_rate=1e-3 --config.train.num_steps=1000

Rerunning skips every run with a receipt and resumes an interrupted one from its
checkpoints (kept under ``--runs``), so a long list fills in across sittings.
``--workers=N`` trains N runs at a time, each on its share of the cores; a run is
claimed by a lock in ``--runs`` while it trains, so processes never train the same run.
Any config key is overridden as on the main command line (``--config.<key>=<value>``).
"""

import contextlib
import datetime
import fcntl
import itertools
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
PAPER_FAMILIES = ("convlstm", "trajgru", "predrnn", "predrnn_pp", "mim", "motionrnn",
                  "predrnn_v2")


def define_flags() -> None:
  """Defined only when run as a script, so importing this module (tests) adds no flags."""
  config_flags.DEFINE_config_file("config", str(REPO / "configs/mmnist.py") + ":cpu",
                                  "Base config file[:variant]; override keys with --config.x=v.")
  flags.DEFINE_list("models", [n for f in PAPER_FAMILIES for n in (f, f"ms_{f}")],
                    "Registry names, or '<name>_noskip' (an MS model without its skips).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (parameter init, data order, sampling).")
  flags.DEFINE_string("out", str(REPO / "experiments/measured/reproduce_cpu"),
                      "Receipts folder (committed data).")
  flags.DEFINE_string("runs", str(REPO / "experiments/results/reproduce_cpu"),
                      "Work directories of the runs (checkpoints, logs, pictures; not committed).")
  flags.DEFINE_integer("workers", 1, "Runs trained at a time, each pinned to its share of the "
                       "cores (at the CPU recipe's size one run keeps two cores only partly busy).")


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


def receipt_path(out: str, model: str, seed: int) -> str:
  return os.path.join(out, f"{model}_seed{seed}.json")


def machine(config) -> dict:
  """The CPU, the convolution kernel and the library versions a run uses."""
  from msrnn_jax import backend
  from msrnn_jax.analysis import timing
  return {**timing.machine(), **backend.describe(config.backend.conv_impl, config.backend.warp_impl)}


def commit() -> str:
  """The code's commit, with '+dirty' when tracked files differ from it."""
  def git(*args):
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=False).stdout.strip()
  sha = git("rev-parse", "HEAD") or "unknown"
  return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


@contextlib.contextmanager
def claimed(runs: str, model: str, seed: int):
  """Yields True while this process holds the run's lock, False if another process does.

  The lock (``flock`` on ``<runs>/<model>_seed<seed>.lock``) ends with the process
  that holds it, so a killed worker leaves nothing to clean up.
  """
  os.makedirs(runs, exist_ok=True)
  with open(os.path.join(runs, f"{model}_seed{seed}.lock"), "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True


def core_shares(cores: list[int], workers: int) -> list[list[int]]:
  """``cores`` split into ``workers`` contiguous shares, as equal as they divide."""
  if not 1 <= workers <= len(cores):
    sys.exit(f"reproduce.py: --workers={workers}, but this process may use {len(cores)} "
             f"cores; give --workers between 1 and {len(cores)}.")
  size, extra = divmod(len(cores), workers)
  starts = [i * size + min(i, extra) for i in range(workers + 1)]
  return [cores[a:b] for a, b in itertools.pairwise(starts)]


def without_workers_flag(argv: list[str]) -> list[str]:
  """``argv`` without ``--workers=N`` / ``--workers N`` (a worker trains one run at a time)."""
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg == "--workers":
      skip = True
    elif not arg.startswith("--workers="):
      kept.append(arg)
  return kept


def spawn_workers(workers: int) -> int:
  """Runs this command as ``workers`` processes, each pinned to its share of the cores.

  Returns the first non-zero exit status of a worker, else 0. Each worker's OpenMP
  teams and XLA's thread pool are as wide as its share (both size themselves from the
  process's CPU affinity; OMP_NUM_THREADS says it as well).
  """
  if not hasattr(os, "sched_setaffinity"):
    sys.exit("reproduce.py: --workers needs Linux's CPU affinity (each worker is pinned to "
             "its cores); run with --workers=1 here.")
  procs = []
  def forward(signum, frame):
    del frame
    for p in procs:
      p.send_signal(signum)
  # Workers are detached from this process's terminal (start_new_session), so a stop request
  # reaches them one way, whether typed at a terminal or sent to this process alone (a
  # scheduler's SIGTERM): passed on from here.
  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  cores = sorted(os.sched_getaffinity(0))
  try:
    for share in core_shares(cores, workers):
      env = {**os.environ, "OMP_NUM_THREADS": str(len(share))}
      # A child inherits the affinity of the thread that starts it (a preexec_fn would
      # make Python fork, which JAX's threads, where loaded, warn against).
      os.sched_setaffinity(0, share)
      try:
        procs.append(subprocess.Popen([sys.executable, *without_workers_flag(sys.argv)],
                                      env=env, start_new_session=True))
      finally:
        os.sched_setaffinity(0, cores)
    codes = [p.wait() for p in procs]
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return next((c if c > 0 else 128 - c for c in codes if c), 0)


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_one(base, model: str, seed: int, out: str, runs: str) -> dict:
  """Trains and evaluates one (model, seed) unless its receipt exists; returns the receipt.

  Each sitting that trains the run adds a segment (start, end, wall seconds, commit,
  machine) to ``<workdir>/segments.json``; a stopped sitting is marked ``interrupted``, and
  a segment without an end was killed (its time is unknown).
  """
  from msrnn_jax.training import train
  path = receipt_path(out, model, seed)
  if os.path.exists(path):
    logging.info("skipping %s seed %d: %s exists", model, seed, path)
    with open(path) as f:
      return json.load(f)
  config = run_config(base, model, seed)
  workdir = os.path.join(runs, f"{model}_seed{seed}")
  result_file = os.path.join(workdir, f"{config.eval.split}.json")
  segments_file = os.path.join(workdir, "segments.json")
  if not os.path.exists(result_file):
    os.makedirs(workdir, exist_ok=True)
    segments = _read(segments_file, [])
    segment = {"start": _now(), "end": None, "commit": commit(), "machine": machine(config)}
    _write(segments_file, segments + [segment])
    started = time.perf_counter()
    try:
      train.train_and_evaluate(config, workdir)
    except BaseException:
      # Stopped (a signal, an error): the sitting's time still counts; rerun to resume.
      segment["interrupted"] = True
      raise
    finally:
      segment.update(end=_now(), wall_s=round(time.perf_counter() - started, 1))
      _write(segments_file, segments + [segment])
  result = _read(result_file, None)
  segments = _read(segments_file, [])
  receipt = {
      "model": model, "seed": seed,
      "all": result["all"], "future": result["future"], "per_frame": result["per_frame"],
      "num_examples": result["num_examples"],
      "baselines": {k: {p: v[p] for p in ("all", "future")}
                    for k, v in result["baselines"].items()},
      "receipt": {
          "command": shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
          "config": config.to_dict(),
          "commit": segments[-1]["commit"] if segments else commit(),
          "machine": segments[-1]["machine"] if segments else machine(config),
          "wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 1),
          "segments": segments,
          "finished": segments[-1]["end"] if segments else _now(),
      },
  }
  os.makedirs(out, exist_ok=True)
  _write(path, receipt)
  return receipt


def _read(path: str, default):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write(path: str, value) -> None:
  """Writes JSON atomically (a half-written receipt never exists)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, path)


def main(argv):
  del argv
  if FLAGS.workers != 1:
    sys.exit(spawn_workers(FLAGS.workers))
  from msrnn_jax import backend, commands
  from msrnn_jax.training import run
  backend.prepare_host(FLAGS.config.get("backend", {}).get("keep_freed_memory", True),
                       restart_program=True)
  try:
    for seed in [int(s) for s in FLAGS.seeds]:
      for model in FLAGS.models:
        with claimed(FLAGS.runs, model, seed) as mine:
          if mine:
            run_one(FLAGS.config, model, seed, FLAGS.out, FLAGS.runs)
          else:
            logging.info("skipping %s seed %d: another process is training it", model, seed)
  except run.Preempted as e:  # SIGTERM or SIGINT: the run's checkpoint is saved
    sys.exit(commands.report("stopped", e, commands.EXIT_PREEMPTED))  # as msrnn_jax.main


if __name__ == "__main__":
  define_flags()
  app.run(main)
