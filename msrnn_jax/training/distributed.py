"""Multi-process runs that end within a bounded time: start-up, config agreement, lost peers.

Every wait between processes is bounded by ``config.distributed.timeout_s``:

* ``initialize`` starts ``jax.distributed`` under a watchdog: a process that
  did not start, died, or cannot reach the coordinator ends every waiting
  process with ``PeerLost`` (one line, exit status 76) instead of JAX's
  5-minute wait and C++ abort. A second process 0 on the same coordinator
  port (a duplicated ``process_id``) is refused before it binds.
* ``check_same_config`` compares the resolved config of every process through
  the coordination service's key-value store before training starts, naming
  the keys that differ (``ConfigMismatch``, exit status 2: a rerun with the
  same commands cannot succeed).
* ``peer_failure`` recognises the runtime errors of a collective whose peer
  vanished (gloo's "connection closed", a coordination-service deadline), so
  that the command line turns them into ``PeerLost``.

A process that ends with an error skips JAX's shutdown barrier (``exit_now``),
which would otherwise wait for the lost peer.
"""

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from flax import traverse_util

# The exit status of a lost or unreachable peer (sysexits.h EX_PROTOCOL: a
# remote error). A rerun can succeed: requeue on it.
EXIT_PEER_LOST = 76
# JAX's heartbeat timeout, in multiples of ``timeout_s``: long compilations
# send no collective, and a missed heartbeat aborts the process.
HEARTBEAT_FACTOR = 3
# How long process 0 outlives a failure (``exit_now``).
_LINGER_S = 2.0
# This process's index once every process has connected.
_started: dict[str, int | None] = {"process_id": None}

# Signatures of a collective or coordination call whose peer is gone.
_PEER_FAILURES = ("gloo", "connection closed", "connection reset", "deadline_exceeded",
                  "unavailable", "coordination service", "heartbeat", "barrier")


class PeerLost(RuntimeError):
  """Another process of the run failed, vanished or cannot be reached; rerun to resume."""


class ConfigMismatch(ValueError):
  """The processes of one run were started with different configs; the message names the keys."""


def _timeout(group: Any) -> int:
  return int(group.get("timeout_s") or 60)


def exit_now(status: int) -> None:
  """Ends the process at once with ``status`` (flushing output), skipping JAX's shutdown
  barrier, which waits for every peer.

  Process 0 hosts the coordination service; it lingers a moment so that the others,
  ending for the same reason, print their own line rather than JAX's abort on losing it.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  # Not jax.process_index(): from the watchdog's thread it would start JAX's backend.
  if _started["process_id"] == 0:
    time.sleep(_LINGER_S)
  os._exit(status)


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
  """Ends the process with ``error: {message}`` and ``EXIT_PEER_LOST`` if the block runs
  longer than ``seconds``: for waits on other processes that JAX cannot interrupt."""
  def expire():
    print(f"error: {message}", file=sys.stderr, flush=True)
    exit_now(EXIT_PEER_LOST)

  timer = threading.Timer(seconds, expire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def finish_within_timeout(error: BaseException | None, group: Any,
                          finish: Callable[[], None]) -> None:
  """Runs ``finish`` (a wait that involves every process, such as completing a checkpoint's
  save); bounded by ``timeout_s`` while a multi-process run is ending with ``error``.

  A lost peer can no longer take part, and JAX would only end the wait by aborting on a
  missed heartbeat; a run that ends normally waits as long as the peers need.
  """
  if error is None or not jax.distributed.is_initialized():
    finish()
    return
  lost = peer_failure(error)
  message = str(lost) if lost is not None else (
      f"{_first(error)}; another process did not finish the last checkpoint within "
      f"distributed.timeout_s={_timeout(group)} s: rerun the same command on every process to "
      "resume from the last complete checkpoint.")
  with deadline(_timeout(group), message):
    finish()


def _check_port_free(address: str) -> None:
  """Process 0 refuses to start when another coordinator already listens on its port."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as probe:
    # Connections of a previous run in TIME_WAIT do not count; a listener does.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("::" if family == socket.AF_INET6 else "", int(port)))
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        return
      raise ConfigMismatch(
          f"port {port} of distributed.coordinator_address={address} is in use: another "
          "process 0 of this run is already running (is distributed.process_id=0 given to two "
          "processes?), or another program holds the port; give each process its own "
          "process_id, or choose another port.") from None


