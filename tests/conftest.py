"""Test-wide setup: four simulated CPU devices, quicker compiles and a shared compilation
cache, set before JAX initialises."""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=4"
# XLA:CPU's MLIR fusion emitters spend most of a small program's compile building each fused
# kernel's MLIR context and rewrite patterns (a profile of the compile): with the
# older LLVM emitters a small model's gradient compiles in a third of the time (4.5 s against
# 13 s for a 3-layer MS-CMS-LSTM step in bfloat16). The tests that check compiled programs
# compare them with counterfactuals compiled the same way.
if "xla_cpu_use_fusion_emitters" not in _flags:
  _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()

# Compiling is most of the suite's time, and XLA's heavier optimisation passes take about
# half of it: they are off in every test process (the CLI tests' subprocesses inherit it),
# whose tests check values, gradients and plumbing. Files about the compiled program itself
# (its kernels, its memory) turn them back on with the ``full_compiles_module`` fixture.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Many tests compile the same small programs (a tiny model's step, in several files and in
# the subprocesses of the CLI tests): JAX's persistent cache, one folder for this run, lets
# every process after the first load them. The first process to import this file (the
# xdist controller, or pytest alone) makes the folder; the workers and subprocesses
# inherit it through the environment, and the maker deletes it at the end.
_CACHE_MADE_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_MADE_HERE = tempfile.mkdtemp(prefix="msrnn_jax_tests_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_MADE_HERE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
  if _CACHE_MADE_HERE:
    shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """One straight 4-step run of configs/test.py (checkpoints at 2 and 4), shared read-only.

  Tests that change a workdir copy it first (shutil.copytree).
  """
  from configs import test as test_config
  from msrnn_jax.training import train
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  train.train_and_evaluate(test_config.get_config(), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def full_compiles_module():
  """XLA's full optimisation pipeline for a whole test file (``pytest.mark.usefixtures``):
  for tests of the compiled program itself, as users compile it."""
  import jax
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)
