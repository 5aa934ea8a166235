"""Faults and bad inputs: each ends in one ``error:`` line, exit status 2, and an unchanged workdir.

The table runs through the command line (``msrnn_jax.main``'s ``app.run`` with each
argv) in one helper process that imports everything once and forks a fresh child per
case, so 30-odd cases cost about one start-up. Run as a script, this module is that
helper: it reads the cases (JSON) on stdin and prints the results.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
  """A command line (``{d}``: the case's folder) and the error it must print.

  Attributes:
    name: test id.
    args: arguments after ``--config=configs/test.py``.
    error: regex the ``error:`` line must match (``{d}``, ``{pid}`` substituted).
    setup: what the folder holds first: ``copy`` (a trained workdir ``w``, a context
      ``ctx.npy`` and a file ``file``), ``damaged`` (a copy whose checkpoints are all
      damaged), ``empty`` (an empty workdir ``w``), ``configs`` (config files that fail),
      ``dangling`` (a symbolic link ``link`` to nothing) or ``none``.
    alone: the error line is all of stderr (it comes before JAX starts).
    lock_may_change: the run got as far as locking the workdir (the lock file then
      holds its pid; everything else must be unchanged).
  """

  name: str
  args: tuple[str, ...]
  error: str
  setup: str = "none"
  alone: bool = True
  lock_may_change: bool = False


NEW = "--workdir={d}/new"  # must not be created
W = "--workdir={d}/w"
PREDICT = ("--mode=predict", "--input={d}/ctx.npy", "--output={d}/pred.npy")

CASES = (
    # Flags and config values: reported before JAX starts.
    Case("unknown_key", (NEW, "--config.train.num_step=5"),
         r"--config.train.num_step: the config has no key 'num_step'. Did you mean \"num_steps\""),
    Case("missing_config_file", (NEW, "--config=configs/missing.py"),
         r"cannot load --config=configs/missing.py: \[Errno 2\] No such file"),
    Case("unknown_config_variant", (NEW, "--config=configs/mmnist.py:gpu"),
         r"unknown variant 'gpu' of configs/mmnist.py"),
    Case("value_not_a_number", (NEW, "--config.train.num_steps=ten"),
         r"--config.train.num_steps=ten: invalid literal for int"),
    Case("no_workdir", (), r"--workdir must have a value"),
    Case("positional_argument", (NEW, "train"), r"unexpected arguments \['train'\]"),
    Case("distributed_as_bool", (NEW, "--config.distributed=True"),
         r"config.distributed is a group; use --config.distributed.enabled=True"),
    Case("model_as_a_value", (NEW, "--config.model=ms_predrnn"),
         r"--config.model=ms_predrnn: config.model is a group of settings, not a value; set one "
         r"of its keys, e.g. --config.model.name=ms_predrnn\.$"),
    # A config file whose own code fails: one line, no traceback.
    Case("config_syntax_error", (NEW, "--config={d}/syntax.py"),
         r"cannot load --config={d}/syntax.py: SyntaxError: .*\(syntax.py, line 1\)",
         setup="configs"),
    Case("config_raises", (NEW, "--config={d}/raises.py"),
         r"cannot load --config={d}/raises.py: RuntimeError: no data here$", setup="configs"),
    Case("config_returns_no_config", (NEW, "--config={d}/returns.py"),
         r"--config={d}/returns.py: get_config\(\) returned an object of type dict, not an "
         r"ml_collections.ConfigDict", setup="configs"),
    Case("keep_checkpoints_0", (NEW, "--config.train.keep_checkpoints=0"),
         r"--config.train.keep_checkpoints=0: must be >= 1 \(0 would delete every checkpoint\)"),
    Case("checkpoint_every_0", (NEW, "--config.train.checkpoint_every_steps=0"),
         r"--config.train.checkpoint_every_steps=0: must be >= 1"),
    Case("log_every_0", (NEW, "--config.train.log_every_steps=0"),
         r"--config.train.log_every_steps=0: must be >= 1"),
    Case("num_steps_0", (NEW, "--config.train.num_steps=0"),
         r"--config.train.num_steps=0: use a number of steps >= 1, or -1 to train "
         r"train.epochs=20 epochs"),
    Case("unknown_conv_impl", (NEW, "--config.backend.conv_impl=cudnn"),
         r"--config.backend.conv_impl='cudnn': use one of \('auto', 'xla'"),
    Case("num_visualize_0", (NEW, "--config.eval.num_visualize=0"),
         r"--config.eval.num_visualize=0: must be >= 1"),
    Case("image_size_off_pyramid", (NEW, "--config.data.image_size=17"),
         r"--config.data.image_size=17: ms_convlstm .* needs a multiple of 2"),
    Case("process_id_out_of_range",
         (NEW, "--config.distributed.enabled=True", "--config.distributed.num_processes=2",
          "--config.distributed.process_id=2"),
         r"--config.distributed.process_id=2: must lie in \[0, num_processes=2\)"),
    # Found once JAX starts, still before the workdir is created.
    Case("distributed_without_launcher", (NEW, "--config.distributed.enabled=True"),
         r"jax.distributed.initialize\(\) failed: coordinator_address should be defined\. "
         r"Launch under SLURM", alone=False),
    # Evaluation and prediction start jax.distributed too (before any other JAX call).
    Case("eval_distributed_without_launcher",
         (W, "--mode=eval", "--config.distributed.enabled=True"),
         r"jax.distributed.initialize\(\) failed: coordinator_address", setup="copy", alone=False),
    Case("predict_distributed_without_launcher",
         (W, *PREDICT, "--config.distributed.enabled=True"),
         r"jax.distributed.initialize\(\) failed: coordinator_address", setup="copy", alone=False),
    Case("batch_not_divisible", (NEW, "--config.train.batch_size=3"),
         r"train.batch_size=3 is not divisible by the 2 devices", alone=False),
    # The workdir.
    Case("workdir_is_a_file", ("--workdir={d}/file",),
         r"workdir {d}/file is a file, not a directory", setup="copy"),
    Case("workdir_not_writable", ("--workdir=/proc/self/msrnn_run",),
         r"cannot create workdir /proc/self/msrnn_run: /proc/self is not writable"),
    Case("workdir_parent_missing", ("--workdir={d}/missing/w",),
         r"the parent of workdir {d}/missing/w does not exist"),
    Case("workdir_dangling_symlink", ("--workdir={d}/link",),
         r"workdir {d}/link is a symbolic link to {d}/gone, which does not exist; create that "
         r"directory or choose another --workdir\.$", setup="dangling"),
    Case("workdir_in_use", (W,),
         r"workdir {d}/w is in use by another run \(pid {pid}\); wait for it to end", setup="copy"),
    # Checkpoints of other settings: the keys that differ and both ways out.
    Case("resume_other_hidden_size", (W, "--config.model.hidden=8"),
         r"workdir {d}/w holds checkpoints \(newest step 4\) of other settings: model.hidden=4 "
         r"there, 8 now\. Use another --workdir for the new settings, or rerun with the old "
         r"ones: --config.model.hidden=4$", setup="copy"),
    Case("resume_other_model_and_image_size",
         (W, "--config.model.name=convlstm", "--config.data.image_size=32"),
         r"model.name=ms_convlstm there, convlstm now; data.image_size=16 there, 32 now\. .*"
         r"--config.model.name=ms_convlstm --config.data.image_size=16$", setup="copy"),
    Case("resume_other_batch_size", (W, "--config.train.batch_size=8"),
         r"train.batch_size=4 there, 8 now", setup="copy"),
    Case("eval_other_layers", (W, "--mode=eval", "--config.model.num_layers=2"),
         r"model.num_layers=3 there, 2 now", setup="copy"),
    Case("predict_other_hidden_size", (W, *PREDICT, "--config.model.hidden=8"),
         r"model.hidden=4 there, 8 now", setup="copy"),
    # Damaged checkpoints: none intact (a truncated one, one without its metadata).
    Case("no_intact_checkpoint", (W,),
         r"no intact checkpoint in {d}/w/checkpoints \(step 4: .+; step 2: .+meta.+\)\. Remove "
         r"the damaged ones to start from step 0 \(rm -r {d}/w/checkpoints/4 "
         r"{d}/w/checkpoints/2\), or choose another --workdir\.$",
         setup="damaged", alone=False, lock_may_change=True),
    Case("eval_without_checkpoint", (W, "--mode=eval"),
         r"no checkpoint in {d}/w/checkpoints; train first", setup="empty"),
    Case("eval_missing_workdir", (NEW, "--mode=eval"),
         r"workdir {d}/new does not exist; train first"),
    # Prediction arguments.
    Case("horizon_0", (W, *PREDICT, "--horizon=0"),
         r"--horizon=0: the number of frames to predict must be >= 1", setup="copy"),
    Case("horizon_negative", (W, *PREDICT, "--horizon=-3"),
         r"--horizon=-3: the number of frames to predict must be >= 1", setup="copy"),
    Case("output_not_npy", (W, "--mode=predict", "--input={d}/ctx.npy", "--output={d}/pred.out"),
         r"--output={d}/pred.out must end in .npy", setup="copy"),
    Case("input_missing", (W, "--mode=predict", "--input={d}/none.npy", "--output={d}/p.npy"),
         r"context file {d}/none.npy does not exist", setup="copy"),
    Case("input_one_frame_image", (W, "--mode=predict", "--input={d}/image.npy",
                                   "--output={d}/p.npy"),
         r"has shape \(16, 16\); expected \(T, H, W\), \(T, H, W, C\)", setup="copy"),
    Case("predict_without_input", (W, "--mode=predict", "--output={d}/p.npy"),
         r"--mode=predict needs --input=<context.npy> and --output=<pred.npy>", setup="copy"),
    # Prediction inputs: never overwritten, never guessed, never unpickled.
    Case("output_is_input", (W, "--mode=predict", "--input={d}/ctx.npy", "--output={d}/ctx.npy"),
         r"--output={d}/ctx.npy would overwrite the input {d}/ctx.npy", setup="copy"),
    Case("input_two_channels_for_one", (W, "--mode=predict", "--input={d}/two.npy",
                                        "--output={d}/p.npy"),
         r"has shape \(2, 16, 16, 2\): read as one sequence \(T, H, W, C\) it has 2 channels; "
         r"the model expects 1. Save one sequence as \(T, H, W, 1\) or a batch as \(N, T, H, W\)",
         setup="copy"),
    Case("input_npz_named_npy", (W, "--mode=predict", "--input={d}/zip.npy", "--output={d}/p.npy"),
         r"zip.npy is a .npz archive named .npy; rename it to .npz", setup="copy"),
    Case("input_text_named_npy", (W, "--mode=predict", "--input={d}/text.npy",
                                  "--output={d}/p.npy"),
         r"text.npy is not a NumPy .npy file \(it starts with b'0 1 2\\n'\); save the array with "
         r"np.save\.$", setup="copy"),
)


def _snapshot(root: pathlib.Path, lock_may_change: bool) -> dict[str, str]:
  """Every path under ``root`` with its content hash ('dir' for folders)."""
  out = {}
  for path in sorted(root.rglob("*")):
    rel = str(path.relative_to(root))
    if path.is_symlink():
      out[rel] = f"link to {os.readlink(path)}"
    elif path.is_dir():
      out[rel] = "dir"
    elif lock_may_change and path.name == ".lock":
      out[rel] = "lock"
    else:
      out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def _setup(case: Case, d: pathlib.Path, trained: pathlib.Path) -> None:
  d.mkdir()
  if case.setup in ("copy", "damaged"):
    shutil.copytree(trained, d / "w")
    np.save(d / "ctx.npy", np.zeros((2, 16, 16), np.uint8))
    np.save(d / "image.npy", np.zeros((16, 16), np.uint8))
    (d / "file").write_text("not a directory\n")
    np.save(d / "two.npy", np.zeros((2, 16, 16, 2), np.uint8))
    with open(d / "zip.npy", "wb") as f:  # np.savez to a file object keeps the name
      np.savez(f, a=np.zeros(3))
    (d / "text.npy").write_text("0 1 2\n")
  if case.setup == "damaged":  # step 4 truncated, step 2 without its metadata
    _damage_step(d / "w" / "checkpoints", truncate=4, drop_meta=2)
  if case.setup == "empty":
    (d / "w").mkdir()
  if case.setup == "configs":
    (d / "syntax.py").write_text("def get_config(:\n  pass\n")
    (d / "raises.py").write_text("def get_config():\n  raise RuntimeError('no data here')\n")
    (d / "returns.py").write_text("def get_config():\n  return {'seed': 1}\n")
  if case.setup == "dangling":
    os.symlink(d / "gone", d / "link")


@pytest.fixture(scope="module")
def cli_results(trained, tmp_path_factory):
  """Runs every case; returns name -> (result, snapshot before, snapshot after)."""
  from msrnn_jax.training import workdir as workdir_lib
  root = tmp_path_factory.mktemp("cli")
  argvs, before = [], {}
  for case in CASES:
    d = root / case.name
    _setup(case, d, trained)
    before[case.name] = _snapshot(d, case.lock_may_change)
    argvs.append(["msrnn_jax.main", "--config=configs/test.py"]
                 + [a.format(d=d) for a in case.args])
  # The case 'workdir_in_use' meets a run (this process) that holds its workdir.
  with workdir_lib.WorkdirLock(str(root / "workdir_in_use" / "w")):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, __file__], input=json.dumps(argvs), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.splitlines()[-1])
  return {case.name: (result, before[case.name], _snapshot(root / case.name, case.lock_may_change))
          for case, result in zip(CASES, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_error_and_workdir_unchanged(case, cli_results, tmp_path_factory):
  if case.name == "workdir_not_writable" and not os.path.isdir("/proc/self"):
    pytest.skip("needs Linux /proc")
  result, before, after = cli_results[case.name]
  stderr = result["stderr"]
  assert result["rc"] == 2, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, stderr[-2000:]
  if case.alone:
    assert stderr == errors[0] + "\n"
  d = str(tmp_path_factory.getbasetemp())
  pattern = case.error.replace("{d}", re.escape(d) + r"/cli\d*/" + case.name)
  pattern = pattern.replace("{pid}", str(os.getpid()))
  assert re.search(pattern, errors[0]), errors[0]
  assert after == before


def test_shipped_configs_pass_the_checks():
  import importlib

  from msrnn_jax.training import config_checks
  for name in ("default", "mmnist", "kth", "taxibj", "hko7", "sequences", "test"):
    module = importlib.import_module(f"configs.{name}")
    variants = [""] if name in ("default", "test") else ["", "cpu"]
    for variant in variants:
      config = module.get_config(variant) if variant else module.get_config()
      config_checks.check_config(config)


def test_stale_lock_after_kill_9_does_not_block(tmp_path):
  """The kernel drops a flock with its holder, so a killed run never blocks the next."""
  from msrnn_jax.training import workdir as workdir_lib
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from msrnn_jax.training.workdir import WorkdirLock; "
       "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    busy = rf"in use by another run \(pid {holder.pid}\)"
    with pytest.raises(workdir_lib.WorkdirError, match=busy):
      workdir_lib.check_unlocked(str(tmp_path))
    with pytest.raises(workdir_lib.WorkdirError, match="in use by another run"):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()  # SIGKILL: no clean-up runs in the holder
    holder.wait(timeout=30)
  assert (tmp_path / ".lock").read_text().strip() == str(holder.pid)  # stale, not held
  workdir_lib.check_unlocked(str(tmp_path))
  with workdir_lib.WorkdirLock(str(tmp_path)):
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_damaged_checkpoints_fall_back_to_the_newest_intact(tmp_path, caplog):
  """Truncated data, a missing metadata item and NaN values are each skipped with a warning
  naming the step; training moves them aside so that it can save those steps again."""
  import jax.numpy as jnp

  from msrnn_jax.training import checkpointing
  state = {"w": jnp.arange(300.0), "count": jnp.int32(0)}
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=10)
  for step in (2, 4, 6):
    ckpt.save(step, {"w": state["w"] + step, "count": jnp.int32(step)}, {"step": step})
  ckpt.save(8, {"w": state["w"] * jnp.nan, "count": jnp.int32(8)}, {"step": 8})
  ckpt.close()
  _damage_step(tmp_path / "checkpoints", truncate=6, drop_meta=4)
  caplog.set_level("WARNING")
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  restored, meta = ckpt.restore_intact(state)
  assert meta == {"step": 2} and int(restored["count"]) == 2
  np.testing.assert_array_equal(restored["w"], np.arange(300.0) + 2)
  warned = "\n".join(r.getMessage() for r in caplog.records)
  for step, reason in ((8, "non-finite"), (6, ""), (4, "meta")):
    assert re.search(rf"checkpoint {tmp_path}/checkpoints/{step} cannot be used \(.*{reason}",
                     warned), warned
  assert checkpointing.checkpoint_steps(str(tmp_path / "checkpoints")) == [2, 4, 6, 8]
  ckpt.close()
  # Training moves them aside (nothing is deleted) and can save those steps again.
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  ckpt.restore_intact(state, quarantine=str(tmp_path / "damaged"))
  assert sorted(os.listdir(tmp_path / "damaged")) == ["4", "6", "8"]
  ckpt.save(4, restored, {"step": 4})
  ckpt.close()
  assert checkpointing.checkpoint_steps(str(tmp_path / "checkpoints")) == [2, 4]


def _damage_step(checkpoints: pathlib.Path, truncate: int, drop_meta: int) -> None:
  for path in (checkpoints / str(truncate) / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      os.truncate(path, path.stat().st_size // 2)
  shutil.rmtree(checkpoints / str(drop_meta) / "meta")


def test_eval_falls_back_past_a_damaged_checkpoint(trained, tmp_path, caplog):
  from configs import test as test_config
  from msrnn_jax.training import run, sharding
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  _damage_step(workdir / "checkpoints", truncate=4, drop_meta=4)
  before = _snapshot(workdir, lock_may_change=False)
  caplog.set_level("WARNING")
  _, step = run.restore_params(test_config.get_config(), str(workdir), sharding.make_mesh(),
                                 (4, 4, 16, 16, 1))
  assert step == 2
  assert f"checkpoint {workdir}/checkpoints/4 cannot be used" in caplog.text
  assert _snapshot(workdir, lock_may_change=False) == before  # evaluation moves nothing


def test_rewind_jsonl(tmp_path):
  from msrnn_jax.training import summary
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "train/loss": float(s)}) + "\n" for s in (1, 2, 2, 3, 4)]
  path.write_text("".join(lines) + '{"step": 5, "tra')  # cut short by a crash
  assert summary.rewind_jsonl(str(path), 2) == 3
  assert path.read_text() == "".join(lines[:3])
  # With the line count recorded at the save: what came after it at the same step goes.
  assert summary.rewind_jsonl(str(path), 2, lines=2) == 2
  assert path.read_text() == "".join(lines[:2])
  writer = summary.Writer(str(tmp_path), resume_step=1, resume_lines=None)
  assert writer.lines == 1
  writer.write_scalars(2, {"x": 1.0})
  assert writer.lines == 2 and len(path.read_text().splitlines()) == 2
  writer.close()


def _serve() -> None:
  """The helper process: runs each argv of stdin's JSON list like ``python -m msrnn_jax.main``.

  Everything is imported once (no JAX backend yet, one thread), then each case runs in a
  forked child with stdout/stderr captured; prints a JSON list of
  ``{"rc", "stdout", "stderr"}``.
  """
  import traceback

  from absl import app

  import configs.test  # noqa: F401 - imported once for every child
  from msrnn_jax import commands, main  # noqa: F401
  from msrnn_jax.training import evaluate, inference, run, train  # noqa: F401
  results = []
  for argv in json.load(sys.stdin):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      pid = os.fork()
      if pid == 0:
        code = 1
        try:
          os.dup2(out.fileno(), 1)
          os.dup2(err.fileno(), 2)
          sys.argv = argv
          app.run(main.main, argv=argv, flags_parser=main.parse_flags)
          code = 0
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
          traceback.print_exc()
        finally:
          sys.stdout.flush()
          sys.stderr.flush()
          os._exit(code)
      deadline = time.time() + 120
      while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.time() > deadline:
          os.kill(pid, signal.SIGKILL)
          done = os.waitpid(pid, 0)
          break
        time.sleep(0.02)
      rc = os.waitstatus_to_exitcode(done[1])
      out.seek(0)
      err.seek(0)
      results.append({"rc": rc, "stdout": out.read().decode(errors="replace"),
                      "stderr": err.read().decode(errors="replace")})
  print(json.dumps(results))


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  _serve()


# Multi-process failures: every process ends within distributed.timeout_s with one error line.

def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path, name, port, process_ids, extra=((),), num_steps=4, timeout_s=5):
  """Starts one ``msrnn_jax.main`` process per id of ``process_ids`` (a 2-process run on
  127.0.0.1); ``extra``: per-process extra flags. Returns (procs, logs)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  args = ["--config=configs/test.py", f"--workdir={tmp_path / name}",
          # The smallest model: compilation is most of a process's start.
          "--config.model.name=convlstm", "--config.model.num_layers=1",
          f"--config.train.num_steps={num_steps}", "--config.train.eval_every_steps=1000",
          "--config.eval.max_examples=4", "--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.timeout_s={timeout_s}"]
  procs, logs = [], []
  for i, pid in enumerate(process_ids):
    log = tmp_path / f"{name}_{i}.log"
    with open(log, "w") as f:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "msrnn_jax.main", *args, f"--config.distributed.process_id={pid}",
           *extra[min(i, len(extra) - 1)]], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
          stderr=f))
    logs.append(log)
  return procs, logs


