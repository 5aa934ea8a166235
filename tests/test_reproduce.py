"""experiments/reproduce.py on test-sized settings: outputs, and reruns skip finished runs."""

import importlib.util
import json
import pathlib

import pytest

from configs import test as test_config
from msrnn_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
  spec = importlib.util.spec_from_file_location("reproduce", REPO / "experiments" / "reproduce.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reproduce_runs_writes_and_skips(reproduce, tmp_path, monkeypatch):
  base = test_config.get_config()
  base.train.num_steps = base.train.checkpoint_every_steps = 2
  models = ["blank", "copy_last", "ms_convlstm_noskip", "convlstm"]
  records = [reproduce.run_one(base, m, 0, str(tmp_path)) for m in models]
  rows = reproduce.summarize(records, models, str(tmp_path))
  for m in models:
    record = json.loads((tmp_path / f"{m}_seed0.json").read_text())
    assert record["model"] == m and record["all"]["mse"] > 0
  assert [r["model"] for r in rows] == models
  assert (tmp_path / "summary.csv").read_text().startswith("model,seeds,")
  assert "| ms_convlstm_noskip | 1 |" in (tmp_path / "summary.md").read_text()
  assert (tmp_path / "summary.png").stat().st_size > 1000
  # The no-skip variant really ran with skip='none'.
  assert (tmp_path / "runs" / "ms_convlstm_noskip_seed0" / "test.json").is_file()

  def fail(*args, **kwargs):
    raise AssertionError("finished runs must be skipped")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  again = [reproduce.run_one(base, m, 0, str(tmp_path)) for m in models]
  assert again == records
  # Summaries of what has finished: an unrun model or seed is left out.
  finished = reproduce.finished_records(base, models + ["predrnn"], [0, 1], str(tmp_path))
  assert finished == records
  # A record is rebuilt from the run's evaluation when only that exists.
  (tmp_path / "copy_last_seed0.json").unlink()
  assert reproduce.finished_records(base, ["copy_last"], [0], str(tmp_path)) == records[1:2]
  rows = reproduce.summarize(finished, models + ["predrnn"], str(tmp_path))
  assert [r["model"] for r in rows] == models
  # The blank-frame row: the future MSE of all-zero predictions, and every row's ratio to it.
  blank_row = rows[0]
  assert blank_row["model"] == "blank" and blank_row["mse_future_vs_blank"] == pytest.approx(1.0)
  run = json.loads((tmp_path / "runs" / "convlstm_seed0" / "test.json").read_text())
  assert run["baselines"]["blank"]["future"]["mse"] == pytest.approx(blank_row["mse_future"])
