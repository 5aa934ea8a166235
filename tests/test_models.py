"""Model library: registry, shapes, parameter counts, cell equations, remat, gradients, errors."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrnn_jax import backend
from msrnn_jax import model as models
from msrnn_jax.model import cells, predictor
from msrnn_jax.model.config import ModelConfig
from msrnn_jax.model.layers import Conv

RNG = np.random.default_rng(1)
BASES = tuple(cells.FAMILIES)
# Family options that keep the tests that loop over families small (each model takes only its own).
SMALL = {"links": 2, "ce_iters": 2, "attention_window": 4}


def _frames(b=2, t=4, h=16, w=16, c=1, seed=0):
  return jax.random.uniform(jax.random.key(seed), (b, t, h, w, c))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), x.dtype), tree)


@pytest.mark.parametrize("base", BASES)
def test_shapes_and_ms_params_equal_plain(base):
  """Output and carry shapes; MS-X has exactly X's parameter tree."""
  # Not square, where the family allows (CMS-LSTM's MS pyramid needs multiples of 16).
  w = 16 + max(8, models.create(f"ms_{base}").config.size_multiple())
  x = _frames(b=2, t=5, h=16, w=w)
  trees = {}
  for name in (base, f"ms_{base}"):
    model = models.create(name, hidden=8, num_layers=6, in_len=3, **SMALL)
    # init runs the forward pass: one trace gives the outputs and the parameters.
    (preds, aux), variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    assert preds.shape == (2, 4, 16, w, 1) and preds.dtype == jnp.float32
    states, m, prev = aux["carry"]
    init_states, init_m, _ = model.initial_carry(2, 16, w)
    assert _shapes(states) == _shapes(init_states)
    assert prev.shape == (2, 16, w, 1)
    levels = model.config.pyramid_levels()
    for l, state in enumerate(states):
      assert state[0].shape == (2, 16 >> levels[l], w >> levels[l], 8)
    if cells.FAMILIES[base].cell.zigzag_m:
      assert m.shape == init_m.shape == (2, 16 >> levels[-1], w >> levels[-1], 8)
    else:
      assert m is None
    trees[name] = _shapes(variables)
  assert trees[base] == trees[f"ms_{base}"]


def test_ms_levels_and_motion_states():
  model = models.create("ms_motionrnn", hidden=8)
  assert model.config.pyramid_levels() == (0, 1, 2, 2, 1, 0)
  states, _, _ = model.initial_carry(1, 64, 64)
  # F/D maps at half each layer's resolution: 32, 16, 8, 8, 16, 32, 18 channels.
  assert [s[4].shape[1] for s in states] == [32, 16, 8, 8, 16, 32]
  assert states[0][5].shape[-1] == 18


@pytest.mark.parametrize("name,expected", [
    ("convlstm", 1_772_737),
    ("predrnn", 3_594_817),
    ("predrnn_pp", 4_869_953),  # reference 5,608,513 minus its 5 unused GHU pairs
    ("mim", 7_361_473),
    ("motionrnn", 7_560_547),  # the modules the reference's models/motionrnn.py builds
    ("trajgru", 2_157_661),  # L = 13
    ("cms_lstm", 4_483_393),
    ("modernn", 5_854_657),
    ("preciplstm", 7_041_217),
    ("mk_lstm", 7_576_897),
])
def test_parameter_counts_at_paper_setting(name, expected):
  """The plain stack's count; MS-X has X's parameter tree (test_shapes_and_ms_params_equal_plain)."""
  model = models.create(name, hidden=64, num_layers=6, kernel_size=3, channels=1, links=13)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 64, 64, 1)))
  assert _count(variables) == expected


def test_ms_lstm_is_ms_mk_lstm():
  """The authors' name for the mirror pyramid over MK-LSTM cells."""
  assert models.create("ms_lstm").config == models.create("ms_mk_lstm").config
  assert models.is_model_name("ms_lstm") and "ms_lstm" not in models.MODEL_NAMES
  assert len(models.MODEL_NAMES) == 22
  with pytest.raises(ValueError, match="ms_lstm"):
    models.create("ms_lsmt")


def test_trajgru_links_change_count():
  model = models.create("trajgru", links=10)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 32, 32, 1)))
  assert _count(variables) == 1_915_705


# ----- single steps against numpy ------------------------------------------------------------