def _ended(procs, logs, timeout=90):
  """(return code, error lines) of each process, killing any still running after ``timeout``."""
  out = []
  deadline = time.time() + timeout
  for p, log in zip(procs, logs, strict=True):
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
    text = log.read_text()
    out.append((p.returncode, [x for x in text.splitlines() if x.startswith("error:")], text))
  return out


def test_multi_process_failures_end_every_process_with_one_line(tmp_path):
  """A missing peer, an unreachable coordinator, two processes with process_id=0, configs that
  differ, and a peer killed during training: every surviving process ends within seconds
  (distributed.timeout_s=5 where a peer is missing) with one error line and a documented
  status: 76 (rerun) for a lost or missing peer, 2 for a launch that cannot work as given."""
  runs = {}
  port = _free_port()
  runs["alone"] = _launch(tmp_path, "alone", port, [0])
  runs["unreachable"] = _launch(tmp_path, "unreachable", _free_port(), [1])
  # Two processes that both start: a longer timeout, as one may start seconds after the other
  # on a busy machine.
  runs["mismatch"] = _launch(tmp_path, "mismatch", _free_port(), [0, 1],
                             extra=((), ("--config.train.learning_rate=0.001",)), timeout_s=30)
  runs["killed"] = _launch(tmp_path, "killed", _free_port(), [0, 1], num_steps=400, timeout_s=30)
  # A second process 0 finds the coordinator port taken (here by the test, as a first
  # process 0 holds it while it waits for the others).
  import socket
  holder = socket.socket()
  holder.bind(("127.0.0.1", 0))
  holder.listen()
  runs["duplicate"] = _launch(tmp_path, "duplicate", holder.getsockname()[1], [0])
  # Kill process 1 of 'killed' once training has saved its first checkpoint.
  ckpt = tmp_path / "killed" / "checkpoints" / "2"
  deadline = time.time() + 240
  while not ckpt.is_dir() and time.time() < deadline and runs["killed"][0][1].poll() is None:
    time.sleep(0.2)
  assert ckpt.is_dir()
  runs["killed"][0][1].kill()
  killed_at = time.time()
  results = {name: _ended(*run) for name, run in runs.items()}
  holder.close()

  for name in ("alone", "unreachable"):
    (rc, errors, text), = results[name]
    assert rc == 76 and len(errors) == 1, text[-3000:]
    assert "did not all connect to the coordinator" in errors[0] and "timeout_s=5" in errors[0]
  (rc, errors, text), = results["duplicate"]
  assert rc == 2 and len(errors) == 1, text[-3000:]
  assert "is distributed.process_id=0 given to two processes?" in errors[0]
  for rc, errors, text in results["mismatch"]:
    assert rc == 2 and len(errors) == 1, text[-3000:]
    assert re.search(r"different configs: train.learning_rate=0.0003 on process \d, 0.001 on "
                     r"process \d", errors[0]), errors[0]
  assert not (tmp_path / "mismatch").exists()  # nothing written
  (rc, errors, text), _ = results["killed"]
  assert rc == 76 and len(errors) == 1, text[-3000:]
  assert "another process of this run failed or cannot be reached" in errors[0]
  assert "Traceback" not in text
  assert time.time() - killed_at < 60
  from msrnn_jax import commands
  from msrnn_jax.training import checkpointing, distributed
  assert 2 in checkpointing.checkpoint_steps(str(tmp_path / "killed" / "checkpoints"))
  assert commands.EXIT_PEER_LOST == distributed.EXIT_PEER_LOST == 76


