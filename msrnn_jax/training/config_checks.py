"""Checks of a configuration before any work, and the settings each checkpoint records.

``check_config`` runs before JAX starts and before the workdir is touched: a
value that cannot work (``keep_checkpoints=0`` would delete every checkpoint,
``log_every_steps=0`` divides by zero after the first step) stops the run with
one line naming the key, its value and what is valid.

``settings`` lists the keys that shape the train state (parameter shapes, the
pyramid, the family's ``state_options``) and the training data (image size,
lengths, batch, seed). Every checkpoint records them; ``differences``
compares them with the current config when a run resumes, evaluates or
predicts, so a workdir is never silently reused for another model.
"""

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A configuration value that cannot work; the message is one line."""


# Keys that decide which examples a training step sees (and in what order):
# resuming with other values would continue another run.
DATA_KEYS: tuple[str, ...] = (
    "data.name", "data.image_size", "data.in_len", "data.out_len", "train.batch_size", "seed")
# Besides the state keys, what each mode compares with the checkpoint.
# Evaluation scores the model on the recorded data shape; prediction takes its
# frames from the input file.
_MODE_DATA_KEYS = {"train": DATA_KEYS, "eval": DATA_KEYS[:4], "predict": ()}
# Where the config holds the ModelConfig fields that are not model.<field>.
_MODEL_FIELD_KEYS = {"name": "model.name", "channels": "data.channels", "in_len": "data.in_len",
                     "conv_impl": "backend.conv_impl", "warp_impl": "backend.warp_impl"}


def state_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Keys that change the parameters or what they mean: a checkpoint fits only these values."""
  from msrnn_jax import model as model_lib
  options = model_lib.family(config.model.name).cell.state_options
  return ("model.name", "model.hidden", "model.num_layers", "model.kernel_size", "model.levels",
          "model.skip", *(f"model.{k}" for k in options), "data.channels")


def mode_keys(config: ml_collections.ConfigDict, mode: str) -> tuple[str, ...]:
  """The keys a ``mode`` (``'train'``, ``'eval'``, ``'predict'``) compares with a checkpoint."""
  return state_keys(config) + _MODE_DATA_KEYS[mode]


_SUMMARY_BACKENDS = ("auto", "tensorboardx", "clu")
_SAMPLING = ("auto", "linear", "reverse", "none")
_SPLITS = ("train", "validation", "test", "valid", "val", "eval")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _fail(key: str, value: Any, rule: str) -> None:
  raise ConfigError(f"--config.{key}={value!r}: {rule}.")


def _int(config: ml_collections.ConfigDict, key: str) -> int:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int):
    _fail(key, value, "must be an integer")
  return value


def _at_least(config: ml_collections.ConfigDict, key: str, low: int, why: str = "") -> int:
  value = _int(config, key)
  if value < low:
    _fail(key, value, f"must be >= {low}{why}")
  return value


def _all_or_positive(config: ml_collections.ConfigDict, key: str, meaning: str) -> None:
  value = _int(config, key)
  if value != -1 and value < 1:
    _fail(key, value, f"use -1 for {meaning} or a number >= 1")