def _np_conv(x, k, b):
  """'same' 2-D convolution (cross-correlation like PyTorch), NHWC/HWIO, in numpy."""
  kh, kw = k.shape[:2]
  ph, pw = kh // 2, kw // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (k.shape[3],), np.float64)
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + w], k[i, j])
  return out + b


def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_params(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("impl", ["xla", "matmul"])
def test_convlstm_step_matches_numpy(impl):
  hd = 4
  cell = cells.ConvLSTMCell(config=ModelConfig(hidden=hd, conv_impl=impl))
  x, h, c = (np.asarray(RNG.normal(size=(2, 5, 6, hd)), np.float32) for _ in range(3))
  variables = cell.init(jax.random.key(0), x, (h, c))
  h1, (h2, c1), _, _ = cell.apply(variables, x, (h, c))
  p = _np_params(variables["params"])
  gates = _np_conv(x, p["conv_x"]["kernel"], p["conv_x"]["bias"]) + _np_conv(
      h, p["conv_h"]["kernel"], p["conv_h"]["bias"])
  i, f, g, o = np.split(gates, 4, axis=-1)
  c_ref = _sig(f) * c + _sig(i) * np.tanh(g)
  h_ref = _sig(o) * np.tanh(c_ref)
  np.testing.assert_allclose(c1, c_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(h1, h2)


def test_stlstm_step_matches_numpy():
  hd = 4
  cell = cells.STLSTMCell(config=ModelConfig(family="predrnn", hidden=hd, conv_impl="matmul"))
  x, h, c, m = (np.asarray(RNG.normal(size=(2, 5, 6, hd)), np.float32) for _ in range(4))
  variables = cell.init(jax.random.key(0), x, (h, c), m)
  h1, (_, c1), m1, extras = cell.apply(variables, x, (h, c), m)
  p = _np_params(variables["params"])

  def conv(name, v):
    return _np_conv(v, p[name]["kernel"], p[name]["bias"])

  i, f, g, o = np.split(conv("conv_x", x) + conv("conv_h", h), 4, axis=-1)
  c_ref = _sig(f) * c + _sig(i) * np.tanh(g)
  im, fm, gm = np.split(conv("conv_xm", x) + conv("conv_mm", m), 3, axis=-1)
  m_ref = _sig(fm) * m + _sig(im) * np.tanh(gm)
  o = _sig(o + conv("conv_co", c_ref) + conv("conv_mo", m_ref))
  last = np.einsum("nhwc,cd->nhwd", np.concatenate([c_ref, m_ref], -1),
                   p["conv_last"]["kernel"][0, 0]) + p["conv_last"]["bias"]
  h_ref = o * np.tanh(last)
  # PredRNN-V2's increments of C and M, which the cell hands its decoupling loss.
  delta_c, delta_m = (np.asarray(v) for v in extras["increments"])
  for got, want in ((c1, c_ref), (m1, m_ref), (h1, h_ref),
                    (delta_c, _sig(i) * np.tanh(g)), (delta_m, _sig(im) * np.tanh(gm))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_init_bounds():
  cell = cells.ConvLSTMCell(config=ModelConfig(hidden=16))
  x = np.zeros((1, 4, 4, 16), np.float32)
  p = cell.init(jax.random.key(0), x, (x, x))["params"]["conv_x"]
  bound = 1.0 / np.sqrt(16 * 9)
  for a in (p["kernel"], p["bias"]):
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.9 * bound  # uniform over the whole range
  flax_p = cells.ConvLSTMCell(config=ModelConfig(hidden=16, initializer="flax")).init(
      jax.random.key(0), x, (x, x))["params"]["conv_x"]
  assert not np.any(flax_p["bias"])


# ----- whole-model behaviour -------------------------------------------------------------------


def _loss_fn(model, x, mask):
  def loss(params):
    preds, aux = model.apply({"params": params}, x, mask)
    return jnp.mean((preds - x[:, 1:]) ** 2) + jnp.mean(jnp.abs(preds)) + 0.01 * aux["decouple_loss"]
  return loss


def test_remat_modes_same_loss_grads_and_tree():
  x = _frames(b=2, t=4, h=8, w=8)
  mask = jnp.asarray(RNG.uniform(size=(2, 3)) > 0.5, jnp.float32)
  results = {}
  for remat in ("none", "step", "cell"):
    model = models.create("ms_mim", hidden=4, num_layers=3, in_len=2, remat=remat)
    params = model.init(jax.random.key(0), x)["params"]
    results[remat] = (params,) + jax.jit(jax.value_and_grad(_loss_fn(model, x, mask)))(params)
  p0, l0, g0 = results["none"]
  for remat in ("step", "cell"):
    p, l, g = results[remat]
    assert jax.tree.structure(p) == jax.tree.structure(p0)
    np.testing.assert_allclose(l, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g0)


@functools.cache
def _small_ms_gradients(base, dtype="float32", remat="none"):
  """Loss and parameter gradients of a small MS model of a family (computed once per family
  and setting, for the tests below)."""
  x = _frames(b=2, t=4, h=8, w=8)
  # Half the future steps fed their truth: gradients reach both kinds of input.
  mask = jnp.full((2, 3), 0.5)
  model = models.create(f"ms_{base}", hidden=4, num_layers=3, in_len=2, **SMALL)
  params = model.init(jax.random.key(0), x)["params"]
  model = model.replace(dtype=dtype, remat=remat)
  loss, grads = jax.jit(jax.value_and_grad(_loss_fn(model, x, mask)))(params)
  return float(loss), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("base", ["cms_lstm", "modernn", "preciplstm", "mk_lstm"])
def test_later_families_in_bfloat16_with_stored_carries(base):
  """The authors' later cells in the pyramid, bfloat16 compute with remat='step' (the
  low-precision loop that stores each step's carry rounded): loss and gradients within
  bfloat16's rounding of float32 without remat. (The remat modes themselves are
  cell-agnostic: test_remat_modes_same_loss_grads_and_tree.)"""
  def flat(grads):
    return np.concatenate([g.ravel() for g in jax.tree.leaves(grads)])

  l32, g32 = _small_ms_gradients(base)
  l16, g16 = _small_ms_gradients(base, "bfloat16", "step")
  assert abs(l16 / l32 - 1) < 2e-2
  rel = float(np.linalg.norm(flat(g16) - flat(g32)) / np.linalg.norm(flat(g32)))
  assert 0 < rel < 5e-2, rel


# Parameters that are unused by design (documented in the cell docstrings).
def _unused(base, path, num_layers):
  if base in ("mim", "motionrnn") and "layer_0" in path and any(
      f"'{n}'" in path for n in ("n_x", "n_h", "n_ox", "n_on", "s_x", "s_c", "s_o")):
    return True
  return base == "motionrnn" and f"layer_{num_layers - 1}" in path and "'motion_" in path


@pytest.mark.parametrize("base", BASES)
def test_every_parameter_gets_gradient(base):
  """Every parameter of every family gets a finite, non-zero gradient, except those
  documented as unused, whose gradient is exactly zero."""
  _, grads = _small_ms_gradients(base)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    key = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), key
    if _unused(base, key, 3):
      assert not np.any(g), f"{key} documented as unused but has a gradient"
    else:
      assert np.any(g), f"{key} got no gradient"


def test_not_retraced_on_second_call():
  model = models.create("ms_convlstm", hidden=4, num_layers=3, in_len=2)
  x = _frames(b=1, t=3, h=8, w=8)
  params = model.init(jax.random.key(0), x)["params"]
  traces = []

  @jax.jit
  def fwd(p, x):
    traces.append(1)
    return model.apply({"params": p}, x)[0]

  a = fwd(params, x)
  b = fwd(params, x + 0.5)
  assert len(traces) == 1
  assert not np.allclose(a, b)


def test_scheduled_sampling_and_causality():
  model = models.create("ms_predrnn", hidden=4, num_layers=3, in_len=2)
  x = _frames(b=1, t=5, h=8, w=8)
  params = model.init(jax.random.key(0), x)
  truth_fed, _ = model.apply(params, x, jnp.ones((1, 4)))
  own_fed, _ = model.apply(params, x)  # evaluation: predictions fed back after in_len
  forced, _ = model.apply(params, x, jnp.zeros((1, 4)))  # input phase forced to truth
  np.testing.assert_allclose(own_fed, forced, rtol=1e-6)
  # Steps 0..in_len-1 see the same inputs; afterwards the inputs differ.
  np.testing.assert_allclose(truth_fed[:, :2], own_fed[:, :2], rtol=1e-6)
  assert not np.allclose(truth_fed[:, 2:], own_fed[:, 2:])
  # Causality: the prediction of frame t+1 does not depend on frames > t.
  x2 = x.at[:, 3:].set(0.0)
  changed, _ = model.apply(params, x2, jnp.ones((1, 4)))
  np.testing.assert_allclose(changed[:, :3], truth_fed[:, :3], rtol=1e-6)


def test_predict_any_horizon_equals_manual_rollout():
  model = models.create("convlstm", hidden=4, num_layers=2, in_len=3)
  x = _frames(b=2, t=6, h=8, w=8)
  variables = model.init(jax.random.key(0), x)
  out = models.predict(model, variables, x[:, :3], horizon=7)
  assert out.shape == (2, 7, 8, 8, 1)
  preds, _ = model.apply(variables, x)  # in_len 3, 3 future steps fed back
  np.testing.assert_allclose(out[:, :3], preds[:, 2:], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  x = _frames(b=1, t=3, h=8, w=8)
  m32 = models.create("ms_convlstm", hidden=8, num_layers=3, in_len=2)
  m16 = models.create("ms_convlstm", hidden=8, num_layers=3, in_len=2, dtype="bfloat16")
  params = m16.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  y16, _ = m16.apply(params, x)
  y32, _ = m32.apply(params, x)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=5e-2)


def test_auto_unroll_unrolls_the_time_loop_of_listed_variants_at_large_frames():
  """scan_unroll='auto' (the default) is fully unrolled from one MiB per
  frame-sized float32 state map (the paper's shape) and rolled below (the CPU
  demo), without remat, for the variants (pyramid or not, compute dtype) that
  the family lists; explicit factors are clipped to the trip count, and the
  config files' text form is a number."""
  paper = models.config_for("predrnn", hidden=64)
  assert paper.scan_unroll == "auto"
  assert paper.time_unroll((1, 19, 64, 64, 1)) == 19  # exactly 1 MiB
  assert paper.time_unroll((1, 19, 64, 32, 1)) == 1
  assert models.config_for("predrnn", remat="step").time_unroll((2, 19, 64, 64, 1)) == 1
  # The variant key: 'ms_' for a pyramid, then the compute dtype.
  for name, dtype, unrolled in (("predrnn", "bfloat16", True), ("ms_predrnn", "float32", True),
                                ("ms_predrnn", "bfloat16", False),
                                ("ms_predrnn_v2", "bfloat16", True),
                                ("convlstm", "float32", True), ("convlstm", "bfloat16", True),
                                ("ms_convlstm", "bfloat16", True), ("ms_mim", "bfloat16", True),
                                ("trajgru", "float32", False), ("trajgru", "bfloat16", False),
                                ("ms_motionrnn", "float32", False),
                                ("ms_motionrnn", "bfloat16", False)):
    cfg = models.config_for(name, hidden=64, dtype=dtype)
    assert (f"{'ms_' if name.startswith('ms_') else ''}{dtype}" in cfg.spec.unroll) == unrolled
    assert cfg.time_unroll((2, 19, 64, 64, 1)) == (19 if unrolled else 1), (name, dtype)
  # The CPU demo's shape (8 x 32x32 x 16 channels) stays rolled.
  assert models.config_for("ms_convlstm", hidden=16, dtype="bfloat16").time_unroll(
      (8, 4, 32, 32, 1)) == 1
  assert models.config_for("convlstm", scan_unroll=40).time_unroll((1, 19, 8, 8, 1)) == 19
  assert models.config_for("convlstm", scan_unroll="3").scan_unroll == 3
  with pytest.raises(ValueError, match="scan_unroll='fast': must be an integer >= 1 or 'auto'"):
    models.config_for("convlstm", scan_unroll="fast")

  # The traced loop carries the factor (abstract shapes: nothing runs).
  model = models.create("predrnn", hidden=64, num_layers=2, in_len=2)
  frames = jax.ShapeDtypeStruct((1, 4, 64, 64, 1), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), frames)["params"]
  jaxpr = str(jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(params, frames))
  assert re.findall(r"unroll=(\d+)", jaxpr) == ["3"]


def test_unrolled_loop_same_loss_and_grads_as_rolled():
  x = _frames(b=2, t=5, h=8, w=8)
  mask = jnp.asarray(RNG.uniform(size=(2, 4)) > 0.5, jnp.float32)
  rolled = models.create("ms_predrnn_v2", hidden=4, num_layers=3, in_len=2, scan_unroll=1)
  params = rolled.init(jax.random.key(0), x)["params"]
  l1, g1 = jax.jit(jax.value_and_grad(_loss_fn(rolled, x, mask)))(params)
  unrolled = rolled.replace(scan_unroll=4)
  l4, g4 = jax.jit(jax.value_and_grad(_loss_fn(unrolled, x, mask)))(params)
  np.testing.assert_allclose(l4, l1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g4, g1)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="name='convlstmm': use one of convlstm, ms_convlstm"):
    models.create("convlstmm")
  with pytest.raises(ValueError, match="hiden=4: no such model option"):
    models.create("convlstm", hiden=4)
  with pytest.raises(ValueError, match="hidden=0: must be an integer >= 1"):
    models.ModelConfig(hidden=0)
  with pytest.raises(ValueError, match="links=3: convlstm has no such option"):
    models.ModelConfig(options=(("links", 3),))
  with pytest.raises(ValueError, match=r"levels=\(0, 1\): give one non-negative level per layer"):
    models.create("convlstm", num_layers=3, levels=(0, 1))
  ms = models.create("ms_convlstm", hidden=4)
  with pytest.raises(ValueError, match="height 30 is not a multiple of 4"):
    ms.init(jax.random.key(0), jnp.zeros((1, 3, 30, 32, 1)))
  motion = models.create("ms_motionrnn", hidden=4)
  with pytest.raises(ValueError, match="width 36 is not a multiple of 8"):
    motion.init(jax.random.key(0), jnp.zeros((1, 3, 32, 36, 1)))
  with pytest.raises(ValueError, match="3 channels but the model expects 1"):
    ms.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"\[batch, time, height, width, channels\]"):
    ms.init(jax.random.key(0), jnp.zeros((3, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"remat='layer': use one of \('none', 'step', 'cell'\)"):
    models.create("convlstm", remat="layer")


@pytest.mark.parametrize("base", BASES)
def test_plain_stack_is_sequential_composition_of_cells(base):
  """A plain model is the reference's plain stack: each layer reads only the layer below.

  Rebuilt here step by step from the cell modules on the model's own parameters, with
  no skip terms, and compared with the scanned model (context fed, then its own
  predictions).
  """
  hd, nl, in_len = 4, 3, 2
  model = models.create(base, hidden=hd, num_layers=nl, in_len=in_len, **SMALL)
  x = _frames(b=2, t=4, h=8, w=8)  # two context steps, then one fed its own prediction
  (preds, _), variables = model.init_with_output(jax.random.key(3), x)
  p = variables["params"]["step"]
  cell_cls = cells.FAMILIES[base].cell

  def conv1x1(name, features, in_features, v):
    conv = Conv(features, in_features=in_features, kernel_size=1)
    return conv.apply({"params": p[name]}, v)

  states, m, prev = model.initial_carry(2, 8, 8)
  states = list(states)
  expected = []
  for t in range(x.shape[1] - 1):
    frame = x[:, t] if t < in_len else prev
    inp = conv1x1("embed", hd, 1, frame)
    old = list(states)
    for l in range(nl):
      layer = cell_cls(config=model.config, layer=l)
      diag = old[l - 1][0] if (cell_cls.uses_diagonal and l > 0) else None
      inp, states[l], m, _ = layer.apply({"params": p[f"layer_{l}"]}, inp, old[l], m, diag)
    prev = conv1x1("head", 1, hd, inp)
    expected.append(prev)
  np.testing.assert_allclose(preds, jnp.stack(expected, axis=1), rtol=1e-5, atol=1e-6)
  # And MS models keep the paper's UNet skips.
  assert models.create(f"ms_{base}").config.skip_topology() == "unet"
  assert model.config.skip_topology() == "none"


def test_predrnn_v2_evaluation_feeds_the_whole_context():
  """Reverse scheduled sampling only acts in training: evaluation (mask None) feeds every
  context frame, as the reference tests PredRNN-V2 at eta_r = 1."""
  model = models.create("predrnn_v2", hidden=4, num_layers=2, in_len=3)
  assert model.config.spec.reverse_scheduled_sampling
  np.testing.assert_array_equal(model.truth_mask(None, 2, 5), [[1, 1, 1, 0, 0]] * 2)
  np.testing.assert_array_equal(model.truth_mask(jnp.zeros((2, 5)), 2, 5), [[1, 0, 0, 0, 0]] * 2)
  x = _frames(b=2, t=6, h=8, w=8)
  variables = model.init(jax.random.key(0), x)
  preds, _ = model.apply(variables, x)
  fed, _ = model.apply(variables, x, jnp.asarray([[1, 1, 1, 0, 0]] * 2, jnp.float32))
  np.testing.assert_array_equal(preds, fed)


def test_a_new_cell_is_one_class_and_one_registry_entry(monkeypatch):
  """The worked example of docs/model.md: a ConvGRU cell, registered, is a plain and an MS model."""
  from typing import ClassVar

  import flax.linen as nn

  from msrnn_jax.model.layers import fused_conv  # noqa: F401  (what a cell file imports)

  class ConvGRUCell(cells.CellBase):
    units: ClassVar[int] = 4

    def setup(self):
      self.conv_x = self.conv(3 * self.hidden)
      self.conv_h = self.conv(2 * self.hidden)
      self.conv_c = self.conv(self.hidden)

    @classmethod
    def state_spec(cls, config, layer):
      return ((config.hidden, 1),)

    def __call__(self, x, state, m=None, diag=None):
      (h,) = state
      zx, rx, cx = jnp.split(self.conv_x(x), 3, axis=-1)
      zh, rh = jnp.split(self.conv_h(h), 2, axis=-1)
      z, r = nn.sigmoid(zx + zh), nn.sigmoid(rx + rh)
      h = (1.0 - z) * h + z * jnp.tanh(cx + self.conv_c(r * h))
      return h, (h,), m, {}

  monkeypatch.setitem(cells.FAMILIES, "convgru", cells.Family(ConvGRUCell))
  x = _frames(b=1, t=4, h=16, w=16)
  for name in ("convgru", "ms_convgru"):
    model = models.create(name, hidden=4, num_layers=6, in_len=2)
    params = model.init(jax.random.key(0), x)["params"]
    # 6 layers of conv_x (4 -> 12), conv_h (4 -> 8), conv_c (4 -> 4), 3x3 with bias;
    # the 1x1 embed (1 -> 4) and head (4 -> 1).
    assert _count(params) == 6 * ((36 * 12 + 12) + (36 * 8 + 8) + (36 * 4 + 4)) + 8 + 5
    preds, _ = model.apply({"params": params}, x)
    assert preds.shape == (1, 3, 16, 16, 1) and bool(jnp.all(jnp.isfinite(preds)))
  assert models.create("ms_convgru").config.pyramid_levels() == (0, 1, 2, 2, 1, 0)


def test_bfloat16_packing_is_a_bit_reinterpretation():
  """On CPU a stored bfloat16 carry is a float16 container of the same bits (XLA
  can neither convert it through float32 nor elide its rounding), and loading it
  gives back every bit."""
  from msrnn_jax import backend

  values = jax.random.normal(jax.random.key(0), (3, 5, 7)) * 1e3
  carry = {"h": values.astype(jnp.bfloat16), "step": jnp.arange(3)}
  stored = jax.jit(backend.pack, static_argnums=1)(carry, jnp.bfloat16)
  if jax.default_backend() == "cpu":
    assert stored["h"].dtype == jnp.float16
  loaded = jax.jit(backend.unpack, static_argnums=1)(stored, jnp.bfloat16)
  assert loaded["h"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(jax.lax.bitcast_convert_type(loaded["h"], jnp.uint16),
                                jax.lax.bitcast_convert_type(carry["h"], jnp.uint16))
  np.testing.assert_array_equal(loaded["step"], carry["step"])


@pytest.mark.parametrize("name", ["ms_convlstm", "ms_predrnn", "ms_mim"])
def test_bfloat16_keeps_float32_states_and_checkpoints_them_in_bfloat16(name):
  """The carry is float32 in bfloat16 compute (every remat mode gives the same
  forward pass); remat='step' recomputes each step from its carry rounded to
  bfloat16, so its gradient differs from remat='none's by about that rounding
  and no more."""
  x = _frames(b=2, t=5, h=16, w=16)
  mask = jnp.full((2, 4), 0.5)
  plain = models.create(name, hidden=8, num_layers=3, in_len=2, dtype="bfloat16")
  params = plain.init(jax.random.key(0), x)["params"]

  def loss_and_grad(model):
    def loss(p):
      preds, aux = model.apply({"params": p}, x, mask)
      return jnp.mean((preds - x[:, 1:]) ** 2), aux["carry"]
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (l_none, carry), g_none = loss_and_grad(plain)
  assert {v.dtype for v in jax.tree.leaves(carry)} == {jnp.dtype(jnp.float32)}
  (l_step, _), g_step = loss_and_grad(plain.replace(remat="step"))
  assert float(l_step) == float(l_none)
  flat_none = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g_none)])
  flat_step = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g_step)])
  rel = float(jnp.linalg.norm(flat_step - flat_none) / jnp.linalg.norm(flat_none))
  assert 0 < rel < 2e-2, rel


