"""allocator.keep_freed_memory: freed large blocks are reused instead of faulted in again."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from msrnn_jax.backend import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each of three threads (as XLA's are) mallocs a 512 MiB block, writes it and
# frees it; prints the minor page faults of each.
_PROBE = """
import ctypes, resource, sys, threading
from msrnn_jax.backend import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, faults = 512 << 20, []
def use():
  before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
for _ in range(3):
  t = threading.Thread(target=use)
  t.start()
  t.join()
print(kept, faults)
"""
_PAGES = (512 << 20) // 4096


def _probe(mode: str, **env_extra: str) -> tuple[bool, list[int]]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **env_extra)
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout.split(maxsplit=1)
  return out[0] == "True", [int(v) for v in out[1].strip("[]\n").split(",")]


@pytest.mark.skipif(allocator._mallopt() is None, reason="needs glibc on Linux")
def test_keep_freed_memory_reuses_large_blocks_across_threads():
  kept, faults = _probe("keep")
  assert kept
  # The first thread faults its block in; the others get the same pages back.
  assert faults[0] > 0.9 * _PAGES and max(faults[1:]) < 0.01 * _PAGES, faults
  untouched, faults_default = _probe("default")
  assert not untouched
  # Without it, glibc mmaps a block this large and unmaps it on free: every
  # thread faults (and the kernel zero-fills) all of it again.
  assert min(faults_default) > 0.9 * _PAGES, faults_default


@pytest.mark.skipif(allocator._mallopt() is None, reason="needs glibc on Linux")
def test_glibc_tunables_string_has_the_same_effect():
  # What vs_torch.py gives a PyTorch process: set at start-up, no mallopt call.
  _, faults = _probe("default", GLIBC_TUNABLES=allocator.GLIBC_TUNABLES)
  assert faults[0] > 0.9 * _PAGES and max(faults[1:]) < 0.01 * _PAGES, faults


# A training step's shape of memory use: a compiled gradient whose stacked scan
# residuals are one large temporary, run eight times as the training loop runs
# steps in the process msrnn_jax.main restarts (freed memory released after the
# first, and after any that grew the heap). Prints the temporary's bytes, the peak resident growth over the
# process before the first run, and the minor page faults of runs 3-8.
_STEPS = """
import resource, sys
from msrnn_jax.backend import allocator
allocator.restart_with_glibc_tunables()
kept = allocator.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
def loss(w, x):
  h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=24)
  return jnp.sum(h)
w = jnp.asarray(np.random.rand(256, 256) / 16, jnp.float32)
x = jnp.asarray(np.random.rand(4096, 256), jnp.float32)
step = jax.jit(jax.grad(loss)).lower(w, x).compile()
temp = step.memory_analysis().temp_size_in_bytes
base = int(open("/proc/self/statm").read().split()[1]) * 4096
for i in range(8):
  if i == 2:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(w, x).block_until_ready()
  if i == 0:
    allocator.release_freed_memory()
  else:
    allocator.release_if_heap_moved()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
# VmHWM, not ru_maxrss: a child keeps its parent's ru_maxrss across exec.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(kept, temp, peak - base, faults)
"""


@pytest.mark.skipif(allocator._mallopt() is None, reason="needs glibc on Linux")
def test_kept_heap_peaks_at_one_step_of_temporaries_without_faults():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _STEPS], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout.split()
  kept, temp, growth, faults = out[0] == "True", *map(int, out[1:])
  assert kept and temp > 100e6, out
  # One step's worth. Asynchronous dispatch grew it by a step every few steps (5x after
  # eight); with glibc's per-thread cache on, about one run in ten alternated between two
  # blocks from some step on (2x).
  assert growth < 1.3 * temp, (growth / temp, out)
  # From the third run on, runs reuse the pages earlier ones faulted in (without the
  # settings every run faults its whole temporary in again: 6x).
  assert faults < 0.5 * 6 * temp / 4096, (faults, out)


_RESTARTS = """
import os, sys
from msrnn_jax.backend import allocator
print("start", os.getpid(), "jax" in sys.modules, flush=True)
allocator.restart_with_glibc_tunables()
print(os.environ["GLIBC_TUNABLES"], sys.argv[1:], allocator.started_with_glibc_tunables())
"""


@pytest.mark.skipif(allocator._mallopt() is None, reason="needs glibc on Linux")
def test_restart_runs_the_program_again_once_with_the_cache_off_and_the_users_tunables():
  env = dict(os.environ, JAX_PLATFORMS="cpu", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  out = subprocess.run([sys.executable, "-c", _RESTARTS, "a", "--b=c"], cwd=REPO, env=env,
                       check=True, capture_output=True, text=True, timeout=120).stdout
  starts = [line for line in out.splitlines() if line.startswith("start")]
  assert len(starts) == 2 and starts[0] == starts[1], out  # the same process id, twice
  # JAX (2 s to import) loads after the restart, which then costs a fraction of a second.
  assert starts[0].endswith(" False"), out
  assert out.splitlines()[-1] == (
      "glibc.malloc.hugetlb=0:glibc.malloc.tcache_count=0 ['a', '--b=c'] True"), out


def test_started_with_the_cache_off_only_where_the_environment_said_so(monkeypatch):
  monkeypatch.setattr(allocator, "_mallopt", lambda: print)  # as on glibc
  monkeypatch.setattr(allocator, "_STARTED_WITH", "glibc.malloc.hugetlb=0")
  assert not allocator.started_with_glibc_tunables()
  monkeypatch.setattr(allocator, "_STARTED_WITH", "glibc.malloc.tcache_count=0")
  assert allocator.started_with_glibc_tunables()


# The heap moving and coming back, as a step's temporaries (one 256 MiB block,
# written and freed) can: step 1 leaves a long-lived allocation above its
# block, an allocation carved out of that block then makes step 2 take a new
# one beyond the heap's top, and once it is freed step 3 returns to the first.
# Prints whether each release_if_heap_moved released, whether steps 1 and 3
# used the same block and 2 another, and the resident growth in blocks.
_MOVES = """
import ctypes, sys
from msrnn_jax.backend import allocator
assert allocator.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, release = 256 << 20, sys.argv[1] == "release"
def rss():
  return int(open("/proc/self/statm").read().split()[1]) * 4096
