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


def _quick(script: str, *args: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as run by hand
  proc = subprocess.run([sys.executable, f"experiments/{script}", "--quick", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return proc


def test_conv_bench_quick(tmp_path):
  out = tmp_path / "conv.json"
  _quick("conv_bench.py", "--mode=scan", "--impls=matmul,onednn", f"--out={out}")
  cases = json.loads(out.read_text())["results"]["8"]
  # Every kernel's forward, dX, dK and their sum, each timed once, against the matmul.
  assert cases["matmul"]["ratio_to_matmul"] == 1.0
  for impl in ("matmul", "onednn"):
    for part in ("fwd", "dX", "dK", "trio"):
      assert cases[f"{impl}/{part}"]["calls"] == 1 and cases[f"{impl}/{part}"]["gflops"] > 0


def test_attention_bench_quick(tmp_path):
  out = tmp_path / "attention.json"
  _quick("attention_bench.py", f"--out={out}")
  r = json.loads(out.read_text())["results"]["8"]
  # 8x8, window 5: 64 products per pixel over the frame against 5 x 12 in offset rows.
  assert r["products_per_pixel"] == {"frame": 64, "rows": 60} and r["local_attention_takes"] == "rows"
  assert set(r["cases"]) == {"rows", "frame/8", "frame/16"}
  assert r["cases"]["rows"]["ratio_median"] == 1.0
  assert all(c["step_s"] > 0 and len(c["ratios"]) == 1 for c in r["cases"].values())


def test_benchmark_quick(tmp_path):
  out = tmp_path / "bench.json"
  _quick("benchmark.py", "--no-unrolled", "--no-compile-t40", f"--out={out}")
  models = json.loads(out.read_text())["models"]
  assert set(models) == {"convlstm", "ms_convlstm"}
  for r in models.values():
    assert r["scan"]["step_s"] > 0 and r["params"] > 0
    assert len(r["scan"]["times"]) == len(r["scan"]["cpu_times"]) == 5  # --repeats' default


def test_memory_vs_resolution_quick(tmp_path):
  out = tmp_path / "memory"
  # One remat mode and a short search: the finder itself is tested in test_footprint.py.
  _quick("memory_vs_resolution.py", f"--out={out}", "--no-plot", "--remat=step", "--max-size=32")
  text = (tmp_path / "memory.json").read_text()
  assert '"ms_convlstm' in text and '"convlstm' in text and (tmp_path / "memory.csv").exists()


def test_parity_quick(tmp_path):
  out = tmp_path / "parity.json"
  proc = _quick("parity.py", f"--out={out}")
  data = json.loads(out.read_text())
  rows = {r["model"]: r for r in data["results"]}
  assert set(rows) == {"convlstm", "ms_convlstm"} and data["settings"]["hidden"] == 4

  def convlstm_params(h):
    # The authors' stack: 6 layers of biased 3x3 convolutions of x and of h into
    # the 4 gates, a 1x1 embedding and a 1x1 head; the pyramid adds none.
    return 6 * (2 * 9 * h * 4 * h + 2 * 4 * h) + (h + h) + (h + 1)

  assert convlstm_params(64) == 1_772_737  # the parameter count of the authors' model
  for r in rows.values():
    assert r["params"] == convlstm_params(4) and r["params_6x64"] == convlstm_params(64)
    assert 0 < r["loss"] < float("inf")
  if data["settings"]["torch"]:  # this interpreter has torch: both sides, compared
    assert all(r["pass"] and r["worst_grad_rel_err"] < 1e-4 for r in rows.values())
    assert "2/2 passed" in proc.stdout
  else:
    assert "PyTorch not found" in proc.stdout and "not compared" in proc.stdout
    assert not any("pass" in r for r in rows.values())


def test_profile_step_quick(tmp_path):
  """The trace is read back and joined with the compiled program: the time is
  split into named kinds of operation, convolutions among them."""
  out = tmp_path / "profile.json"
  proc = subprocess.run([sys.executable, "experiments/profile_step.py", "--quick", "--model",
                         "convlstm", "--batch", "1", "--out", str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  data = json.loads(out.read_text())
  kinds = {row["kind"]: row["share"] for row in data["by_kind"]}
  assert abs(sum(kinds.values()) - 1) < 1e-6 and data["total_s"] > 0
  assert "fusion" in kinds and kinds.get("other", 0) < 0.5, kinds
  assert any(row.get("kind") and "Predictor" in row.get("op_name", "") for row in data["slowest"])
  # A kind's wall time is at most its summed durations (overlaps counted once).
  assert all(0 < row["wall_s"] <= row["s"] + 1e-9 for row in data["by_kind"] if row["s"] > 0)


def test_covered_seconds_count_overlapping_intervals_once():
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import profile_step
  assert profile_step.covered_s([]) == 0
  # [0, 4] and [2, 6] overlap in [2, 4]; [10, 11] is apart; [3, 5] lies inside the union.
  assert profile_step.covered_s([(2e6, 6e6), (0, 4e6), (10e6, 11e6), (3e6, 5e6)]) == 7.0


def test_onednn_calls_quick(tmp_path):
  """Our step's oneDNN calls: the warm-up step left out, the rest counted per step.

  In bfloat16 where oneDNN has bfloat16 kernels (the step's dtype reaches the child).
  """
  from msrnn_jax.backend import onednn
  dtype, short = ("bfloat16", "bf16") if onednn.bf16_supported() else ("float32", "f32")
  out = tmp_path / "calls.json"
  proc = _quick("onednn_calls.py", "--model", "convlstm", "--batch", "1", "--rounds", "2",
                f"--dtype={dtype}", f"--out={out}")
  ours = json.loads(out.read_text())["ours"]
  kinds = {key.split(" | ")[0] for key in ours["calls"]}
  assert {"convolution forward", "convolution backward_data",
          "convolution backward_weights"} <= kinds, kinds
  convs = [c["impl"] for key, c in ours["calls"].items() if key.startswith("convolution")]
  assert all(impl.endswith(f" {short}") for impl in convs), convs
  assert sum(c["calls"] for c in ours["calls"].values()) == ours["calls_per_step"]
  assert abs(sum(c["ms"] for c in ours["calls"].values()) - ours["onednn_ms_per_step"]) < 1e-6
  assert len(ours["step_s"]) == 2 and "oneDNN calls per step" in proc.stdout


def test_onednn_calls_reads_both_verbose_formats():
  """oneDNN 3.2's lines (ours) and the later ``v1,primitive`` ones (PyTorch's) parse alike."""
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import onednn_calls
  problem = "mb2_ic192oc192_ih64oh64kh3sh1dh0ph1_iw64ow64kw3sw1dw0pw1"
  log = "\n".join([
      "onednn_verbose,info,prim_template:operation,engine,primitive,implementation,...",
      f"onednn_verbose,exec,cpu,convolution,brgconv:avx2,forward_training,src_f32::blocked:acdb::f0,"
      f"attr-scratchpad:user ,alg:convolution_direct,{problem},30.5",
      "onednn_verbose,create:cache_miss,cpu,reorder,jit:uni,undef,src dst,,,2x64,0.1",
      f"onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:"
      f"abcd::f0,attr-scratchpad:user,alg:convolution_direct,{problem},44.25",
      "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src dst,,,192x192x3x3,0.12",
      "some other output"])
  assert onednn_calls.executions(log) == [
      ("convolution forward", "brgconv:avx2 f32", problem, 30.5),
      ("convolution backward_weights", "jit:avx2 f32", problem, 44.25),
      ("reorder", "jit:uni", "192x192x3x3", 0.12)]


def test_onednn_calls_bad_model_is_one_line():
  proc = subprocess.run([sys.executable, "experiments/onednn_calls.py", "--model", "lstm"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "unknown model 'lstm'" in proc.stderr
  assert "Traceback" not in proc.stderr
