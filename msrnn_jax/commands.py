"""What ``python -m msrnn_jax.main`` runs once its flags are parsed, and its exit statuses.

``run`` returns the process exit status instead of raising, so that a
scheduler (and a test) can tell the outcomes apart:

* ``EXIT_OK`` (0): finished.
* ``EXIT_ERROR`` (2): stopped by a problem the user can fix, printed as one
  line ``error: ...`` on stderr: a config value, the workdir (a file, not
  writable, in use by another run, checkpoints of other settings or none
  intact), an input file, or a non-finite loss. Errors found before training
  starts leave the workdir as it was.
* ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again later"):
  SIGTERM or SIGINT stopped training (or its final evaluation) after a
  checkpoint was saved; rerunning the same command continues exactly where it
  stopped. Requeue on it.
* ``EXIT_PEER_LOST`` (76, ``EX_PROTOCOL``: a remote error): another process of
  a multi-process run died, did not start or cannot be reached within
  ``distributed.timeout_s``; rerunning every process resumes from the last
  checkpoint. Requeue on it. (Processes started with different configs end
  with 2: a rerun of the same commands cannot succeed.)

Any other status (1 with a Python traceback) is a bug or a failure of the
machine, not of the input.
"""

import sys
from typing import Any

from absl import logging

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_PREEMPTED = 75
# Same value as training.distributed.EXIT_PEER_LOST (a test checks); not imported,
# so that this module loads no JAX before run() has prepared the host.
EXIT_PEER_LOST = 76


def one_line(message: Any) -> str:
  """``message`` with its line breaks and runs of spaces folded into single spaces."""
  return " ".join(str(message).split())


def run(config: Any, workdir: str, mode: str = "train", input_path: str | None = None,
        output_path: str | None = None, horizon: int | None = None) -> int:
  """Trains, evaluates or predicts; returns the exit status (module docstring).

  Args:
    config: the configuration (``configs/default.py``).
    workdir: the run directory.
    mode: ``'train'``, ``'eval'`` or ``'predict'``.
    input_path: predict: context frames (``.npy``; see ``inference``).
    output_path: predict: where to write the predictions (``.npy``).
    horizon: predict: frames to predict (None: ``data.out_len``).
  """
  from msrnn_jax import backend
  # Before anything starts JAX's runtime (msrnn_jax/backend/allocator.py).
  backend.prepare_host(config.get("backend", {}).get("keep_freed_memory", True))
  from msrnn_jax.training import distributed, evaluate, inference, run, train
  try:
    if mode == "train":
      train.train_and_evaluate(config, workdir)
    elif mode == "eval":
      evaluate.evaluate_checkpoint(config, workdir)
    elif mode == "predict":
      if not input_path or not output_path:
        raise ValueError("--mode=predict needs --input=<context.npy> and --output=<pred.npy>.")
      inference.predict_file(config, workdir, input_path, output_path, horizon)
    else:
      raise ValueError(f"--mode={mode} is unknown; use train, eval or predict.")
  except run.Preempted as e:
    return report("stopped", e, EXIT_PREEMPTED)
  except distributed.PeerLost as e:
    return report("error", e, EXIT_PEER_LOST)
  except (ValueError, OSError, FloatingPointError, RuntimeError) as e:
    if (lost := distributed.peer_failure(e)) is not None:
      logging.debug("error details", exc_info=True)
      return report("error", lost, EXIT_PEER_LOST)
    if not isinstance(e, ValueError | OSError | FloatingPointError):
      raise
    # Bad input: one line saying what to do. The traceback is for developers
    # (--verbosity=1).
    logging.debug("error details", exc_info=True)
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  return EXIT_OK


def report(what: str, error: BaseException, status: int) -> int:
  """Prints ``what: <error in one line> (exit status <status>)``; returns ``status``."""
  print(f"{what}: {one_line(error)} (exit status {status})", file=sys.stderr, flush=True)
  return status


def finish(status: int) -> None:
  """Ends the process with ``status``; a failed multi-process run skips JAX's shutdown
  barrier, which would wait for peers that may be gone."""
  import jax
  if status != EXIT_OK and jax.distributed.is_initialized():
    from msrnn_jax.training import distributed
    distributed.exit_now(status)
  sys.exit(status)
