"""Training loop, sharding, resume, schedules, CLI and bad input."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from msrnn_jax import commands, data
from msrnn_jax.training import (
  context_files,
  inference,
  losses,
  memory_fit,
  run,
  sampling,
  sharding,
  summary,
  train,
)
from msrnn_jax.training import step as step_lib
from msrnn_jax.training import workdir as workdir_lib
from msrnn_jax.training.integrity import all_finite

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**train_overrides):
  config = test_config.get_config()
  for k, v in train_overrides.items():
    setattr(config.train, k, v)
  return config


def _params(workdir):
  config = _config()
  mesh = sharding.make_mesh()
  params, step = run.restore_params(config, str(workdir), mesh, (4, 4, 16, 16, 1))
  return jax.tree.map(np.asarray, params), step


def test_loss_matches_numpy():
  rng = np.random.default_rng(0)
  frames = rng.uniform(size=(3, 5, 4, 6, 2)).astype(np.float32)
  preds = rng.uniform(size=(3, 4, 4, 6, 2)).astype(np.float32)
  loss, terms = losses.training_loss(jnp.asarray(preds), jnp.asarray(frames))
  d = preds.astype(np.float64) - frames[:, 1:]
  want = (d ** 2).sum(axis=(2, 3, 4)).mean() + np.abs(d).sum(axis=(2, 3, 4)).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(terms["mse"], (d ** 2).sum(axis=(2, 3, 4)).mean(axis=1), rtol=1e-5)


def test_schedules():
  assert float(sampling.linear_eta(0, 100)) == 1.0
  assert float(sampling.linear_eta(25, 100)) == pytest.approx(0.75)
  assert float(sampling.linear_eta(150, 100)) == 0.0
  # Reverse scheduled sampling, E = 30: start 10, end 20, scale 2 (hand-computed).
  assert sampling.reverse_etas(5, 30) == (0.5, 0.5)
  eta_r, eta = sampling.reverse_etas(14, 30)
  assert eta_r == pytest.approx(1 - 0.5 * np.exp(-2.0))
  assert eta == pytest.approx(0.5 - 0.5 * 0.4)
  assert sampling.reverse_etas(25, 30) == (1.0, 0.0)
  mask = sampling.sample_mask(jax.random.key(0), 4000, 8, 3, eta=0.25, eta_context=1.0)
  mask = np.asarray(mask)
  assert np.all(mask[:, :3] == 1.0)
  assert abs(mask[:, 3:].mean() - 0.25) < 0.02
  rev = np.asarray(sampling.sample_mask(jax.random.key(1), 4000, 8, 3, eta=0.0, eta_context=0.5))
  assert np.all(rev[:, 0] == 1.0) and abs(rev[:, 1:3].mean() - 0.5) < 0.03
  assert np.all(rev[:, 3:] == 0.0)


def _state_and_step(config, model_name=None, lr=None):
  if model_name:
    config.model.name = model_name
  if lr:
    config.train.learning_rate = lr
  model = step_lib.create_model(config)
  tx = step_lib.create_optimizer(config)
  shape = (4, config.data.in_len + config.data.out_len, 16, 16, 1)
  state = step_lib.create_train_state(model, tx, shape, seed=0)
  step = step_lib.make_train_step(model, tx, config.data.in_len, config.train.decouple_weight)
  return state, step


def _batch(seed=0):
  config = _config()
  ds = data.train_dataset(config.data, global_batch=4, seed=seed)
  return jnp.asarray(ds[0]["frames"])


def test_one_step_changes_every_parameter():
  config = _config()
  state, step = _state_and_step(config)
  before = jax.tree.map(np.array, state.params)
  new_state, m = step(state, _batch(), jnp.float32(1.0), jnp.float32(1.0))
  assert np.isfinite(float(m.loss.compute()))
  assert int(new_state.step) == 1
  for path, a in jax.tree_util.tree_leaves_with_path(before):
    b = new_state.params
    for k in path:
      b = b[k.key]
    assert not np.array_equal(a, np.asarray(b)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", ["ms_cms_lstm", "ms_modernn", "ms_preciplstm", "ms_lstm"])
def test_new_families_train(name):
  """Two data-parallel training steps (the batch split over the 4 devices) of each of the
  authors' later models, in their pyramid: finite losses, and the first step moves every
  parameter (each one gets a gradient). Their plain stacks are the same cells, composed
  layer by layer (tests/test_models.py)."""
  config = _config()
  config.model.num_layers = 3
  config.model.ce_iters = 2  # both kinds of CMS-LSTM's / MoDeRNN's gating rounds
  config.model.attention_window = 6
  state, step = _state_and_step(config, model_name=name)
  before = jax.tree.map(np.array, state.params)
  mesh = sharding.make_mesh()
  state = jax.device_put(state, sharding.replicated(mesh))
  frames = sharding.shard_batch({"frames": np.asarray(_batch())}, mesh)["frames"]
  assert len(frames.sharding.device_set) == 4
  state, m = step(state, frames, jnp.float32(1.0), jnp.float32(1.0))
  assert np.isfinite(float(m.loss.compute()))
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert all(jax.tree.leaves(moved)), moved
  state, m = step(state, frames, jnp.float32(0.5), jnp.float32(1.0))
  assert np.isfinite(float(m.loss.compute())) and int(state.step) == 2


def test_tiny_model_overfits_fixed_batch():
  config = _config()
  config.model.hidden = 8
  state, step = _state_and_step(config, lr=1e-2)
  frames = _batch()
  first = None
  for _ in range(120):
    state, m = step(state, frames, jnp.float32(1.0), jnp.float32(1.0))
    loss = float(m.loss.compute())
    first = first or loss
  assert loss < first / 5, (first, loss)


def test_sharded_step_equals_single_device():
  assert jax.device_count() == 4, "conftest sets 4 CPU devices"
  config = _config()
  state, step = _state_and_step(config)
  frames = _batch()
  mesh = sharding.make_mesh()
  # Host copies: the step donates its state buffers.
  state = jax.tree.map(np.asarray, state)
  single = jax.device_put((state, frames), jax.devices()[0])
  s1, m1 = step(*single, jnp.float32(0.5), jnp.float32(1.0))
  sharded_state = jax.device_put(state, sharding.replicated(mesh))
  sharded_frames = sharding.shard_batch({"frames": np.asarray(frames)}, mesh)["frames"]
  assert len(sharded_frames.sharding.device_set) == 4
  s4, m4 = step(sharded_state, sharded_frames, jnp.float32(0.5), jnp.float32(1.0))
  np.testing.assert_allclose(m4.loss.compute(), m1.loss.compute(), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               s4.params, s1.params)


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    sharding.check_batch_size(6, "train.batch_size")


def test_run_writes_outputs(trained):
  for name in ("test.json", "test.csv", "test_per_frame.csv", "test_copy_last.json",
               "test_blank.json", "test_per_frame.png", "test_predictions.png", "test_predictions.gif",
               "metrics.jsonl"):
    assert (trained / name).is_file(), name
  assert list((trained / "tensorboard").iterdir())
  result = json.loads((trained / "test.json").read_text())
  assert result["num_examples"] == 10 and set(result) >= {"all", "future", "per_frame"}
  lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines if "train/loss" in x] == [2, 4]
  # Periodic validation at step 2 (eval_every_steps=2), final test metrics at 4.
  assert [x["step"] for x in lines if "valid/mse_all" in x] == [2]
  assert [x["step"] for x in lines if "test/mse_future" in x] == [4]
  assert [x["step"] for x in lines if "test_blank/mse_future" in x] == [4]


def test_blank_frame_baseline_is_all_zero_prediction(trained):
  """test_blank.json scores all-zero frames: its MSE is the mean of truth^2 (summed
  over pixels), computed here from the test data independently."""
  config = _config()
  frames = np.concatenate([b["frames"][b["mask"]] for b in data.eval_batches(
      config.data, "test", global_batch=config.eval.batch_size)])
  in_len = config.data.in_len
  future = frames[:, in_len:].astype(np.float64) ** 2
  expected = future.reshape(future.shape[0], future.shape[1], -1).sum(-1).mean()
  blank = json.loads((trained / "test_blank.json").read_text())
  assert blank["future"]["mse"] == pytest.approx(expected, rel=1e-5)
  result = json.loads((trained / "test.json").read_text())
  assert result["baselines"]["blank"]["future"]["mse"] == blank["future"]["mse"]
  header = (trained / "test.csv").read_text().splitlines()[0]
  assert header == "metric,all,future,copy_last_all,copy_last_future,blank_all,blank_future"


def _log(workdir):
  """metrics.jsonl without the timing column."""
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in x.items() if k != "train/steps_per_s"} for x in lines]


def _purge_steps(workdir):
  """Steps of the purge markers (SessionLog START) in the TensorBoard event files."""
  from tensorboardX.proto import event_pb2
  steps = []
  for path in sorted((workdir / "tensorboard").iterdir()):
    data, pos = path.read_bytes(), 0
    while pos < len(data):  # TFRecord: length, crc, payload, crc
      n = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 16 + n
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        steps.append(event.step)
  return steps


def test_resume_is_exact(trained, tmp_path):
  """Kill after step 2 (simulated by dropping later checkpoints), rerun: same params, and
  metrics.jsonl/TensorBoard hold each step once."""
  workdir = tmp_path / "resumed"
  shutil.copytree(trained, workdir)
  shutil.rmtree(workdir / "checkpoints" / "4")
  (workdir / "test.json").unlink()
  train.train_and_evaluate(_config(), str(workdir))
  straight, s1 = _params(trained)
  resumed, s2 = _params(workdir)
  assert s1 == s2 == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert (workdir / "test.json").is_file()
  # The log was cut back to the checkpoint of step 2: the rerun's steps 3-4 and final
  # evaluation replace the first run's, bit for bit.
  assert _log(workdir) == _log(trained)
  assert _purge_steps(workdir) == [3]


def test_run_compiles_each_step_once(tmp_path):
  """Three periodic validations and the final test share one eval-step compilation; the
  train step compiles once too. Counted from JAX's backend-compile events by function."""
  from jax._src import dispatch  # the event name; jax.monitoring has no public constant
  compiled = []

  def listener(event, duration, **kwargs):
    del duration
    if event == dispatch.BACKEND_COMPILE_EVENT:
      compiled.append(str(kwargs.get("fun_name", "")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train.train_and_evaluate(_config(num_steps=8, eval_every_steps=2,
                                     checkpoint_every_steps=100), str(tmp_path / "w"))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines if "valid/mse_all" in x] == [2, 4, 6]
  assert [x["step"] for x in lines if "test/mse_all" in x] == [8]
  assert sum("train_step" in name for name in compiled) == 1, compiled
  assert sum("eval_step" in name for name in compiled) == 1, compiled


def test_auto_remat_offers_the_rolled_loop_where_auto_unrolls(tmp_path, monkeypatch):
  """Training hands memory_fit the rolled time loop as a fallback exactly where
  scan_unroll='auto' unrolls it (here at any frame size), and none otherwise."""
  from msrnn_jax.model import config as model_config
  seen = []

  class Offered(Exception):
    """Ends the run once the step is chosen: the rest of it is tested elsewhere."""

  def spy(remat, build, example_args, budget=None, rolled=None):
    seen.append(rolled)
    if rolled is not None:  # a different program: the loop rolled keeps other buffers
      unrolled_need = memory_fit.compiled_bytes(build("none").lower(*example_args).compile())
      rolled_need = memory_fit.compiled_bytes(rolled().lower(*example_args).compile())
      assert rolled_need != unrolled_need
    raise Offered

  def config():
    c = _config(num_steps=1, checkpoint_every_steps=100)
    c.model.name = "predrnn"  # a family that unrolls in float32 (its registry entry)
    return c

  monkeypatch.setattr(memory_fit, "fitted_train_step", spy)
  with pytest.raises(Offered):
    train.train_and_evaluate(config(), str(tmp_path / "a"))
  monkeypatch.setattr(model_config, "AUTO_UNROLL_MIN_STATE_BYTES", 0)
  with pytest.raises(Offered):
    train.train_and_evaluate(config(), str(tmp_path / "b"))
  assert seen[0] is None and seen[1] is not None


def test_sigterm_saves_and_stops(tmp_path, monkeypatch, capsys):
  """SIGTERM: checkpoint, then the distinct exit status 75 (a finished run exits 0)."""
  original = summary.Progress.report

  def report_then_term(self, step, **values):
    original(self, step, **values)
    os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(summary.Progress, "report", report_then_term)
  config = _config(checkpoint_every_steps=100)
  config.backend.keep_freed_memory = False  # not in the test process
  assert commands.run(config, str(tmp_path / "w")) == commands.EXIT_PREEMPTED == 75
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["2"]
  assert not (tmp_path / "w" / "test.json").exists()
  assert "stopped by a signal at step 2" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_nonfinite_loss_stops_and_keeps_last_good(tmp_path, monkeypatch):
  real = data.train_dataset

  class Poisoned:
    def __init__(self, ds):
      self.ds = ds

    def __getitem__(self, step):
      batch = dict(self.ds[step])
      if step == 2:
        batch["frames"] = np.full_like(batch["frames"], np.nan)
      return batch

  monkeypatch.setattr(data, "train_dataset", lambda *a, **k: Poisoned(real(*a, **k)))
  with pytest.raises(FloatingPointError,
                     match=r"at step 3; the last good checkpoint \(step 2, finite\)"):
    train.train_and_evaluate(_config(), str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["2"]


def test_nonfinite_parameters_are_never_checkpointed(tmp_path, monkeypatch):
  """The update of step 4 turns the parameters to NaN while its loss is finite: checkpoint 4
  is not written, the error names step 2 (finite), and rerunning resumes from it."""
  real = train.make_train_step

  def poisoned(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def step(state, *rest):
      state, batch_metrics = step_fn(state, *rest)
      if int(state.step) == 4:
        state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
      return state, batch_metrics

    step.lower = step_fn.lower  # training compiles the real step ahead of the first call
    return step

  monkeypatch.setattr(train, "make_train_step", poisoned)
  config = _config()
  config.model.remat = "none"  # explicit: 'auto' would measure the poisoned plain function
  with pytest.raises(FloatingPointError, match=r"non-finite parameters .* at step 4; the last "
                     r"good checkpoint \(step 2, finite\)"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["2"]
  monkeypatch.undo()
  state = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert int(state.step) == 4 and all_finite(state.params)


def test_bad_workdir_and_predict_inputs(tmp_path, trained):
  with pytest.raises(FileNotFoundError, match="does not exist; create"):
    workdir_lib.check_workdir(str(tmp_path / "missing" / "run"))
  assert not (tmp_path / "missing").exists()
  config = _config()
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((3, 16, 16), np.uint8))
  with pytest.raises(FileNotFoundError, match="does not exist; train first"):
    inference.predict_file(config, str(tmp_path / "empty"), str(bad), str(tmp_path / "p.npy"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    inference.predict_file(config, str(tmp_path / "empty"), str(bad), str(tmp_path / "p.npy"))
  np.save(bad, np.zeros((3, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="3 channels; the model expects 1"):
    inference.predict_file(config, str(trained), str(bad), str(tmp_path / "p.npy"))
  np.save(bad, np.full((3, 16, 16), 2.0, np.float32))
  with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
    inference.predict_file(config, str(trained), str(bad), str(tmp_path / "p.npy"))
  np.save(bad, np.zeros((16, 16), np.float32))
  with pytest.raises(ValueError, match=r"expected \(T, H, W\), \(T, H, W, C\), \(N, T, H, W\)"):
    inference.predict_file(config, str(trained), str(bad), str(tmp_path / "p.npy"))
  assert not list(tmp_path.glob("p.*"))


def test_predict_accepts_one_sequence_or_a_batch(tmp_path, trained):
  """(T,H,W), (T,H,W,C), (N,T,H,W), (N,T,H,W,C): a batch predicts each sequence as alone."""
  config = _config()
  rng = np.random.default_rng(0)
  batch = rng.uniform(size=(3, 2, 16, 16)).astype(np.float32)
  shapes = {}
  for name, arr in [("t", batch[0]), ("tc", batch[0, ..., None]), ("n", batch),
                    ("nc", batch[..., None])]:
    np.save(tmp_path / f"{name}.npy", arr)
    context, batched = context_files.load_context(str(tmp_path / f"{name}.npy"), 1, 4)
    shapes[name] = (context.shape, batched)
  assert shapes == {"t": ((1, 2, 16, 16, 1), False), "tc": ((1, 2, 16, 16, 1), False),
                    "n": ((3, 2, 16, 16, 1), True), "nc": ((3, 2, 16, 16, 1), True)}
  # Batches of 2 (the last one padded) give what one sequence at a time gives.
  pred = inference.predict_file(config, str(trained), str(tmp_path / "n.npy"),
                                str(tmp_path / "out.npy"), horizon=3)
  assert pred.shape == (3, 3, 16, 16, 1) and np.load(tmp_path / "out.npy").shape == pred.shape
  one = inference.predict_file(config, str(trained), str(tmp_path / "t.npy"),
                               str(tmp_path / "one.npy"), horizon=3)
  assert one.shape == (3, 16, 16, 1)
  np.testing.assert_allclose(pred[0], one, atol=1e-6)
  params, _ = run.restore_params(config, str(trained), sharding.make_mesh(), (1, 2, 16, 16, 1))
  pairs = inference.predict_frames(config, {"params": params}, batch[..., None], 3, batch_size=2)
  np.testing.assert_allclose(pairs, pred, atol=1e-6)
  for name in ("out.png", "out.gif", "one.png", "one.gif"):
    assert (tmp_path / name).stat().st_size > 0, name


def _main(*args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", "msrnn_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_main_train_eval_predict(tmp_path):
  workdir = tmp_path / "cli"
  proc = _main("--config=configs/test.py", f"--workdir={workdir}")
  assert (workdir / "test.json").is_file()
  # main applies config.backend.keep_freed_memory before JAX starts, in a process it restarted
  # with glibc's per-thread cache off (backend/allocator.py).
  assert "keep_freed_memory: on" in proc.stderr
  assert "per-thread cache is on" not in proc.stderr
  (workdir / "test.json").unlink()
  _main("--config=configs/test.py", f"--workdir={workdir}", "--mode=eval")
  assert json.loads((workdir / "test_checkpoint.json").read_text())["step"] == 4
  assert (workdir / "test.json").is_file()
  context = (np.random.default_rng(0).uniform(size=(3, 2, 16, 16)) * 255).astype(np.uint8)
  np.save(tmp_path / "ctx.npy", context)
  _main("--config=configs/test.py", f"--workdir={workdir}", "--mode=predict",
        f"--input={tmp_path / 'ctx.npy'}", f"--output={tmp_path / 'pred.npy'}", "--horizon=5")
  pred = np.load(tmp_path / "pred.npy")
  assert pred.shape == (3, 5, 16, 16, 1) and pred.min() >= 0 and pred.max() <= 1
  assert (tmp_path / "pred.png").is_file()
  gif = iio.imread(tmp_path / "pred.gif", index=None)
  assert gif.shape[0] == 2 + 5  # one frame per time step: context, then predictions
  # Bad input: one line saying what to do, exit code 2, no traceback.
  proc = _main("--config=configs/test.py", f"--workdir={tmp_path / 'none'}", "--mode=predict",
               f"--input={tmp_path / 'ctx.npy'}", f"--output={tmp_path / 'p.npy'}", check=False)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: workdir") and "does not exist; train first" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _main("--config=configs/test.py", f"--workdir={workdir}", "--config.train.nonexistent=1",
               check=False)
  assert proc.returncode == 2 and proc.stderr.startswith("error: --config.train.nonexistent")
  assert "Traceback" not in proc.stderr


def test_the_docs_example_cell_with_an_option_trains_through_the_config_path(tmp_path,
                                                                             monkeypatch):
  """docs/model.md's "Adding a cell": its file (executed from the docs) and one registry
  entry make a model that the config checks accept and that trains one step and evaluates
  through the command line's path (``commands.run``), with the option from the config."""
  from msrnn_jax.model import cells
  from msrnn_jax.training import step as train_step

  text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
  section = text[text.index("### Adding a cell"):]
  start = section.index("```python\n") + len("```python\n")
  code = section[start:section.index("\n```", start)]
  namespace = {"__name__": "msrnn_jax.model.cells.convgru"}
  exec(compile(code, "docs/model.md", "exec"), namespace)  # noqa: S102
  monkeypatch.setitem(cells.FAMILIES, "convgru", cells.Family(namespace["ConvGRUCell"]))

  config = _config(num_steps=1, log_every_steps=1, checkpoint_every_steps=1)
  config.model.name = "ms_convgru"
  config.model.update_bias = 0.5  # as a config file sets it
  config.backend.keep_freed_memory = False  # not in the test process
  assert commands.run(config, str(tmp_path / "w")) == commands.EXIT_OK
  assert (tmp_path / "w" / "test.json").exists()
  model = train_step.create_model(config)
  assert model.config.option("update_bias") == 0.5
  # The option reaches the cell: another bias, other predictions from the same parameters.
  frames = jax.random.uniform(jax.random.key(0), (1, 4, 16, 16, 1))
  params = model.init(jax.random.key(1), frames)
  other = model.replace(options=(("update_bias", 0.0),))
  assert not np.allclose(model.apply(params, frames)[0], other.apply(params, frames)[0])