@pytest.mark.parametrize("name", ["predrnn_pp", "ms_trajgru"])
def test_bfloat16_time_loop_packs_residuals_and_keeps_autodiffs_gradients(name, monkeypatch):
  """remat='none' in bfloat16 stacks the residuals that would be bfloat16
  stacks (PredRNN++'s tanh products, TrajGRU's) packed, through
  backend.packed_residual_scan: loss and gradients equal autodiff through
  nn.scan's."""
  x = _frames(b=2, t=5, h=16, w=16)
  mask = jnp.full((2, 4), 0.5)
  model = models.create(name, hidden=8, num_layers=4, in_len=2, dtype="bfloat16")
  params = model.init(jax.random.key(0), x)["params"]

  def loss(p):
    preds, _ = model.apply({"params": p}, x, mask)
    return jnp.mean((preds.astype(jnp.float32) - x[:, 1:]) ** 2)

  def bf16_stacks():  # per-step stacks (time first) of bfloat16 maps
    return re.findall(r"bf16\[4,2,\d+,\d+,\d+\]", str(jax.make_jaxpr(jax.grad(loss))(params)))

  assert not bf16_stacks()
  l_new, g_new = jax.jit(jax.value_and_grad(loss))(params)
  monkeypatch.setitem(predictor.TIME_LOOPS, ("none", True), predictor.scanned)
  assert bf16_stacks()  # what autodiff's scan would stack
  l_ref, g_ref = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(float(l_new), float(l_ref), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("name", ["ms_convlstm", "predrnn_v2"])
def test_checkpointed_loop_gradients_equal_autodiff(name):
  """The hand-written reverse loop of remat='step' in low precision, run with
  float32 storage (nothing rounded): loss, outputs and the gradients of the
  parameters, the initial carry and the frames equal autodiff through nn.scan."""
  x = _frames(b=2, t=5, h=8, w=8, seed=3)
  mask = jnp.full((2, 4), 0.5)
  model = models.create(name, hidden=4, num_layers=3, in_len=2)
  params = model.init(jax.random.key(0), x)["params"]
  carry = model.initial_carry(2, 8, 8)
  carry = jax.tree.map(lambda v: v + 0.1, carry)  # a non-zero start, so its gradient means something

  def run(loop):
    def loss(p, c, frames):
      preds, increments = loop(p, c, frames)
      return jnp.mean((preds - x[:, 1:]) ** 2) + 0.01 * sum(
          jnp.mean(v ** 2) for v in jax.tree.leaves(increments))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, carry, x)

  def scanned(p, c, frames):
    scan = nn.scan(predictor.Step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)(config=model.config)
    return scan.apply({"params": p["step"]}, c, (frames[:, :-1], mask))[1]

  def checkpointed(p, c, frames):
    def step(params, c, x):
      return predictor.Step(model.config).apply({"params": params}, c, x)

    swap = functools.partial(jax.tree.map, lambda v: jnp.swapaxes(v, 0, 1))
    return swap(backend.stored_carry_scan(step, p["step"], c, swap((frames[:, :-1], mask)),
                                          jnp.float32)[1])

  l_ref, g_ref = run(scanned)
  l_ckpt, g_ckpt = run(checkpointed)
  np.testing.assert_allclose(float(l_ckpt), float(l_ref), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_ckpt), jax.tree.leaves(g_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))


