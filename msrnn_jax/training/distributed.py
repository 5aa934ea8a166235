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
* A liveness watch (a thread started by ``initialize``) finds a peer that
  stops answering without closing its connections (a stopped or hung host, or
  one that dies while the others wait in a barrier of the coordination
  service): each process counts up its own key in the key-value store several
  times per ``timeout_s`` and reads everyone's; a count that stands still for
  ``timeout_s``, or a store that does not answer, ends the process with
  ``PeerLost``'s line. JAX's own heartbeat, which would abort with a C++ stack
  trace, is set ten times longer.

A process that ends with an error skips JAX's shutdown barrier (``exit_now``),
which would otherwise wait for the lost peer.
"""

import atexit
import contextlib
import errno
import functools
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
# JAX's own heartbeat and shutdown-barrier timeouts, in multiples of
# ``timeout_s``. Both abort with a C++ stack trace, so they are fallbacks well
# beyond the liveness watch's finding (at most 1.2 x ``timeout_s``) and process
# 0's linger after it (with 3 x, JAX's heartbeat aborted process 0 in 1 of 7
# tests while it lingered). The shutdown barrier is also how long a process that
# ended normally waits for a slower one (its watch still runs meanwhile).
JAX_TIMEOUT_FACTOR = 10
# How often each process proves that it is alive, per ``timeout_s``.
BEATS_PER_TIMEOUT = 5
# How long process 0 outlives a failure (``exit_now``).
_LINGER_S = 2.0
# This process's index once every process has connected.
_started: dict[str, int | None] = {"process_id": None}
# Key-value store directory of the liveness watch: ``alive/<process>`` (a count),
# ``lost/<process>`` (why it gave up).
_LIVENESS = "msrnn_jax/liveness/"
# Held by the thread that ends the process, so that a second finding prints no second line.
_ending = threading.Lock()

# Signatures of a collective or coordination call whose peer is gone.
_PEER_FAILURES = ("gloo", "connection closed", "connection reset", "deadline_exceeded",
                  "unavailable", "coordination service", "heartbeat", "barrier")


class PeerLost(RuntimeError):
  """Another process of the run failed, vanished or cannot be reached; rerun to resume."""


class ConfigMismatch(ValueError):
  """The processes of one run were started with different configs; the message names the keys."""


def _timeout(group: Any) -> int:
  return int(group.get("timeout_s") or 60)


def exit_now(status: int, linger_s: float = _LINGER_S) -> None:
  """Ends the process at once with ``status`` (flushing output), skipping JAX's shutdown
  barrier, which waits for every peer.

  Process 0 hosts the coordination service; it lingers ``linger_s`` so that the others,
  ending for the same reason, print their own line rather than JAX's abort on losing it.
  """
  _ending.acquire(blocking=False)
  sys.stdout.flush()
  sys.stderr.flush()
  # Not jax.process_index(): from the watchdog's thread it would start JAX's backend.
  if _started["process_id"] == 0:
    time.sleep(linger_s)
  os._exit(status)


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
  """Ends the process with ``error: {message}`` and ``EXIT_PEER_LOST`` if the block runs
  longer than ``seconds``: for waits on other processes that JAX cannot interrupt."""
  def expire():
    if _ending.acquire(blocking=False):
      print(f"error: {message}", file=sys.stderr, flush=True)
      exit_now(EXIT_PEER_LOST)

  with _unless_done_within(seconds, expire):
    yield


@contextlib.contextmanager
def _unless_done_within(seconds: float, expire: Callable[[], None]) -> Iterator[None]:
  """Calls ``expire`` from another thread if the block runs longer than ``seconds``."""
  timer = threading.Timer(seconds, expire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def _client() -> Any:
  """The coordination service client of jax.distributed (also what
  jax.experimental.multihost_utils uses); None before it starts and after it shuts down."""
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


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
    # the liveness watch finds one that stops without closing them.
    with deadline(timeout, lost):
      jax.distributed.initialize(**kwargs, initialization_timeout=timeout + 30,
                                 heartbeat_timeout_seconds=JAX_TIMEOUT_FACTOR * timeout,
                                 shutdown_timeout_seconds=JAX_TIMEOUT_FACTOR * timeout)
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
  if jax.process_count() > 1:
    _LivenessWatch(_client(), jax.process_index(), jax.process_count(), timeout).start()
  return True


class _LivenessWatch:
  """Ends this process with one line and ``EXIT_PEER_LOST`` when another process stops
  answering: its count in the key-value store stands still for ``limit_s``, or the store
  (process 0) does not answer within ``limit_s``.

  Each process counts up its own key ``BEATS_PER_TIMEOUT`` times per ``limit_s`` from a
  thread of its own (compiling and running steps leave it free to run) and reads all
  counts in the same call, so every survivor finds the lost peer by itself. The first to
  find it also records why, which ends the others at their next beat. The watch goes on
  through JAX's shutdown barrier at exit, where a process that ended first waits for the
  others, so it still beats there; from then on (``leave``) it no longer gives up on the
  store, which ends with the run.
  """

  def __init__(self, client: Any, process_id: int, num_processes: int, limit_s: float):
    self._client = client
    self._limit = float(limit_s)
    self._me = process_id
    self._count = num_processes
    self._leaving = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="msrnn_jax-liveness", daemon=True)

  def start(self) -> None:
    self._thread.start()
    # Before JAX's own exit handler (registered earlier, so run later), which waits for
    # every process at its shutdown barrier.
    atexit.register(self.leave)

  def leave(self) -> None:
    """This process ends normally: the store going away is no longer a failure."""
    self._leaving.set()

  def _give_up(self, reason: str, record: bool = True) -> None:
    """Prints why, records it for the others (``record``), and ends the process (unless
    another thread is already ending it)."""
    if not _ending.acquire(blocking=False):
      return
    if record:
      with contextlib.suppress(jax.errors.JaxRuntimeError):
        self._client.key_value_set(f"{_LIVENESS}lost/{self._me}", reason, allow_overwrite=True)
    print(f"error: {_lost_peer_message(reason)}", file=sys.stderr, flush=True)
    # Process 0 keeps the store up until the others have read the reason at their beat.
    exit_now(EXIT_PEER_LOST, linger_s=2 * self._limit / BEATS_PER_TIMEOUT + _LINGER_S)

  def _store_failed(self, reason: str) -> None:
    if not self._leaving.is_set():
      self._give_up(f"process 0's coordination service {reason}", record=False)

  def _beat(self) -> dict[str, str]:
    """Counts up this process's key; returns the liveness directory."""
    unanswered = functools.partial(
        self._store_failed, f"did not answer within distributed.timeout_s={self._limit:g} s: "
        "process 0 stopped, hung or cannot be reached")
    with _unless_done_within(self._limit, unanswered):
      self._client.key_value_increment(f"{_LIVENESS}alive/{self._me}", 1)
      return dict(self._client.key_value_dir_get(_LIVENESS))

  def _watch(self) -> None:
    changed: dict[int, tuple[str | None, float]] = {}  # process -> (count, when it changed)
    while True:
      time.sleep(self._limit / BEATS_PER_TIMEOUT)
      # Until jax.distributed.shutdown() (at exit, or called by the program).
      if _client() is not self._client:
        return
      try:
        keys = self._beat()
      except jax.errors.JaxRuntimeError as e:
        time.sleep(0.5)
        if _client() is self._client:
          self._store_failed(f"failed: {_first(e)}")
        return
      now = time.monotonic()
      for key, reason in keys.items():
        if key.startswith(f"{_LIVENESS}lost/"):
          self._give_up(f"found by process {key.rpartition('/')[2]}: {reason}", record=False)
          return
      for other in range(self._count):
        if other == self._me:
          continue
        count = keys.get(f"{_LIVENESS}alive/{other}")
        if other not in changed or changed[other][0] != count:
          changed[other] = (count, now)
        elif now - changed[other][1] > self._limit:
          self._give_up(f"process {other} has not answered within distributed.timeout_s="
                        f"{self._limit:g} s: it stopped, hung or died")
          return


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
  client = _client()
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
  return PeerLost(_lost_peer_message(_first(error)))


def _lost_peer_message(reason: str) -> str:
  """The one line that ends a process whose peer is lost, with ``reason`` in brackets."""
  return (f"another process of this run failed or cannot be reached ({reason}); see its log, "
          "then rerun the same command on every process to resume from the last checkpoint.")
