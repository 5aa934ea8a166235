"""The experiment scripts' --quick modes run end to end and write what they promise."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vs_torch_quick(tmp_path):
  out = tmp_path / "vs_torch.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "experiments/vs_torch.py", "--quick", "--out", str(out)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads(out.read_text())
  assert data["settings"]["quick"] and data["settings"]["rounds"] == 1
  r = data["models"]["convlstm"]
  jax_times = r["times"]["auto"]
  assert len(jax_times) == 1 and jax_times[0] > 0
  # The JAX step ran in a process of its own: its peak RSS is its own, above
  # what importing JAX alone takes and far below this machine's memory.
  assert 0.05 < r["auto"]["max_rss_gb"] < 8
  if data["settings"]["torch"]:  # this interpreter has torch: both sides, side by side
    assert r["times"]["torch"][0] > 0 and r["max_rss_gb"]["torch"] > 0
    assert r["auto"]["ratio_median"] == r["auto"]["ratios"][0]
  else:
    assert "PyTorch not found" in proc.stdout and set(r["times"]) == {"auto"}
  assert "| convlstm | float32 `auto` |" in proc.stdout


def test_vs_torch_bad_model_is_one_line(tmp_path):
  out = tmp_path / "vs_torch.json"
  proc = subprocess.run([sys.executable, "experiments/vs_torch.py", "--quick", "--models", "lstm",
                         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "unknown model(s) lstm" in proc.stderr
  assert not out.exists()