def test_a_stopped_peer_ends_the_other_process_with_one_line(tmp_path):
  """A peer that stops without closing its connections (SIGSTOP), process 1 in one run and
  process 0 (the coordination service's host) in another: the survivor ends with one line
  and status 76 within about timeout_s (5 s), long before JAX's heartbeat (10 x timeout_s)
  would abort it with a C++ stack trace."""
  # Steps enough that neither run ends before its process is stopped.
  runs = {victim: _launch(tmp_path, f"stopped{victim}", _free_port(), [0, 1], num_steps=10**6)
          for victim in (1, 0)}
  stopped_at = {}
  try:
    for victim, (procs, _) in runs.items():
      # Training has begun once a checkpoint is saved.
      checkpoints = tmp_path / f"stopped{victim}" / "checkpoints"
      deadline = time.time() + 240
      while (not any(checkpoints.glob("[0-9]*")) and time.time() < deadline
             and procs[1 - victim].poll() is None):
        time.sleep(0.2)
      assert any(checkpoints.glob("[0-9]*"))
      procs[victim].send_signal(signal.SIGSTOP)
      stopped_at[victim] = time.time()
    for victim, (procs, logs) in runs.items():
      (rc, errors, text), = _ended([procs[1 - victim]], [logs[1 - victim]], timeout=60)
      assert rc == 76 and len(errors) == 1, text[-3000:]
      assert "another process of this run failed or cannot be reached" in errors[0]
      assert "Traceback" not in text and "stack trace" not in text
      # The survivor's exit came within timeout_s, a beat and its linger of the stop.
      assert time.time() - stopped_at[victim] < 5 * 3, (victim, errors[0])
  finally:
    for procs, _ in runs.values():
      for p in procs:
        p.kill()
        p.wait()