def initialize(group: Any) -> bool:
  """Starts ``jax.distributed`` as ``config.distributed`` asks; call before any JAX call.

  Args:
    group: ``config.distributed``: ``enabled``; ``coordinator_address``
      (``host:port`` of process 0), ``num_processes`` and ``process_id``, each
      None (or empty) to let ``jax.distributed.initialize`` detect it from the
      cluster launcher (SLURM, Open MPI, TPU pods); ``timeout_s``, the bound
      of every wait between processes. A plain bool is read as ``enabled``.

  Returns:
    Whether JAX runs distributed (also when it was initialised before).

  Raises:
    ValueError: the settings are incomplete (one line, with what to set).
    ConfigMismatch: another process 0 holds the coordinator port.
  """
  if isinstance(group, bool):
    group = {"enabled": group}
  if not group.get("enabled", False):
    return False
  if jax.distributed.is_initialized():
    return True
  timeout = _timeout(group)
  kwargs = {k: group.get(k) for k in ("coordinator_address", "num_processes", "process_id")}
  kwargs = {k: v for k, v in kwargs.items() if v not in (None, "")}
  if kwargs.get("process_id") == 0 and kwargs.get("coordinator_address"):
    _check_port_free(kwargs["coordinator_address"])
  where = kwargs.get("coordinator_address", "the detected coordinator")
  lost = (f"the {kwargs.get('num_processes', 'detected')} processes did not all connect to the "
          f"coordinator at {where} within distributed.timeout_s={timeout} s: one did not start, "
          "died, or cannot reach it (or two share a distributed.process_id); start every process "
          f"with the same command and its own process_id, then rerun (exit status "
          f"{EXIT_PEER_LOST}).")
  try:
    # JAX's own limits are longer, so that a line of ours ends the wait: JAX
    # aborts with a C++ stack trace. A peer that dies mid-run closes its gloo
    # connections, which fails the next collective at once (``peer_failure``);
    # the heartbeat is the fallback for a peer that stops without closing them.
    with deadline(timeout, lost):
      jax.distributed.initialize(**kwargs, initialization_timeout=timeout + 30,
                                 heartbeat_timeout_seconds=HEARTBEAT_FACTOR * timeout,
                                 shutdown_timeout_seconds=timeout)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    raise ValueError(
        f"jax.distributed.initialize({args}) failed: {first.rstrip('.')}. Launch under "
        "SLURM/Open MPI, or set distributed.coordinator_address, num_processes and process_id "
        "(docs/running.md).") from None
  # JAX's CPU backend exchanges the device topology with every process: also a wait.
  with deadline(timeout, lost):
    _started["process_id"] = jax.process_index()
  return True


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = traverse_util.flatten_dict(config.to_dict(), sep=".")
  out.pop("distributed.process_id", None)  # the one key that differs by design
  return json.loads(json.dumps(out, sort_keys=True, default=str))


def check_same_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigMismatch`` on every process unless all run the same config.

  Each process publishes its resolved config in the coordination service's
  key-value store; every process compares its own with process 0's, and
  process 0 with each other's, so all of them stop. Waits at most
  ``distributed.timeout_s``.
  """
  if jax.process_count() == 1:
    return
  # The coordination service client of jax.distributed (also what
  # jax.experimental.multihost_utils uses).
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  timeout_ms = _timeout(config.distributed) * 1000
  mine = _flat(config)
  me = jax.process_index()
  client.key_value_set(f"msrnn_jax/config/{me}", json.dumps(mine))
  others = [0] if me else list(range(1, jax.process_count()))
  mismatch = None
  try:
    for other in others:
      theirs = json.loads(client.blocking_key_value_get(f"msrnn_jax/config/{other}", timeout_ms))
      diffs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
      if diffs and mismatch is None:
        (a, first), (b, second) = sorted([(other, theirs), (me, mine)], key=lambda x: x[0])
        listed = "; ".join(f"{k}={first.get(k)!r} on process {a}, {second.get(k)!r} on "
                           f"process {b}" for k in diffs[:8])
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        mismatch = ConfigMismatch(
            f"the processes of this run have different configs: {listed}{more}. Start every "
            "process with the same config and flags (only distributed.process_id differs).")
    # Nobody leaves before every process has compared (process 0 hosts the service).
    client.wait_at_barrier("msrnn_jax/config_compared", timeout_ms)
  except jax.errors.JaxRuntimeError as e:
    raise PeerLost(f"a process did not exchange its config within distributed.timeout_s="
                   f"{_timeout(config.distributed)} s ({_first(e)}); check that every process "
                   "is running, then rerun.") from None
  if mismatch is not None:
    raise mismatch


def _first(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else type(error).__name__


def peer_failure(error: BaseException) -> PeerLost | None:
  """``PeerLost`` for a runtime error of a multi-process run whose peer is gone, else None."""
  if not jax.distributed.is_initialized() or isinstance(error, PeerLost | ConfigMismatch):
    return error if isinstance(error, PeerLost) else None
  if not isinstance(error, RuntimeError | ValueError):
    return None
  text = str(error).lower()
  if not any(s in text for s in _PEER_FAILURES):
    return None
  return PeerLost(f"another process of this run failed or cannot be reached ({_first(error)}); "
                  "see its log, then rerun the same command on every process to resume from "
                  "the last checkpoint.")
