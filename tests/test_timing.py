"""msrnn_jax.analysis.timing: interleaved rounds and round-by-round ratios."""

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