class _Store:
  """A coordination service's key-value store, as the liveness watch calls it: answering,
  failing, or hanging for ``hang_s``."""

  def __init__(self, fail=False, hang_s=0.0):
    self.values, self.fail, self.hang_s = {}, fail, hang_s

  def key_value_increment(self, key, by):
    import jax
    if self.fail:
      raise jax.errors.JaxRuntimeError("UNAVAILABLE: connection refused")
    time.sleep(self.hang_s)
    self.values[key] = str(int(self.values.get(key, 0)) + by)

  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

  def key_value_set(self, key, value, allow_overwrite=False):
    self.values[key] = value


@pytest.mark.parametrize("peer,found,recorded", [
    ("silent", "process 1 has not answered within distributed.timeout_s=0.5 s", True),
    ("lost", "found by process 1: its reason", False),
    ("unreachable", "process 0's coordination service failed: UNAVAILABLE", False),
    ("hung", "process 0's coordination service did not answer within", False),
    ("beating", None, False),
])
def test_the_liveness_watch_gives_up_only_on_a_silent_or_lost_peer(monkeypatch, capsys, peer,
                                                                    found, recorded):
  """Process 0's watch (timeout 0.5 s) against a peer whose count stands still, that recorded
  a loss, a store that fails or hangs, or a peer that keeps beating: all but the last end
  the process with one line and status 76, and a silent peer's finding is recorded for the
  others."""
  import threading

  from jax._src import distributed as jax_distributed

  from msrnn_jax.training import distributed
  store = _Store(fail=peer == "unreachable", hang_s=2.0 if peer == "hung" else 0.0)
  monkeypatch.setattr(jax_distributed.global_state, "client", store)
  monkeypatch.setattr(distributed, "_ending", threading.Lock())
  ended = []
  monkeypatch.setattr(distributed, "exit_now", lambda status, linger_s=0: ended.append(status))
  if peer == "lost":
    store.values["msrnn_jax/liveness/lost/1"] = "its reason"
  watch = distributed._LivenessWatch(store, 0, 2, limit_s=0.5)
  started = time.time()
  watch.start()
  while not ended and time.time() - started < 2.5:
    if peer == "beating":
      store.key_value_increment("msrnn_jax/liveness/alive/1", 1)
    time.sleep(0.05)
  watch.leave()
  # jax.distributed.shutdown() ends the watch.
  monkeypatch.setattr(jax_distributed.global_state, "client", None)
  watch._thread.join(timeout=5)
  assert not watch._thread.is_alive()
  errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
  if found is None:
    assert ended == [] and errors == []
    assert int(store.values["msrnn_jax/liveness/alive/0"]) >= 10  # about 5 beats per 0.5 s
  else:
    assert ended == [76] and len(errors) == 1 and found in errors[0], errors
    assert "rerun the same command on every process" in errors[0]
  assert ("msrnn_jax/liveness/lost/0" in store.values) == recorded