def _check_distributed(config: ml_collections.ConfigDict) -> None:
  group = config.get("distributed")
  if not isinstance(group, ml_collections.ConfigDict):
    raise ConfigError(
        f"config.distributed={group!r} is invalid: it is a group now; set "
        "--config.distributed.enabled=True (and coordinator_address, num_processes, process_id "
        "unless the cluster launcher provides them).")
  address = group.get("coordinator_address")
  if address and not re.fullmatch(r"\[?[\w.\-:]+\]?:\d+", address):
    _fail("distributed.coordinator_address", address, "use host:port, e.g. 10.0.0.1:1234")
  timeout = group.get("timeout_s")
  if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 1:
    _fail("distributed.timeout_s", timeout, "must be a number of seconds >= 1")
  count, index = group.get("num_processes"), group.get("process_id")
  if count is not None and count < 1:
    _fail("distributed.num_processes", count, "must be >= 1 (or unset: detected)")
  if index is not None and (index < 0 or (count is not None and index >= count)):
    _fail("distributed.process_id", index,
          f"must lie in [0, num_processes{'' if count is None else f'={count}'})")
  if count is not None and config.train.batch_size % count:
    _fail("train.batch_size", config.train.batch_size,
          f"must be a multiple of distributed.num_processes={count}")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for the first value that cannot work.

  Pure Python (no JAX computation, no file access), so it runs first. What
  needs the devices (batch divisibility) or the data (split sizes) is checked
  later, still before the workdir is created.
  """
  from msrnn_jax import model as model_lib
  from msrnn_jax.training.step import model_config

  try:
    _check_distributed(config)
    if config.summary_backend not in _SUMMARY_BACKENDS:
      _fail("summary_backend", config.summary_backend, f"use one of {_SUMMARY_BACKENDS}")
    _int(config, "seed")

    try:  # every model value, checked by the model's own ModelConfig
      model = model_config(config)
    except model_lib.ConfigValueError as e:
      _fail(_MODEL_FIELD_KEYS.get(e.field, f"model.{e.field}"), e.value, e.rule)
    for key in ("out_len", "image_size"):
      _at_least(config, f"data.{key}", 1)
    multiple = model.size_multiple()
    if config.data.image_size % multiple:
      _fail("data.image_size", config.data.image_size,
            f"{config.model.name} with pyramid levels {model.pyramid_levels()} needs a multiple "
            f"of {multiple}")

    _at_least(config, "train.batch_size", 1)
    steps = _int(config, "train.num_steps")
    if steps == 0 or steps < -1:
      _fail("train.num_steps", steps,
            f"use a number of steps >= 1, or -1 to train train.epochs={config.train.epochs} "
            "epochs")
    if steps == -1:
      _at_least(config, "train.epochs", 1, " when train.num_steps=-1")
    lr = config.train.learning_rate
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
      _fail("train.learning_rate", lr, "must be a finite number > 0")
    _at_least(config, "train.log_every_steps", 1)
    _at_least(config, "train.checkpoint_every_steps", 1)
    _at_least(config, "train.keep_checkpoints", 1, " (0 would delete every checkpoint)")
    _int(config, "train.eval_every_steps")  # <= 0: once per epoch
    _all_or_positive(config, "train.eval_examples", "the whole split")
    if config.train.scheduled_sampling not in _SAMPLING:
      _fail("train.scheduled_sampling", config.train.scheduled_sampling,
            f"use one of {_SAMPLING}")
    if config.train.decouple_weight < 0:
      _fail("train.decouple_weight", config.train.decouple_weight, "must be >= 0")

    _at_least(config, "eval.batch_size", 1)
    if config.eval.split not in _SPLITS:
      _fail("eval.split", config.eval.split, "use 'train', 'validation' or 'test'")
    _all_or_positive(config, "eval.max_examples", "the whole split")
    _at_least(config, "eval.num_visualize", 1)
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"the config lacks a key every run needs ({e}); start from "
                      "configs/default.py.") from None


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The values of ``state_keys(config) + DATA_KEYS``, as JSON would return them.

  A family option the config does not list has its default.
  """
  from msrnn_jax import model as model_lib
  defaults = {f"model.{k}": v for k, v in model_lib.family(config.model.name).options.items()}
  return json.loads(json.dumps({k: _get(config, k) if k not in defaults else
                                config.model.get(k[6:], defaults[k])
                                for k in state_keys(config) + DATA_KEYS}))


def differences(saved: dict[str, Any], config: ml_collections.ConfigDict,
                keys: Sequence[str]) -> list[tuple[str, Any, Any]]:
  """``(key, saved value, current value)`` for each of ``keys`` that differs.

  Keys a checkpoint did not record (older versions) are not compared.
  """
  now = settings(config)
  return [(k, saved[k], now[k]) for k in keys if k in saved and saved[k] != now[k]]


def _flag_value(value: Any) -> str:
  if isinstance(value, list):
    return "'(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
  return str(value)


def mismatch_message(workdir: str, step: int, diffs: list[tuple[str, Any, Any]]) -> str:
  """One line: which keys differ and the two ways out."""
  listed = "; ".join(f"{k}={_flag_value(old)} there, {_flag_value(new)} now"
                     for k, old, new in diffs)
  flags = " ".join(f"--config.{k}={_flag_value(old)}" for k, old, _ in diffs)
  return (f"workdir {workdir} holds checkpoints (newest step {step}) of other settings: {listed}. "
          f"Use another --workdir for the new settings, or rerun with the old ones: {flags}")
