"""experiments/reproduce.py on test-sized settings: receipts, reruns skip finished runs,
and experiments/render.py's tables and plot from those receipts."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import test as test_config
from msrnn_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def reproduce():
  return _load("reproduce")


@pytest.fixture(scope="module")
def render():
  return _load("render")


def test_receipts_skip_and_render(reproduce, render, tmp_path, monkeypatch):
  """Six short runs check the receipts' plumbing, not numbers (fast compiles)."""
  base = test_config.get_config()
  base.train.num_steps = base.train.checkpoint_every_steps = 2
  out, runs = tmp_path / "out", tmp_path / "runs"
  models = ["convlstm", "ms_convlstm_noskip", "ms_convlstm"]
  receipts = [reproduce.run_one(base, m, s, str(out), str(runs)) for s in (0, 1) for m in models]
  for r in receipts:
    on_disk = json.loads((out / f"{r['model']}_seed{r['seed']}.json").read_text())
    assert on_disk == json.loads(json.dumps(r, default=str))
    receipt = r["receipt"]
    assert receipt["config"]["model"]["name"] == r["model"].removesuffix("_noskip")
    assert receipt["config"]["seed"] == r["seed"]
    assert len(receipt["commit"]) >= 40 and receipt["machine"]["cpu"]
    assert receipt["wall_s"] > 0 and receipt["segments"][-1]["end"] is not None
    assert set(r["baselines"]) == {"blank", "copy_last"} and r["future"]["mse"] > 0
  # The no-skip variant really ran with skip='none'.
  noskip = json.loads((out / "ms_convlstm_noskip_seed0.json").read_text())
  assert noskip["receipt"]["config"]["model"]["skip"] == "none"

  def fail(*args, **kwargs):
    raise AssertionError("finished runs must be skipped")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  again = [reproduce.run_one(base, m, s, str(out), str(runs)) for s in (0, 1) for m in models]
  assert again == [json.loads(json.dumps(r, default=str)) for r in receipts]

  # The rendered numbers, recomputed here from the receipt files.
  table = render.reproduce_table(out)
  def future(model):
    return np.array([json.loads((out / f"{model}_seed{s}.json").read_text())["future"]["mse"]
                     for s in (0, 1)])
  plain, ms = future("convlstm"), future("ms_convlstm")
  row = next(line for line in table.splitlines() if line.startswith("| ms_convlstm |"))
  assert f"{ms.mean():.2f} ± {ms.std(ddof=1):.2f}" in row
  family = next(line for line in table.splitlines() if line.startswith("| ConvLSTM |"))
  assert f"| {ms.mean() / plain.mean():.2f} |" in family
  assert " / ".join(f"{v:.2f}" for v in ms / plain) in family
  assert ("yes" if (ms < plain).all() else "**no**") in family and "(2 of 3 seeds)" in family
  assert "| MIM | not yet measured | - | - |" in table  # the families still missing say so
  blank = np.mean([json.loads(p.read_text())["baselines"]["blank"]["future"]["mse"]
                   for p in out.glob("*.json")])
  assert "| blank | - |" in table and f"{blank:.2f}" in table
  headline = render.reproduce_headline(out)
  assert f"MS-ConvLSTM {ms.mean() / plain.mean():.2f}x ConvLSTM (2 of 3 seeds so far" in headline
  render.reproduce_plot(out, tmp_path / "plot.png")
  assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"

  # A seed only the MS model has stays out of the family's ratio.
  (out / "convlstm_seed1.json").unlink()
  family = next(line for line in render.reproduce_table(out).splitlines()
                if line.startswith("| ConvLSTM |"))
  assert f"| {ms[0] / plain[0]:.2f} | {ms[0] / plain[0]:.2f} |" in family
  assert "(1 of 3 seeds)" in family


def test_a_claimed_run_is_not_claimed_again_until_released(reproduce, tmp_path):
  with reproduce.claimed(str(tmp_path), "convlstm", 0) as first:
    with reproduce.claimed(str(tmp_path), "convlstm", 0) as second:
      assert first and not second
    with reproduce.claimed(str(tmp_path), "convlstm", 1) as other_seed:
      assert other_seed
  with reproduce.claimed(str(tmp_path), "convlstm", 0) as after:
    assert after


def test_workers_share_the_cores_and_drop_the_flag(reproduce):
  assert reproduce.core_shares([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
  assert reproduce.core_shares([4, 7], 2) == [[4], [7]]
  with pytest.raises(SystemExit, match="between 1 and 2"):
    reproduce.core_shares([0, 1], 3)
  assert reproduce.without_workers_flag(
      ["r.py", "--workers=2", "--seeds=0", "--workers", "3", "--models=a"]) == [
          "r.py", "--seeds=0", "--models=a"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_each_worker_runs_on_its_own_core(reproduce, tmp_path, monkeypatch):
  """The workers are this command again, pinned to one core each, with OMP_NUM_THREADS=1."""
  script = tmp_path / "worker.py"
  script.write_text("import os, sys\n"
                    "with open(os.path.join(sys.argv[1], str(os.getpid())), 'w') as f:\n"
                    "  f.write(f\"{sorted(os.sched_getaffinity(0))} {os.environ['OMP_NUM_THREADS']}"
                    " {sys.argv[2:]}\")\n")
  monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path), "--workers=2", "--seeds=0"])
  cores = sorted(os.sched_getaffinity(0))
  assert reproduce.spawn_workers(2) == 0
  assert sorted(os.sched_getaffinity(0)) == cores  # this process is unpinned again
  seen = sorted(p.read_text() for p in tmp_path.iterdir() if p.name != "worker.py")
  half = (len(cores) + 1) // 2
  assert seen == sorted([f"{cores[:half]} {half} ['--seeds=0']",
                         f"{cores[half:]} {len(cores) - half} ['--seeds=0']"])


def test_a_stopped_run_ends_in_one_line_with_75_and_resumes_from_its_checkpoint(tmp_path):
  """SIGTERM during a run: its checkpoint is saved and the script says so in one line, exit 75
  (the CLI's status for 'rerun to continue'), without a traceback."""
  runs = tmp_path / "runs"
  proc = subprocess.Popen(
      [sys.executable, "experiments/reproduce.py", "--config=configs/test.py", "--models=convlstm",
       "--seeds=0", f"--out={tmp_path / 'out'}", f"--runs={runs}",
       "--config.train.num_steps=100000", "--config.train.checkpoint_every_steps=100000"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), stderr=subprocess.PIPE, text=True)
  metrics = runs / "convlstm_seed0" / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
    assert time.time() < deadline, "training did not start"
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 75, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
  assert len(stopped) == 1 and stopped[0].count("rerun the same command to continue") == 1, err[-3000:]
  assert stopped[0].endswith("(exit status 75)"), stopped
  assert os.listdir(runs / "convlstm_seed0" / "checkpoints")  # the step it stopped at
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # no receipt