def test_a_peer_that_dies_or_stops_in_a_barrier_and_one_that_ends_first(tmp_path):
  """Runs (timeout_s=3) of a bare ``distributed.initialize``. In the first, process 1 dies
  without a word while process 0 waits in a barrier of the coordination service (as in a
  checkpoint's completion): process 0 ends with one line and status 76 within seconds, not at
  the barrier's 10-minute limit. In the second, of three processes, process 2 stops itself
  (SIGSTOP): processes 0 and 1 each end so. In the third, process 1 ends normally three
  timeouts before process 0: both end with status 0."""
  script = """if True:
    import os, signal, sys, time
    from msrnn_jax.training import distributed
    port, pid, count, case = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    distributed.initialize({"enabled": True, "coordinator_address": f"127.0.0.1:{port}",
                            "num_processes": count, "process_id": pid, "timeout_s": 3})
    from jax._src import distributed as jax_distributed
    if case == "dies" and pid == 1:
      os._exit(0)
    if case == "stops" and pid == 2:
      os.kill(os.getpid(), signal.SIGSTOP)
    if case in ("dies", "stops"):
      jax_distributed.global_state.client.wait_at_barrier("never", 600_000)
    if pid == 0:
      time.sleep(9)
    """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  runs = {}
  for case, count in (("dies", 2), ("stops", 3), ("ends_first", 2)):
    port = _free_port()
    runs[case] = []
    for pid in range(count):
      log = tmp_path / f"{case}_{pid}.log"
      with open(log, "w") as f:
        runs[case].append((subprocess.Popen(
            [sys.executable, "-c", script, str(port), str(pid), str(count), case], cwd=REPO,
            env=env, stdout=subprocess.DEVNULL, stderr=f), log))
  started = time.time()
  stopped, _ = runs["stops"].pop()
  try:
    results = {case: [(p.wait(timeout=120), log.read_text()) for p, log in procs]
               for case, procs in runs.items()}
  finally:
    stopped.kill()
    stopped.wait()
  for case, silent in (("dies", 1), ("stops", 2)):
    for rc, text in results[case][:silent]:  # the processes before the silent one
      errors = [x for x in text.splitlines() if x.startswith("error:")]
      assert rc == 76 and len(errors) == 1, text[-3000:]
      assert f"process {silent} has not answered within distributed.timeout_s=3 s" in errors[0]
  assert time.time() - started < 60
  for rc, text in results["ends_first"]:
    assert rc == 0 and "error:" not in text and "Check failure" not in text, text[-3000:]


