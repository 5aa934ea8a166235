"""msrnn_jax.analysis.timing: interleaved rounds and round-by-round ratios."""

import math
import time

import pytest

from msrnn_jax.analysis import timing


def test_interleaved_alternates_warms_up_and_times_each_call():
  order = []

  def call(name, seconds):
    def fn():
      order.append(name)
      time.sleep(seconds)
      return name
    return fn

  wall, cpu = timing.interleaved({"a": call("a", 0.02), "b": call("b", 0.002)}, rounds=3,
                                 warmup=2)
  assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
  assert len(wall["a"]) == len(wall["b"]) == len(cpu["a"]) == 3
  assert min(wall["a"]) >= 0.02 and max(wall["b"]) < 0.02
  assert all(c < w for c, w in zip(cpu["a"], wall["a"], strict=True))  # sleeping uses no CPU


def test_budget_stops_a_slow_call():
  wall, _ = timing.interleaved({"slow": lambda: time.sleep(0.03), "fast": lambda: None},
                               rounds=5, warmup=0, budget_s=0.05)
  assert len(wall["slow"]) == 2 and len(wall["fast"]) == 5


def test_self_timed_calls_report_their_own_seconds_and_rounds_are_reported():
  # A child process's step says how long it took; the pipe round trip is not its time.
  said = iter([0.5, 0.25, 0.125])
  seen = []
  wall, cpu = timing.interleaved({"child": lambda: next(said)}, rounds=2, warmup=1,
                                 self_timed=True,
                                 on_round=lambda r, w: seen.append((r, list(w["child"]))))
  assert wall["child"] == [0.25, 0.125] and all(math.isnan(c) for c in cpu["child"])
  assert seen == [(0, [0.25]), (1, [0.25, 0.125])]


def test_timed_returns_the_result_and_its_seconds():
  result, wall, cpu = timing.timed(lambda: time.sleep(0.02) or "done")
  assert result == "done" and 0.02 <= wall < 1 and 0 <= cpu < wall


def test_ratio_is_round_by_round():
  r = timing.ratio([2.0, 3.0, 10.0], [1.0, 2.0, 4.0])
  assert r["ratios"] == [2.0, 1.5, 2.5]
  assert r["ratio_median"] == 2.0 and (r["ratio_min"], r["ratio_max"]) == (1.5, 2.5)
  assert r["step_s"] == 3.0
  with pytest.raises(ValueError):
    timing.ratio([1.0], [1.0, 2.0])


def test_machine_names_the_cpu():
  m = timing.machine()
  assert m["cpu"] and m["cores"] >= 1 and m["platform"] == "cpu"
