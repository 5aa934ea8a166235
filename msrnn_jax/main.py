"""Command line: train, evaluate or predict with a config file.

    python -m msrnn_jax.main --config=configs/taxibj.py --workdir=runs/taxibj
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo \\
        --config.model.name=ms_predrnn --config.train.num_steps=100
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo --mode=eval
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo \\
        --mode=predict --input=context.npy --output=pred.npy --horizon=10

Exit status: 0 done, 2 ``error: ...`` (one line on stderr), 75 stopped by
SIGTERM/SIGINT after saving a checkpoint (rerun to continue), 76 another
process of a multi-process run lost (rerun every process); see
``msrnn_jax/commands.py`` and docs/running.md.

This file only parses flags (kept short so the logic stays importable).
"""

import logging as pylogging
import re
import sys
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_string("input", None, "predict: context frames: .npy (T,H,W[,C]) or (N,T,H,W[,C]), "
                    "a video, a GIF or a folder of frames.")
flags.DEFINE_string("output", None, "predict: where to write the predicted frames (.npy).")
flags.DEFINE_integer("horizon", None, "predict: number of frames, >= 1 (default data.out_len).")
flags.mark_flags_as_required(["config", "workdir"])

# Same value as msrnn_jax.commands.EXIT_ERROR (not imported: --help stays fast).
_EXIT_ERROR = 2


_NOISY_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/")


def _from_noisy_library(path: str) -> bool:
  return any(lib in path for lib in _NOISY_LIBRARIES)


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter of orbax/grain/tfds (warnings still show), and the tracebacks that
  orbax's background threads and asyncio tasks log for a failed save (``Checkpointer`` reports
  it in one ``error:`` line; ``--verbosity=1`` shows them)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = _from_noisy_library(record.pathname)
    if record.exc_info and logging.get_verbosity() < logging.DEBUG:
      # asyncio logs a failed orbax write ("Task exception was never retrieved") under its own
      # name: the library shows in the exception's frames, not in the record's path.
      tb = record.exc_info[2]
      if noisy or any(_from_noisy_library(f.filename) for f in traceback.extract_tb(tb)):
        return False
    return record.levelno >= pylogging.WARNING or not noisy


def _exit_error(message: str) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(_EXIT_ERROR)


def _config_error(error: Exception, argv: list[str]) -> str:
  """One line for an error ml_collections raised while applying ``--config.*`` overrides."""
  chain, e = [], error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, KeyError) and e.args:
      key, _, hint = str(e.args[0]).partition("\n")
      key = key.strip("'\"")
      names = [a.split("=", 1)[0] for a in argv
               if re.match(rf"-{{1,2}}config\.(.+\.)?{re.escape(key)}(=|$)", a)]
      where = names[0] if names else f"--config...{key}"
      return f"{where}: the config has no key {key!r}. {hint.strip()}".strip()
  return _last_line(error)


def _last_line(error: Exception) -> str:
  """The last line of a message (a config file's error comes with its traceback)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return re.sub(r"^\w+(Error|Exception): ", "", lines[-1])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake reported as one ``error:`` line (exit 2)."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):  # the config file raised; drop its traceback
      _exit_error(f"cannot load --config={_config_spec(argv)}: {_last_line(e)}")
    if any(a.startswith("--config.distributed=") for a in argv):
      _exit_error(f"{e}: config.distributed is a group; use --config.distributed.enabled=True "
                  "(docs/running.md).")
    if "as a ConfigDict" in str(e):
      _exit_error(_group_error(argv))
    _exit_error(f"{e} (see --helpshort).")
  except OSError as e:  # the config file failed to load (raised by an override)
    _exit_error(f"cannot load the --config file: {_last_line(e)}")
  except ImportError as e:  # the config file's own imports
    spec = _config_spec(argv)
    # configs/*.py build on configs.default, importable from the repository root.
    hint = "; run from the repository root" if e.name == "configs" else ""
    _exit_error(f"cannot load --config={spec}: {e}{hint}.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # Raised by ml_collections while applying --config.* overrides.
    _exit_error(_config_error(e, argv))
  except Exception as e:  # noqa: BLE001 - anything the config file's own code raised
    _exit_error(f"cannot load --config={_config_spec(argv)}: {_exception_line(e)}")
  try:
    config = FLAGS.config
    getattr(config, "seed", None)  # a config file that failed to load raises here
  except OSError as e:
    _exit_error(f"cannot load --config={FLAGS['config'].config_filename}: {_last_line(e)}")
  except Exception as e:  # noqa: BLE001 - anything the config file's own code raised
    _exit_error(f"cannot load --config={_config_spec(argv)}: {_exception_line(e)}")
  if not isinstance(config, ml_collections.ConfigDict):
    _exit_error(f"--config={_config_spec(argv)}: get_config() returned an object of type "
                f"{type(config).__name__}, not an ml_collections.ConfigDict; build it on "
                "configs/default.py's get_config().")
  return rest


def _config_spec(argv: list[str]) -> str:
  """The ``--config=`` value that absl uses (the last one)."""
  return next((a.split("=", 1)[1] for a in reversed(argv) if re.match(r"-{1,2}config=", a)), "")


def _exception_line(error: Exception) -> str:
  """``Type: message`` in one line (a SyntaxError says where)."""
  return f"{type(error).__name__}: {_last_line(error)}"


def _group_error(argv: list[str]) -> str:
  """One line for ``--config.<group>=<value>``: name the group's keys to set instead."""
  for arg in argv:
    match = re.fullmatch(r"-{1,2}config\.([\w.]+)=(.*)", arg)
    if not match:
      continue
    group = FLAGS["config"].value
    for part in match.group(1).split("."):
      group = group.get(part) if isinstance(group, ml_collections.ConfigDict) else None
    if isinstance(group, ml_collections.ConfigDict):
      key = "name" if "name" in group else sorted(group.keys())[0]
      return (f"{arg}: config.{match.group(1)} is a group of settings, not a value; set one of "
              f"its keys, e.g. --config.{match.group(1)}.{key}={match.group(2)}.")
  return "a --config.<group>=<value> flag sets a group of settings; set one of its keys."


def main(argv):
  if len(argv) > 1:
    _exit_error(f"unexpected arguments {argv[1:]}; every option is a --flag (see --helpshort).")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that --help stays fast and flags are parsed first.
  from msrnn_jax import commands
  commands.finish(commands.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.input,
                               FLAGS.output, FLAGS.horizon))


def _program(argv):
  """``python -m msrnn_jax.main``: :func:`main`, the host set up as for a program's entry point
  (which may run this command again, once, in the same process: docs/performance.md)."""
  from msrnn_jax import backend
  backend.prepare_host(FLAGS.config.get("backend", {}).get("keep_freed_memory", True),
                       restart_program=True)
  main(argv)


if __name__ == "__main__":
  app.run(_program, flags_parser=parse_flags)