def test_a_checkpoint_changed_in_place_fails_its_checksum(tmp_path, caplog):
  """16 bytes flipped in the largest file of the newest checkpoint (same size, still readable):
  the SHA-256 recorded at saving no longer matches, so it is skipped like a damaged one."""
  import jax.numpy as jnp

  from msrnn_jax.training import checkpointing
  w = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=5)
  for step in (2, 4):
    ckpt.save(step, {"w": jnp.asarray(w + step)}, {"step": step})
  ckpt.close()
  files = [p for p in (tmp_path / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  raw = bytearray(largest.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
  largest.write_bytes(bytes(raw))
  caplog.set_level("WARNING")
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  restored, meta = ckpt.restore_intact({"w": jnp.zeros_like(w)})
  ckpt.close()
  assert meta["step"] == 2
  np.testing.assert_array_equal(restored["w"], w + 2)
  assert re.search(rf"checkpoint {tmp_path}/checkpoints/4 cannot be used \(.*checksum mismatch",
                   caplog.text), caplog.text


def test_a_reader_retries_when_training_rotates_its_checkpoint_away(tmp_path, caplog):
  """A read-only reader (eval, predict) lists steps 2 and 4; before it reads 4, training saves
  6 and 8 and its keep=2 rotation deletes 2 and 4. The reader reads 8, calls nothing damaged."""
  import jax.numpy as jnp

  from msrnn_jax.training import checkpointing
  state = {"w": jnp.arange(10.0)}

  def train(steps):
    writer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
    for step in steps:
      writer.save(step, {"w": state["w"] + step}, {"step": step})
    writer.close()

  train((2, 4))
  reader = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  real_restore, calls = reader.restore, []

  def restore_while_training_saves(target, step=None):
    if not calls:
      train((6, 8))
    calls.append(step)
    return real_restore(target, step)

  reader.restore = restore_while_training_saves
  caplog.set_level("WARNING")
  restored, meta = reader.restore_intact(state)
  reader.close()
  assert calls[0] == 4 and meta["step"] == 8
  np.testing.assert_array_equal(restored["w"], np.arange(10.0) + 8)
  assert "removed by training while it was read" in caplog.text
  assert "cannot be used" not in caplog.text


def test_divergence_after_resuming_names_the_checkpoint_and_the_way_out(trained, tmp_path):
  """A finite checkpoint that diverges at once (its parameters scaled by 1e20): the error names
  the checkpoint the run resumed from and how to resume from the one before; after following
  that advice (the mv it prints) a rerun resumes from the checkpoint before it."""
  import shlex

  import jax

  from configs import test as test_config
  from msrnn_jax.training import checkpointing, train
  from msrnn_jax.training.integrity import all_finite
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  config = test_config.get_config()
  directory = str(workdir / "checkpoints")
  ckpt = checkpointing.Checkpointer(directory, read_only=True)
  state, meta = ckpt.restore_intact(_train_state_target(config))
  ckpt.close()
  assert meta["step"] == 4
  shutil.rmtree(workdir / "checkpoints" / "4")
  ckpt = checkpointing.Checkpointer(directory)
  ckpt.save(4, state.replace(params=jax.tree.map(lambda p: p * 1e20, state.params)), meta)
  ckpt.close()
  config.train.num_steps = 6
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert f"This run resumed from {directory}/4" in message, message
  command = re.search(r"\((mkdir -p .*)\) and rerun", message).group(1)
  subprocess.run(command, shell=True, check=True)
  assert shlex.split(command)[-1] == str(workdir / "checkpoints_damaged" / "4")
  ckpt = checkpointing.Checkpointer(directory)
  state, meta = ckpt.restore_intact(_train_state_target(config))
  ckpt.close()
  assert meta["step"] == int(state.step) == 2 and all_finite(state.params)


def _train_state_target(config):
  import functools

  import jax

  from msrnn_jax.training import sharding, step
  model, tx = step.create_model(config), step.create_optimizer(config)
  return jax.jit(functools.partial(step.create_train_state, model, tx, (4, 4, 16, 16, 1),
                                   config.seed),
                 out_shardings=sharding.replicated(sharding.make_mesh()))()


# msrnn_jax.main under a file size limit: a write past it fails (EFBIG) as on a full disk.
_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); sys.argv[0] = 'main'; "
            "runpy.run_module('msrnn_jax.main', run_name='__main__')")


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as a full disk")
def test_results_that_cannot_be_written_end_in_one_line_naming_the_way_out(trained, tmp_path):
  """--mode=eval where the result pictures cannot be written (a 20 kB file size limit; the
  per-frame plot is larger): one error line naming the workdir and how to write them later."""
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  for old in workdir.glob("test*"):
    old.unlink()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-c", _LIMITED, "--config=configs/test.py", f"--workdir={workdir}",
       "--mode=eval"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert re.search(rf"cannot write the test results in {workdir}: File too large .*write them "
                   r"again with --mode=eval and this workdir", errors[0]), errors[0]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as a full disk")
def test_predictions_that_cannot_be_written_change_no_file(trained, tmp_path):
  """--mode=predict under a 1 kB file size limit (the .npy is larger): one error line, the
  earlier prediction's files as they were, no temporary file left."""
  np.save(tmp_path / "ctx.npy", np.zeros((2, 16, 16), np.uint8))
  earlier = {tmp_path / name: f"earlier {name}".encode()
             for name in ("pred.npy", "pred.png", "pred.gif")}
  for path, content in earlier.items():
    path.write_bytes(content)
  limited = _LIMITED.replace("20000, 20000", "1000, 1000")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-c", limited, "--config=configs/test.py", f"--workdir={trained}",
       "--mode=predict", f"--input={tmp_path / 'ctx.npy'}", f"--output={tmp_path / 'pred.npy'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert re.search(rf"cannot write the predictions {tmp_path}/pred.npy and their pictures: File "
                   r"too large .*no file was changed", errors[0]), errors[0]
  assert {p: p.read_bytes() for p in earlier} == earlier
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.npy", "pred.gif", "pred.npy",
                                                         "pred.png"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as a full disk")
