"""Test-wide setup: four simulated CPU devices, set before JAX initialises."""

import contextlib
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()


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


@contextlib.contextmanager
def _without_heavy_passes():
  import jax
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def fast_compiles():
  """XLA's heavier optimisation passes off while a test runs: for tests that compare programs
  with tolerances or check plumbing, not speed (compiles take about half as long)."""
  with _without_heavy_passes():
    yield


@pytest.fixture(scope="module")
def fast_compiles_module():
  """``fast_compiles`` for a whole test file (``pytest.mark.usefixtures``)."""
  with _without_heavy_passes():
    yield
