"""Tests of msrnn_jax.analysis.footprint: compile-only analysis, the paper's formula, the finder.

Tiny models (hidden 4, 3 layers, 16x16, T=4) and few compiles (about eight)
keep the file fast; XLA's heavier optimisation passes are switched off while
it runs (the tests check relations between figures, not their values).
"""

import jax
import pytest

from msrnn_jax import model as model_lib
from msrnn_jax.analysis import footprint

TINY = dict(hidden=4, num_layers=3, seq_len=4)


def _allocator_stats():
  """The device allocator's statistics: a dict on GPU and TPU, None on CPU."""
  return jax.devices()[0].memory_stats()


@pytest.fixture(scope="module")
def tiny_pair():
  """(plain, MS) analyses of the tiny ConvLSTM at 16x16."""
  return (footprint.analyze("convlstm", image_size=16, flops="none", **TINY),
          footprint.analyze("ms_convlstm", image_size=16, flops="none", **TINY))


def test_analysis_ms_below_plain(tiny_pair):
  plain, ms = tiny_pair
  for r in (plain, ms):
    assert r["total_bytes"] == (r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
                                - r["alias_bytes"])
    assert r["temp_bytes"] > 0 and r["argument_bytes"] > 0
    # The state is donated: the new state aliases the old one.
    assert r["alias_bytes"] >= r["param_bytes"]
    assert (r["peak_bytes"] is None) == (_allocator_stats() is None)
  assert plain["params"] == ms["params"] > 0
  assert ms["total_bytes"] < plain["total_bytes"]
  assert ms["temp_bytes"] < plain["temp_bytes"]
  assert ms["paper_out_bytes"] / plain["paper_out_bytes"] == pytest.approx(72 / 96)


def test_flops_multiply_matches_unrolled_program():
  # L = T-1 = 3 recurrent steps: odd, so the scan_unroll=2 program has a
  # remainder step outside its loop.
  opts = dict(hidden=4, num_layers=3, seq_len=4, image_size=8)
  multiplied = footprint.analyze("convlstm", flops="multiply", **opts)
  exact = footprint.analyze("convlstm", flops="rolled", scan_unroll=3, **opts)
  assert exact["flops_method"] == "exact"
  assert multiplied["flops"] == pytest.approx(exact["flops"], rel=0.03)
  # The rolled loop's body alone is counted once: far fewer FLOPs.
  assert multiplied["flops_rolled_raw"] < 0.6 * exact["flops"]


def test_paper_estimate_hand_values():
  # N=3: M0 = 32*R*3*U*bchw = 96 RUbchw, M1 = 32*R*U*bc*(hw + hw/4 + hw) = 72 RUbchw.
  r, u, b, c, h, w = 20, 6, 1, 64, 64, 64
  unit = r * u * b * c * h * w
  plain3 = footprint.paper_estimate(3, False, r, u, b, c, h, w)
  ms3 = footprint.paper_estimate(3, True, r, u, b, c, h, w)
  assert plain3["out_bits"] == 96 * unit and ms3["out_bits"] == 72 * unit
  assert 1 - ms3["out_bits"] / plain3["out_bits"] == pytest.approx(0.25)
  # N=6: 192 vs 2*32*(1 + 1/4 + 1/16) = 84 RUbchw: 56.25% less (eq. 8).
  plain6 = footprint.paper_estimate(6, False, r, u, b, c, h, w)
  ms6 = footprint.paper_estimate(6, True, r, u, b, c, h, w)
  assert plain6["out_units"] == 192 and ms6["out_units"] == pytest.approx(84)
  assert 1 - ms6["out_bits"] / plain6["out_bits"] == pytest.approx(0.5625)
  # Eq. 2 with parameters: M_all = 4 M_par + 2 M_out, bytes.
  est = footprint.paper_estimate(6, False, r, u, b, c, h, w, params=1000)
  assert est["par_bytes"] == 4000
  assert est["all_bytes"] == 4 * 4000 + 2 * 192 * unit / 8
  # Eq. 6: 72 <= M1 / RUbchw < 256/3 for every N >= 3.
  for n in range(3, 30):
    units = footprint.paper_estimate(n, True, 1, 1, 1, 1, 1, 1)["out_units"]
    assert 72 - 1e-9 <= units < 256 / 3
  # U of a cell under a config (what analyze passes as U).
  for name, options, units in (("ms_convlstm", {}, 6), ("trajgru", {"links": 10}, 15)):
    config = model_lib.config_for(name, **options)
    assert config.spec.cell.paper_units(config) == units