def test_a_full_disk_ends_in_one_line_and_leaves_no_temporary_checkpoint(tmp_path):
  """A checkpoint file that cannot be written (a 10 kB file size limit fails a save the way a
  full disk does): one error line, no traceback, no half-written temporary folder."""
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  # Every save writes a ~19 kB metadata file; how orbax packs the arrays into data files varies
  # with timing, so under 20 kB a save could fit and the result pictures fail first.
  limited = _LIMITED.replace("20000, 20000", "10000, 10000")
  proc = subprocess.run(
      [sys.executable, "-c", limited, "--config=configs/test.py", f"--workdir={workdir}",
       "--config.train.eval_every_steps=1000"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  match = re.search(rf"cannot write a checkpoint in {workdir}/checkpoints: File too large .*its "
                    r"temporary folder was removed.*rerun with this workdir to "
                    r"(start from step 0|resume from step (\d+))", errors[0])
  assert match, errors[0]
  # Whether the step-2 save fits under the limit depends on how orbax packs its files; the one
  # that failed leaves nothing behind, and the message names the checkpoint that is kept.
  kept = [] if match.group(2) is None else [match.group(2)]
  assert os.listdir(workdir / "checkpoints") == kept


def test_damaged_prepared_data_is_reported_before_training(tmp_path):
  """A truncated and a byte-flipped ArrayRecord file of a prepared data set: each stops the run
  before the workdir is created, with one line naming the file and `prepare --overwrite`."""
  sys.path.insert(0, str(REPO / "tests"))
  from data_fixtures import data_config

  from configs import test as test_config
  from msrnn_jax import data
  from msrnn_jax.training import train
  (tmp_path / "raw").mkdir()
  seqs = np.random.default_rng(0).integers(0, 255, (20, 10, 64, 64), dtype=np.uint8)
  np.save(tmp_path / "raw" / "mnist_test_seq.npy", seqs)
  config = test_config.get_config()
  config.data = data_config(tmp_path, "mmnist", mmnist_digits="npy", image_size=16, in_len=2,
                            out_len=2)
  builder = data.get_builder(config.data)
  path = builder.info.splits["train"].filepaths[0]
  intact = pathlib.Path(path).read_bytes()
  middle = len(intact) // 2
  damages = {"truncated": intact[:middle],
             "flipped": intact[:middle] + bytes(b ^ 0xFF for b in intact[middle:middle + 16])
             + intact[middle + 16:]}
  for name, damaged in damages.items():
    pathlib.Path(path).write_bytes(damaged)
    with pytest.raises(data.verify.DamagedDataError) as error:
      train.train_and_evaluate(config, str(tmp_path / name))
    assert re.fullmatch(rf"prepared data file {re.escape(str(path))} is damaged \(.+\); rebuild "
                        r"the data set: python -m msrnn_jax.data.prepare with the same --config "
                        r"and overrides, plus --overwrite\.", str(error.value)), str(error.value)
    assert not (tmp_path / name).exists()


def test_a_diverged_run_warns_and_sigterm_in_its_final_evaluation_exits_75(tmp_path,
                                                                           monkeypatch, capsys,
                                                                           caplog):
  """learning_rate=1e6: the loss grows far past its first value (a warning while training).
  SIGTERM during the final evaluation: exit 75 with a message (the checkpoint of the last step
  is saved); the rerun only evaluates, and the model, worse than both trivial baselines, gets a
  warning and test.json's field."""
  from configs import test as test_config
  from msrnn_jax import commands, data
  real, sent = data.eval_batches, []

  def term_during_test(data_cfg, split, **kwargs):
    for batch in real(data_cfg, split, **kwargs):
      if split == "test" and not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, "eval_batches", term_during_test)
  config = test_config.get_config()
  config.train.learning_rate = 1e6
  config.train.num_steps = 12
  config.train.log_every_steps = 1
  config.train.eval_every_steps = 1000
  config.backend.keep_freed_memory = False  # not in the test process
  workdir = tmp_path / "w"
  caplog.set_level("WARNING")
  assert commands.run(config, str(workdir)) == commands.EXIT_PREEMPTED == 75
  assert sent and not (workdir / "test.json").exists()
  err = capsys.readouterr().err
  assert (f"stopped by a signal during the final evaluation; the checkpoint of step 12 is in "
          f"{workdir}/checkpoints; rerun the same command to run the evaluation.") in err, err
  losses = [json.loads(x)["train/loss"] for x in (workdir / "metrics.jsonl").read_text()
            .splitlines() if "train/loss" in x]
  assert max(losses) > 10 * losses[0]
  assert re.search(r"training loss \S+ at step \d+ is \d+x its first logged value .*lower "
                   r"train.learning_rate \(now 1e\+06\)", caplog.text), caplog.text
  monkeypatch.undo()
  assert commands.run(config, str(workdir)) == commands.EXIT_OK
  # No step trained again: the log holds the same 12 training losses.
  assert [json.loads(x)["train/loss"] for x in (workdir / "metrics.jsonl").read_text()
          .splitlines() if "train/loss" in x] == losses
  result = json.loads((workdir / "test.json").read_text())
  assert all(result["future"]["mse"] > b["future"]["mse"] for b in result["baselines"].values())
  assert result["worse_than_baselines"] is True
  assert "the test evaluation is worse than every trivial baseline" in caplog.text
