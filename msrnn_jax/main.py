"""Command line: train, evaluate or predict with a config file.

    python -m msrnn_jax.main --config=configs/taxibj.py --workdir=runs/taxibj
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo \\
        --config.model.name=ms_predrnn --config.train.num_steps=100
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo --mode=eval
    python -m msrnn_jax.main --config=configs/mmnist.py:cpu --workdir=runs/demo \\
        --mode=predict --input=context.npy --output=pred.npy --horizon=10

This file only parses flags (kept short so the logic stays importable).
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_string("input", None, "predict: context frames (.npy, (T,H,W) or (T,H,W,C)).")
flags.DEFINE_string("output", None, "predict: where to write the predicted frames (.npy).")
flags.DEFINE_integer("horizon", None, "predict: number of frames (default data.out_len).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter of orbax/grain/tfds (warnings still show)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "tensorflow_datasets",
                                                           "etils"))
    return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from msrnn_jax import host_memory
  if FLAGS.config.get("keep_freed_memory", True):
    # Before anything starts JAX's backend: XLA's threads must not have
    # malloc arenas of their own yet (msrnn_jax/host_memory.py).
    host_memory.keep_freed_memory()
  # Imported here so that --help stays fast and flags are parsed first.
  import jax

  from msrnn_jax import inference, train
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
      if not FLAGS.input or not FLAGS.output:
        raise ValueError("--mode=predict needs --input=<context.npy> and --output=<pred.npy>.")
      inference.predict_file(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.horizon)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Bad input: one line saying what to do, no traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
