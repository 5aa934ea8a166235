"""Multi-process training: two processes on 127.0.0.1 train as one process does."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {x["step"]: x["train/loss"] for x in lines if "train/loss" in x}


def test_two_processes_train_like_one(trained, tmp_path):
  """Two 1-device processes (coordinator and gloo collectives on 127.0.0.1) train 4 steps of
  configs/test.py; each holds half of every global batch. The logged losses equal those of
  the one-process run on the same global batches, scheduled sampling included (eta < 1 from
  step 2: each example must get the same mask whichever process holds it)."""
  port = _free_port()
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
  args = ["--config=configs/test.py", f"--workdir={workdir}",
          # Faster, and no change to training: no periodic validation, a short final one.
          "--config.train.eval_every_steps=100", "--config.eval.max_examples=4",
          "--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2"]
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as f:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "msrnn_jax.main", *args, f"--config.distributed.process_id={i}"],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
    for p in procs:
      p.wait(timeout=400)
  finally:
    for p in procs:  # on a failure or timeout, no process is left waiting for the other
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log.read_text()[-4000:]
  for i, log in enumerate(logs):
    assert f"JAX process {i}/2" in log.read_text()
  got, want = _losses(workdir), _losses(trained)
  assert sorted(got) == sorted(want) == [2, 4]
  np.testing.assert_allclose([got[s] for s in (2, 4)], [want[s] for s in (2, 4)], rtol=1e-5)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert (workdir / "test.json").is_file()