def step(during=lambda: None):
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  during()
  libc.free(block)
  return block
base, kept = rss(), []
a = step(lambda: kept.append(libc.malloc(8 << 20)))
allocator.release_freed_memory()
settler = libc.malloc(8 << 20)
b = step()
moved = allocator.release_if_heap_moved() if release else None
libc.free(settler)
c = step()
again = allocator.release_if_heap_moved() if release else None
print(moved, again, a == c and b != a, round((rss() - base) / size, 2))
"""


@pytest.mark.skipif(allocator._mallopt() is None, reason="needs glibc on Linux")
def test_release_if_heap_moved_keeps_one_block_resident_when_steps_change_blocks():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")

  def run(mode):
    return subprocess.run([sys.executable, "-c", _MOVES, mode], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout.split()

  moved, again, returned, growth = run("release")
  assert (moved, again, returned) == ("True", "False", "True")
  assert float(growth) < 1.1, growth
  # Without the release after step 2, its block stays resident beside the first.
  _, _, returned, growth = run("keep")
  assert returned == "True" and float(growth) > 1.9, growth


def test_release_freed_memory_only_where_the_settings_apply(monkeypatch):
  monkeypatch.setitem(allocator._state, "applied", False)
  monkeypatch.setattr(allocator, "_libc", lambda: pytest.fail("malloc_trim called"))
  allocator.release_freed_memory()
  assert allocator.release_if_heap_moved() is False


def test_keep_freed_memory_after_backend_start_changes_nothing(monkeypatch):
  jnp.zeros(2).block_until_ready()  # the test process's backend is running
  monkeypatch.setitem(allocator._state, "applied", False)
  calls = []
  monkeypatch.setattr(allocator, "_mallopt", lambda: lambda *a: calls.append(a) or 1)
  assert allocator.keep_freed_memory() is False
  assert calls == [] and not allocator.applied()


@pytest.mark.parametrize("running, env, warns", [([2, 2, 3, 2, 2], {}, True),
                                                 ([0, 0, 5, 0, 0], {}, False),
                                                 ([2] * 5, {"OMP_NUM_THREADS": "1"}, False)])
def test_busy_cores_warning_names_the_fix_only_when_other_work_shares_the_cores(
    monkeypatch, running, env, warns):
  """Other threads running now, in most samples (one busy sample is not enough)."""
  from msrnn_jax import backend
  from msrnn_jax.backend import native
  monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  counts = iter(running)
  monkeypatch.setattr(native, "_runnable_elsewhere", lambda: next(counts))
  monkeypatch.setattr("os.cpu_count", lambda: 2)
  message = backend.busy_cores_warning(interval_s=0)
  assert (message is not None) == warns
  if warns:
    assert "\n" not in message and "keep 2 of this machine's 2 cores" in message
    assert "OMP_NUM_THREADS=1" in message


def test_runnable_threads_are_read_from_linux():
  from msrnn_jax.backend import native
  if not os.path.exists("/proc/loadavg"):
    pytest.skip("needs Linux /proc")
  assert native._runnable_elsewhere() >= 0


def test_prepare_host_restarts_only_when_asked_to_and_keeping_freed_memory(monkeypatch):
  from msrnn_jax import backend
  calls = []
  monkeypatch.setattr(allocator, "restart_with_glibc_tunables", lambda: calls.append("restart"))
  monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
  assert backend.prepare_host(False, restart_program=True) is False and calls == []
  assert backend.prepare_host(True) and calls == ["keep"]
  calls.clear()
  assert backend.prepare_host(True, restart_program=True) and calls == ["restart", "keep"]
