"""Tests of msrnn_jax.memory: compile-only analysis, the paper's formula, the finder.

Tiny models (hidden 4, 3 layers, 16x16, T=4) so every compile takes a second or two.
"""


import pytest

from msrnn_jax import memory

TINY = dict(hidden=4, num_layers=3, seq_len=4)


def test_analysis_ms_below_plain():
  plain = memory.analyze("convlstm", image_size=16, flops="none", **TINY)
  ms = memory.analyze("ms_convlstm", image_size=16, flops="none", **TINY)
  for r in (plain, ms):
    assert r["total_bytes"] == (r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
                                - r["alias_bytes"])
    assert r["temp_bytes"] > 0 and r["argument_bytes"] > 0
    # The state is donated: the new state aliases the old one.
    assert r["alias_bytes"] >= r["param_bytes"]
    assert r["peak_bytes"] is None  # CPU: no allocator statistics.
  assert plain["params"] == ms["params"] > 0
  assert ms["total_bytes"] < plain["total_bytes"]
  assert ms["temp_bytes"] < plain["temp_bytes"]
  assert ms["paper_out_bytes"] / plain["paper_out_bytes"] == pytest.approx(72 / 96)


def test_flops_multiply_matches_unrolled_program():
  # L = T-1 = 4 recurrent steps (even) and 3 (odd) exercise both remainders.
  for seq_len in (5, 4):
    opts = dict(hidden=4, num_layers=3, seq_len=seq_len, image_size=8)
    rolled = memory.analyze("convlstm", flops="rolled", **opts)
    multiplied = memory.analyze("convlstm", flops="multiply", **opts)
    exact = memory.analyze("convlstm", flops="rolled", scan_unroll=seq_len - 1, **opts)
    assert exact["flops_method"] == "exact"
    assert multiplied["flops"] == pytest.approx(exact["flops"], rel=0.03)
    # The rolled loop's body is counted once: far fewer FLOPs.
    assert rolled["flops"] < 0.6 * exact["flops"]


def test_paper_estimate_hand_values():
  # N=3: M0 = 32*R*3*U*bchw = 96 RUbchw, M1 = 32*R*U*bc*(hw + hw/4 + hw) = 72 RUbchw.
  r, u, b, c, h, w = 20, 6, 1, 64, 64, 64
  unit = r * u * b * c * h * w
  plain3 = memory.paper_estimate(3, False, r, u, b, c, h, w)
  ms3 = memory.paper_estimate(3, True, r, u, b, c, h, w)
  assert plain3["out_bits"] == 96 * unit and ms3["out_bits"] == 72 * unit
  assert 1 - ms3["out_bits"] / plain3["out_bits"] == pytest.approx(0.25)
  # N=6: 192 vs 2*32*(1 + 1/4 + 1/16) = 84 RUbchw: 56.25% less (eq. 8).
  plain6 = memory.paper_estimate(6, False, r, u, b, c, h, w)
  ms6 = memory.paper_estimate(6, True, r, u, b, c, h, w)
  assert plain6["out_units"] == 192 and ms6["out_units"] == pytest.approx(84)
  assert 1 - ms6["out_bits"] / plain6["out_bits"] == pytest.approx(0.5625)
  # Eq. 2 with parameters: M_all = 4 M_par + 2 M_out, bytes.
  est = memory.paper_estimate(6, False, r, u, b, c, h, w, params=1000)
  assert est["par_bytes"] == 4000
  assert est["all_bytes"] == 4 * 4000 + 2 * 192 * unit / 8
  # Eq. 6: 72 <= M1 / RUbchw < 256/3 for every N >= 3.
  for n in range(3, 30):
    units = memory.paper_estimate(n, True, 1, 1, 1, 1, 1, 1)["out_units"]
    assert 72 - 1e-9 <= units < 256 / 3
  assert memory.cell_units("ms_convlstm") == 6 and memory.cell_units("trajgru", links=10) == 15


def test_finder_search_logic_with_fake_costs():
  # Affine-in-pixels costs with a small wobble; the search must find the
  # exact boundary for many budgets, using the hook instead of compiling.
  def fake(name, *, image_size, **kwargs):
    return {"total_bytes": 10_000_000 + 3_000 * image_size ** 2 + 7 * image_size}

  for budget in (2e7, 5e7, 3.3e8, 1e9, 5e10):
    res = memory.find_max_resolution("ms_convlstm", budget, analyze_fn=fake, lo=4,
                                     max_size=8192, **TINY)
    m = res["multiple"]
    best = max(s for s in range(m, 8193, m) if fake("", image_size=s)["total_bytes"] <= budget)
    assert res["size"] == best and not res["hi_fits"]
    assert res["bytes"] <= budget < res["next_bytes"]
    assert res["next_size"] == res["size"] + m
    # Interpolation makes the search short (bisection alone: ~12 + doubling).
    assert len(res["evaluations"]) <= 16
  res = memory.find_max_resolution("ms_convlstm", 1e12, analyze_fn=fake, lo=4, max_size=8192,
                                   **TINY)
  assert res["hi_fits"] and res["size"] == 8192 and res["next_size"] is None


def test_finder_real_compile_on_tiny_budget():
  opts = dict(TINY, remat="step")
  m = memory.analyze("ms_convlstm", image_size=16, flops="none", **opts)["total_bytes"]
  n = memory.analyze("ms_convlstm", image_size=24, flops="none", **opts)["total_bytes"]
  assert m < n
  budget = (m + n) // 2
  res = memory.find_max_resolution("ms_convlstm", budget, lo=8, hi=32, **opts)
  assert res["multiple"] == 2
  assert res["bytes"] <= budget < res["next_bytes"]
  assert res["next_size"] == res["size"] + 2
  assert 16 <= res["size"] < 24
  # The reported sizes are what a direct analysis says.
  again = memory.analyze("ms_convlstm", image_size=res["next_size"], flops="none", **opts)
  assert again["total_bytes"] == res["next_bytes"] > budget


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="parameters.*raise the budget"):
    memory.find_max_resolution("convlstm", budget_bytes=1000, **TINY)
  with pytest.raises(ValueError, match="not a positive multiple of 4.*e.g. 16"):
    memory.analyze("ms_convlstm", image_size=18, hidden=4, num_layers=6, seq_len=4)
  with pytest.raises(ValueError, match="lo=3 is not a positive multiple of 2"):
    memory.find_max_resolution("ms_convlstm", 1e9, lo=3, **TINY)
  with pytest.raises(ValueError, match="Unknown flops method"):
    memory.analyze("convlstm", image_size=8, flops="exact", **TINY)
  with pytest.raises(ValueError, match="seq_len must be >= 2"):
    memory.analyze("convlstm", image_size=8, hidden=4, num_layers=3, seq_len=1)
  with pytest.raises(ValueError, match="even 8x8 needs"):
    tiny_budget = 4 * 4 * memory.param_count("convlstm", **{k: TINY[k] for k in
                                                             ("hidden", "num_layers")}) + 10
    memory.find_max_resolution("convlstm", tiny_budget, lo=8, **TINY)