def test_default_config_lists_each_family_option_with_its_default():
  """configs/default.py is plain data: its family options must be the registry's."""
  from configs import default

  config_model = default.get_config().model
  fields = set(models.model_options()) - set(models.family_options())
  listed = {k: v for k, v in config_model.items() if k not in fields and k != "name"}
  assert listed == models.family_options()


def test_families_declare_their_sampling_scheme_and_state_options():
  assert models.family("ms_predrnn_v2").scheduled_sampling == "reverse"
  assert {models.family(n).scheduled_sampling for n in models.model_names()
          if "predrnn_v2" not in n} == {"linear"}
  assert models.family("trajgru").cell.state_options == ("links",)
  # A state option changes the parameter tree; the others do not.
  for name in ("trajgru", "motionrnn"):
    fam = models.family(name)
    for key, value in fam.options.items():
      shapes = [_shapes(jax.eval_shape(models.create(name, hidden=8, num_layers=2, **{key: v}).init,
                                       jax.random.key(0), jnp.zeros((1, 3, 16, 16, 1))))
                for v in (value, value + 1)]
      assert (shapes[0] != shapes[1]) == (key in fam.cell.state_options), (name, key)


def test_decouple_term_equals_a_per_layer_numpy_computation():
  """PredRNN-V2's term, batched per pyramid level, equals the reference's per-layer maths:
  sum over layers and channels of |cos| between the adapted increments of C and M."""
  shapes = [(2, 8, 8, 3), (2, 4, 4, 3), (2, 2, 2, 3), (2, 4, 4, 3), (2, 8, 8, 3)]
  keys = jax.random.split(jax.random.key(5), 2 * len(shapes))
  increments = [(jax.random.normal(keys[2 * i], s), jax.random.normal(keys[2 * i + 1], s))
                for i, s in enumerate(shapes)]

  class Term(nn.Module):
    @nn.compact
    def __call__(self, increments):
      adapter = Conv(3, in_features=3, kernel_size=1, name="adapter", initializer="torch",
                     dtype=jnp.float32, conv_impl="xla")
      return predictor.decouple_term(adapter, increments)

  variables = Term().init(jax.random.key(1), increments)
  got = np.asarray(Term().apply(variables, increments))
  k = np.asarray(variables["params"]["adapter"]["kernel"])[0, 0]
  bias = np.asarray(variables["params"]["adapter"]["bias"])
  want = np.zeros(2)
  for dc, dm in increments:
    a, m = (np.asarray(v, np.float64).reshape(2, -1, 3) @ k + bias for v in (dc, dm))
    a, m = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, m))
    want += np.abs(np.sum(a * m, axis=1)).sum(axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv_of_parts_keeps_parts_as_the_convolution_reads_them(dtype):
  """A float32 part is stored for the kernel gradient rounded to the compute dtype, unless
  it is listed as kept (another operation keeps it unrounded anyway); values and gradients
  are the same either way, bit for bit."""
  from msrnn_jax.model.layers import conv_of_parts

  class TwoParts(nn.Module):
    kept_memory: bool

    @nn.compact
    def __call__(self, x, m):
      conv = Conv(5, in_features=7, dtype=jnp.dtype(dtype), conv_impl="xla")
      return conv_of_parts([conv], [x, m], kept=[m] if self.kept_memory else [])

  x = jax.random.normal(jax.random.key(1), (2, 6, 5, 3)).astype(dtype)
  m = jax.random.normal(jax.random.key(2), (2, 6, 5, 4))  # float32, as a cell's memory
  cot = jax.random.normal(jax.random.key(3), (2, 6, 5, 5))
  results, stored = [], []
  for kept in (True, False):
    module = TwoParts(kept)
    params = module.init(jax.random.key(0), x, m)
    f = lambda p, x, m, module=module: module.apply(p, x, m)  # noqa: E731
    y, vjp = jax.vjp(f, params, x, m)
    results.append((y, vjp(cot.astype(y.dtype))))
    stored.append(sorted(v.dtype.itemsize for v in jax.tree.leaves(vjp) if v.shape == m.shape))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert stored[0] == [4]
  assert stored[1] == [jnp.dtype(dtype).itemsize]  # bfloat16: packed on CPU, 2 bytes either way