def test_finder_search_logic_with_fake_costs():
  # Affine-in-pixels costs with a small wobble; the search must find the
  # exact boundary for many budgets, using the hook instead of compiling.
  def fake(name, *, image_size, **kwargs):
    return {"total_bytes": 10_000_000 + 3_000 * image_size ** 2 + 7 * image_size}

  for budget in (2e7, 5e7, 3.3e8, 1e9, 5e10):
    res = footprint.find_max_resolution("ms_convlstm", budget, analyze_fn=fake, lo=4,
                                     max_size=8192, **TINY)
    m = res["multiple"]
    best = max(s for s in range(m, 8193, m) if fake("", image_size=s)["total_bytes"] <= budget)
    assert res["size"] == best and not res["hi_fits"]
    assert res["bytes"] <= budget < res["next_bytes"]
    assert res["next_size"] == res["size"] + m
    # Interpolation makes the search short (bisection alone: ~12 + doubling).
    assert len(res["evaluations"]) <= 16
  res = footprint.find_max_resolution("ms_convlstm", 1e12, analyze_fn=fake, lo=4, max_size=8192,
                                   **TINY)
  assert res["hi_fits"] and res["size"] == 8192 and res["next_size"] is None


def test_finder_real_compile_on_tiny_budget(tiny_pair):
  ms16 = tiny_pair[1]["total_bytes"]
  budget = int(ms16 * 1.15)
  res = footprint.find_max_resolution("ms_convlstm", budget, lo=16, known={16: ms16}, **TINY)
  assert res["multiple"] == 2
  assert res["size"] >= 16 and res["next_size"] == res["size"] + 2
  assert res["bytes"] <= budget < res["next_bytes"]
  # Every figure came from a real compile (16 was given), at most a handful.
  assert 2 <= len(res["evaluations"]) <= 5
  assert [16, ms16] not in res["evaluations"]


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="parameters.*raise the budget"):
    footprint.find_max_resolution("convlstm", budget_bytes=1000, **TINY)
  with pytest.raises(ValueError, match="not a positive multiple of 4.*e.g. 16"):
    footprint.analyze("ms_convlstm", image_size=18, hidden=4, num_layers=6, seq_len=4)
  with pytest.raises(ValueError, match="lo=3 is not a positive multiple of 2"):
    footprint.find_max_resolution("ms_convlstm", 1e9, lo=3, **TINY)
  with pytest.raises(ValueError, match="Unknown flops method"):
    footprint.analyze("convlstm", image_size=8, flops="exact", **TINY)
  with pytest.raises(ValueError, match="seq_len must be >= 2"):
    footprint.analyze("convlstm", image_size=8, hidden=4, num_layers=3, seq_len=1)
  with pytest.raises(ValueError, match="even 8x8 needs.*remat='step'"):
    footprint.find_max_resolution("convlstm", 1e9, lo=8,
                               analyze_fn=lambda *a, **k: {"total_bytes": 2e9}, **TINY)


def test_peak_path_runs_real_steps():
  # The allocator's peak where the device keeps statistics (GPU, TPU); on CPU there
  # are none, and the path reports None instead of failing.
  r = footprint.analyze("convlstm", image_size=8, flops="none", measure_peak=True, peak_steps=1,
                     hidden=4, num_layers=1, seq_len=3)
  assert r["backend"] == jax.default_backend()
  if _allocator_stats() is None:
    assert r["peak_bytes"] is None
  else:
    assert r["peak_bytes"] >= r["param_bytes"]


def test_bfloat16_halves_the_stored_carries():
  """remat='step' keeps every step's carry: each step more costs half float32's bytes in
  bfloat16 (on XLA:CPU via msrnn_jax.backend.pack, which would otherwise keep float32),
  though the carry passed from step to step is float32."""
  opts = dict(image_size=64, hidden=16, num_layers=6, remat="step", flops="none")

  def per_step(**kw):
    short, long = (footprint.analyze("ms_convlstm", seq_len=t, **opts, **kw)["temp_bytes"]
                   for t in (8, 16))
    return (long - short) / 8

  ratio = per_step(dtype="bfloat16") / per_step()
  assert 0.45 < ratio < 0.55, ratio
