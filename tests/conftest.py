"""Test-wide setup: four simulated CPU devices, set before JAX initialises."""

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
