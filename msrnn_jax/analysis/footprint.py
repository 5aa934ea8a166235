"""Training memory and FLOPs of a model, from compile-only analyses.

Everything here compiles the real training step (``training.step.make_train_step``:
forward, L2+L1 loss, backward, Adam update, donated state) but never runs it:
the state comes from ``jax.eval_shape`` and the frames are
``jax.ShapeDtypeStruct``\\ s, so analysing a 1024x1024 step allocates nothing
near the memory it reports (the host RSS after compiling is recorded as
evidence). Figures are per device: one data-parallel replica holding
``batch_per_device`` examples and a full copy of the parameters and Adam
state, as the training loop shards training (the gradient all-reduce buffers of a
multi-device run are not included).

* :func:`analyze`: XLA's ``memory_analysis()`` (temp, argument, output,
  alias; total = temp + argument + output - alias), FLOPs per training step,
  the parameter count, and the paper's analytic estimate (eq. 2-5). On a GPU
  it can also run a few real steps and read the allocator's peak.
* :func:`find_max_resolution`: the largest square frame whose step fits a
  memory budget, by bisection over compile-only analyses.
* :func:`paper_estimate`: eq. 2-5 of the paper (section IV-B).

FLOPs. ``compiled.cost_analysis()`` counts the body of a rolled ``while``
loop once, whatever its trip count, so a rolled ``nn.scan`` (``scan_unroll=1``)
under-reports by about the number of steps. ``flops='multiply'`` (default)
compiles the step a second time with ``scan_unroll=2``: the difference of the
two counts is one recurrent step (forward + backward, rematerialisation
included), which is then multiplied by the trip count. ``flops='unrolled'``
compiles the fully unrolled program (``scan_unroll = T-1``) and reads its
count directly (slow to compile at large T); the two agree to within XLA's
fusion differences (checked in tests). ``'rolled'`` reports the raw,
under-counted figure; ``'none'`` skips it.

Units U of eq. 3-5 (each cell's ``units``). The paper counts "basic units (such
as input gates, forget gates, etc.)" per RNN module without listing them. We
count, per cell and in units of ``hidden`` channels at the layer's
resolution, every gate pre-activation chunk plus every state or block output
the cell's equations name:

* ConvLSTM 6: gates i, f, g, o; states C, H.
* TrajGRU 5 + L (18 for L=13): gates z, r, candidate; the flow generator u;
  H; and the L warped copies of H that feed the projection (the biggest
  tensor of the cell, so leaving it out would misstate the cell badly).
* PredRNN (ST-LSTM) 10: gates i, f, g, o, i', f', g'; C, M, H.
* PredRNN++ (Causal LSTM) 10: gates i, f, g, i', f', g', o; C, M, H. The
  Gradient Highway Unit of layer 1 (p, s, Z) is not counted: the paper's
  formula has one U for all layers.
* MIM 22: MIM-N (i, f, g, o, N, Dif) 6 + MIM-S (i, f, g, o, S, T) 6 + the
  ST-LSTM core 10. (Our layer 0 skips the unused MIM blocks; not modelled.)
* MotionRNN 26: MIM's 22 plus MotionGRU's full-resolution hidden-channel
  tensors: the decoded motion Hd, the gate, the gated output and the
  highway sum (MotionGRU's own states run at half resolution with few
  channels and add well under one unit).
* CMS-LSTM 48 (at ``ce_iters`` = 5): a gate and the gated map per CE round
  (10), ConvLSTM's 6, and the SE block: per scale the query, key, value and
  attended maps over H and C side by side (8 x 3), the fused map (2), z, the
  gates i, g, o, C' and H' (6). The attention matrices are never formed
  (``attention.block_attention`` walks the keys in chunks) and not counted.
* MoDeRNN 16 (at ``ce_iters`` = 5): a gate and the gated map per DCB round,
  ConvLSTM's 6.
* PrecipLSTM 25: the local attention's q, k, v, output and X_a (5); gates
  4 + 3 x 3; C, M, S, T; X - D; H; the kept input X.
* MK-LSTM 11: gates i, f, g, o of both paths; C_3, C_5, H.

The ratio MS/plain of the estimate does not depend on U; its absolute value
does, and XLA keeps more than these U tensors per layer and step (both
pre- and post-activation values, the concatenated inputs of fused
convolutions): the result's ``implied_units`` says how many maps per layer
and step the compiled program really holds.
"""

import math
import resource
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msrnn_jax import backend
from msrnn_jax import model as model_lib
from msrnn_jax.analysis import timing
from msrnn_jax.model import pyramid
from msrnn_jax.training import step as train_step

# The paper's budget: "40 GB memory is the limit of most modern GPUs" (A100
# 40GB). Decimal gigabytes, as the paper's tables.
DEFAULT_BUDGET_BYTES = 40e9

FLOPS_METHODS = ("multiply", "unrolled", "rolled", "none")


def layer_weight_sum(num_layers: int, multiscale: bool) -> float:
  """Sum over layers of the layer's pixel share, ``sum_l 4**-level(l)``.

  The mirror pyramid runs layer l at level ``min(l, N-1-l)``, i.e. at
  ``hw / 4**level`` pixels. N=6: 1 + 1/4 + 1/16 + 1/16 + 1/4 + 1 = 2.625.

  This is the bracket of eq. 4-5 divided by hw. Eq. 4's closed form agrees
  with it (the doubled sum printed in eq. 4 should stop at level (N-3)/2).
  Eq. 5's printed closed form, (256/3)(1 - (1/4)^((N-2)/2)), has an
  off-by-one in the exponent: its own sum equals (256/3)(1 - (1/4)^(N/2)),
  which for N=6 gives the 84 RUbchw that eq. 8 uses (the printed form would
  give 80). We follow the sums.
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1; got {num_layers}.")
  if not multiscale:
    return float(num_layers)
  return float(sum(4.0 ** -lv for lv in pyramid.mirror_levels(num_layers)))


def paper_estimate(num_layers: int, multiscale: bool, R: int, U: float, b: int, c: int,
                   h: int, w: int, *, params: int = 0, bits: int = 32) -> dict[str, float]:
  """The paper's training-memory model, eq. 2-5 (section IV-B).

  ``M_out^0 = bits R N U b c h w`` (eq. 3) for the plain stack; the mirror
  pyramid replaces N by ``sum_l 4**-level(l)`` (eq. 4-5, see
  :func:`layer_weight_sum`); ``M_all = 4 M_par + 2 M_out`` (eq. 2: parameters,
  their gradients and Adam's two moments, plus forward outputs and their
  gradients).

  Args:
    num_layers: N.
    multiscale: the MS mirror pyramid (eq. 4-5) or the plain stack (eq. 3).
    R: recurrences (the paper: the total sequence length m + n).
    U: basic units per cell (its cell's ``paper_units``).
    b: batch (per device).
    c: hidden channels.
    h: frame height.
    w: frame width.
    params: number of parameters (for M_par; 0 gives M_out only).
    bits: bits per value (32 for float32).

  Returns:
    dict with ``out_bits`` and ``out_bytes`` (M_out), ``par_bytes`` (M_par),
    ``all_bytes`` (M_all) and ``out_units`` (M_out in units of
    ``R U b c h w`` bits; 192 for plain N=6, 84 for MS N=6).
  """
  for name, v in (("R", R), ("U", U), ("b", b), ("c", c), ("h", h), ("w", w)):
    if v <= 0:
      raise ValueError(f"{name} must be positive; got {v}.")
  weight = layer_weight_sum(num_layers, multiscale)
  out_bits = bits * R * weight * U * b * c * h * w
  par_bytes = params * bits / 8
  return {"out_bits": out_bits, "out_bytes": out_bits / 8, "par_bytes": par_bytes,
          "all_bytes": 4 * par_bytes + 2 * out_bits / 8, "out_units": bits * weight}


def _build(model_name: str, image_size: int | tuple[int, int], batch_per_device: int,
           seq_len: int, in_len: int | None, channels: int, model_options: dict[str, Any]):
  """Validated model and frame shape."""
  if batch_per_device < 1:
    raise ValueError(f"batch_per_device must be >= 1; got {batch_per_device}.")
  if seq_len < 2:
    raise ValueError(f"seq_len must be >= 2 (context + one target); got {seq_len}.")
  if in_len is None:
    in_len = seq_len // 2
  if not 1 <= in_len < seq_len:
    raise ValueError(f"in_len must be in [1, seq_len); got in_len={in_len}, seq_len={seq_len}.")
  model = model_lib.create(model_name, channels=channels, in_len=in_len, **model_options)
  h, w = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
  h, w = int(h), int(w)
  k = model.config.size_multiple()
  for name, v in (("height", h), ("width", w)):
    if v < 1 or v % k:
      raise ValueError(
          f"image {name} {v} is not a positive multiple of {k}, the pyramid factor of "
          f"{model_name} (model.config.size_multiple()); use a multiple of {k}, e.g. "
          f"{max(k, v // k * k)} or {(v // k + 1) * k}.")
  return model, (batch_per_device, seq_len, h, w, channels), in_len


def param_count(model_name: str, channels: int = 1, **model_options: Any) -> int:
  """Number of parameters of a model (independent of frame size and batch).

  Args:
    model_name: one of ``model_lib.MODEL_NAMES``.
    channels: frame channels.
    **model_options: ``msrnn_jax.model.create`` options (``hidden``, ``num_layers``, ...).

  Returns:
    The parameter count, from shapes only (nothing is initialised).
  """
  model = model_lib.create(model_name, channels=channels, **model_options)
  k = model.config.size_multiple()
  shape = (1, 2, k, k, channels)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"])))


def compile_train_step(model, tx, frames_shape, in_len, decouple_weight):
  """Lowers and compiles the real train step on abstract arguments.

  Returns:
    ``(abstract state, compiled, lowering seconds, compile seconds)``.
  """
  # eval_shape traces init and optimizer setup without computing or
  # allocating anything: the state is ShapeDtypeStructs only.
  state = jax.eval_shape(lambda: train_step.create_train_state(model, tx, frames_shape, 0))
  step = train_step.make_train_step(model, tx, in_len, decouple_weight)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  lowered, lower_s, _ = timing.timed(
      lambda: step.lower(state, jax.ShapeDtypeStruct(frames_shape, jnp.float32), scalar, scalar))
  compiled, compile_s, _ = timing.timed(lowered.compile)
  return state, compiled, lower_s, compile_s


def memory_sizes(compiled) -> dict[str, int]:
  """XLA's per-device memory analysis: temp, argument, output, alias and
  total (= temp + argument + output - alias) bytes."""
  ma = compiled.memory_analysis()
  if ma is None:
    raise NotImplementedError(f"memory_analysis() is not available on {jax.default_backend()}.")
  mem = {k: int(getattr(ma, f"{k}_size_in_bytes"))
         for k in ("temp", "argument", "output", "alias")}
  mem["total"] = mem["temp"] + mem["argument"] + mem["output"] - mem["alias"]
  return mem


def flops_of(compiled) -> float:
  """XLA's FLOP count of a compiled program (a rolled loop body counts once)."""
  cost = compiled.cost_analysis()
  # Older jax returned a list with one dict per computation.
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def _measure_peak(model, tx, frames_shape, in_len, decouple_weight, steps):
  """Runs ``steps`` real training steps; returns the allocator's peak bytes.

  Only meaningful on GPU/TPU (``memory_stats()`` is None on CPU). The peak is
  the process's high-water mark, so run it in a fresh process for a clean
  figure.
  """
  device = jax.devices()[0]
  step = train_step.make_train_step(model, tx, in_len, decouple_weight)
  state = jax.jit(lambda: train_step.create_train_state(model, tx, frames_shape, 0))()
  frames = jax.random.uniform(jax.random.PRNGKey(1), frames_shape, jnp.float32)
  eta = jnp.asarray(0.5, jnp.float32)
  for _ in range(steps):
    state, _ = step(state, frames, eta, jnp.asarray(1.0, jnp.float32))
  jax.block_until_ready(state)
  stats = device.memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def _count_flops(model, compiled, tx, frames_shape, in_len, decouple_weight, flops, unroll,
                 steps):
  """``(flops per training step, method, rolled raw count)``; see the module docstring."""
  method, rolled_raw = flops, None
  # Kernels opaque to XLA's cost analysis are counted on a visible one with
  # the same arithmetic (its dK adds ~3% of padded columns).
  step = compiled
  if model.config.conv_impl not in backend.FLOP_COUNTABLE:
    model = model.replace(conv_impl="matmul")
    step = compile_train_step(model, tx, frames_shape, in_len, decouple_weight)[1]

  def compiled_with(unroll_factor):
    return compile_train_step(model.replace(scan_unroll=unroll_factor), tx, frames_shape,
                              in_len, decouple_weight)[1]

  if unroll >= steps or steps == 1:
    # Already fully unrolled (or a single trip): the count is exact.
    return flops_of(step), "exact", None
  if flops == "rolled":
    rolled_raw = flops_of(step)
    return rolled_raw, method, rolled_raw
  if flops == "unrolled":
    return flops_of(compiled_with(steps)), method, None
  # c(u) = outside + (u + L mod u) * step for u = 1, 2 (jax unrolls the
  # remainder of an unrolled scan outside its loop).
  c1 = flops_of(step if unroll == 1 else compiled_with(1))
  c2 = flops_of(compiled_with(2))
  per_step = (c2 - c1) / (1 + steps % 2)
  return c1 + (steps - 1) * per_step, method, c1


def analyze(model_name: str, *, image_size: int | tuple[int, int], batch_per_device: int = 1,
            seq_len: int = 20, in_len: int | None = None, channels: int = 1,
            learning_rate: float = 3e-4, decouple_weight: float = 0.01,
            flops: str = "multiply", measure_peak: bool | None = None, peak_steps: int = 3,
            **model_options: Any) -> dict[str, Any]:
  """Compile-only memory and FLOPs of one training step, per device.

  Args:
    model_name: one of ``model_lib.MODEL_NAMES`` (``'convlstm'``, ``'ms_mim'``...).
    image_size: frame side (square) or ``(height, width)``; a multiple of
      ``model.config.size_multiple()``.
    batch_per_device: examples per device (the paper: 1 per GPU).
    seq_len: T, frames per example (the paper: 20 = 10 in + 10 out); the
      model runs T-1 recurrent steps.
    in_len: context length (default T // 2); only affects sampling masks.
    channels: frame channels C.
    learning_rate: Adam's learning rate (does not change memory).
    decouple_weight: PredRNN-V2's decoupling-loss weight.
    flops: how to count FLOPs, one of ``FLOPS_METHODS`` (module docstring).
    measure_peak: run ``peak_steps`` real steps and read the device
      allocator's peak; None = only when the default backend is a GPU.
    peak_steps: steps to run for ``measure_peak``.
    **model_options: ``msrnn_jax.model.create`` options: ``hidden``, ``num_layers``,
      ``remat``, ``scan_unroll``, ``dtype``, ``conv_impl``...

  Returns:
    A flat dict: ``model``, ``image_size`` [h, w], ``batch_per_device``,
    ``seq_len``, ``steps`` (T-1), ``model_options``, ``size_multiple``,
    ``params``, ``param_bytes``; XLA's memory analysis ``temp_bytes``,
    ``argument_bytes``, ``output_bytes``, ``alias_bytes``, ``total_bytes``
    (temp + argument + output - alias); ``flops`` (per training step),
    ``flops_method`` and ``flops_rolled_raw`` (the rolled program's
    under-count, when compiled); the paper's estimate ``paper_units`` (U),
    ``paper_out_bytes`` (M_out), ``paper_all_bytes`` (M_all, eq. 2) with
    R = ``seq_len``; ``implied_units`` (maps per layer and step that the
    compiled program holds: ``(total - 4 M_par) / 2`` over ``R b c hw
    sum_l 4**-level * 4 bytes``); ``lower_s``, ``compile_s``;
    ``host_max_rss_bytes`` after compiling; ``peak_bytes`` (GPU, else None);
    ``backend``.
  """
  if flops not in FLOPS_METHODS:
    raise ValueError(f"Unknown flops method {flops!r}; valid: {', '.join(FLOPS_METHODS)}.")
  model, frames_shape, in_len = _build(model_name, image_size, batch_per_device, seq_len, in_len,
                                       channels, model_options)
  tx = optax.adam(learning_rate)
  state, compiled, lower_s, compile_s = compile_train_step(model, tx, frames_shape, in_len,
                                                           decouple_weight)
  mem = memory_sizes(compiled)
  params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)))

  cfg = model.config
  steps = seq_len - 1
  b, _, h, w, c = frames_shape
  unroll = cfg.time_unroll((b, steps, h, w, c))
  flop_count, method, rolled_raw = float("nan"), flops, None
  if flops != "none":
    flop_count, method, rolled_raw = _count_flops(model, compiled, tx, frames_shape, in_len,
                                                  decouple_weight, flops, unroll, steps)

  units = cfg.spec.cell.paper_units(cfg)
  bits = 8 * jnp.dtype(cfg.compute_dtype).itemsize
  est = paper_estimate(cfg.num_layers, False, seq_len, units, b, cfg.hidden, h, w,
                       params=params, bits=bits)
  # Eq. 3 with N replaced by the model's own sum_l 4**-level: eq. 4-5 for the
  # mirror pyramid, and also right for custom ``levels``. Parameters stay
  # float32 whatever the compute dtype.
  weight = float(sum(4.0 ** -lv for lv in model.config.pyramid_levels()))
  out_bytes = est["out_bytes"] * weight / cfg.num_layers
  par_bytes = 4 * params
  all_bytes = 4 * par_bytes + 2 * out_bytes
  map_bytes = bits // 8 * seq_len * b * cfg.hidden * h * w
  implied = (mem["total"] - 4 * par_bytes) / 2 / (map_bytes * weight)

  peak = None
  if measure_peak is None:
    measure_peak = jax.default_backend() == "gpu"
  if measure_peak:
    peak = _measure_peak(model, tx, frames_shape, in_len, decouple_weight, peak_steps)

  return {
      "model": model_name, "cell": cfg.family, "multiscale": cfg.multiscale,
      "image_size": [h, w], "batch_per_device": b, "seq_len": seq_len, "steps": steps,
      "model_options": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in sorted(model_options.items())},
      "remat": cfg.remat, "scan_unroll": unroll, "conv_impl": cfg.conv_impl,
      "hidden": cfg.hidden, "num_layers": cfg.num_layers,
      "size_multiple": model.config.size_multiple(), "params": params, "param_bytes": 4 * params,
      **{f"{k}_bytes": v for k, v in mem.items()},
      "flops": flop_count, "flops_method": method, "flops_rolled_raw": rolled_raw,
      "paper_units": units, "paper_out_bytes": out_bytes, "paper_all_bytes": all_bytes,
      "implied_units": implied,
      "lower_s": lower_s, "compile_s": compile_s,
      "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "peak_bytes": peak, "backend": jax.default_backend(),
  }


def find_max_resolution(model_name: str, budget_bytes: float = DEFAULT_BUDGET_BYTES, *,
                        batch_per_device: int = 1, seq_len: int = 20,
                        lo: int | None = None, hi: int | None = None, max_size: int = 1 << 15,
                        channels: int = 1, known: dict[int, int] | None = None,
                        analyze_fn: Callable[..., dict[str, Any]] | None = None,
                        **model_options: Any) -> dict[str, Any]:
  """Largest square frame whose training step fits ``budget_bytes`` per device.

  Sizes are multiples of the model's pyramid factor m (``size_multiple()``).
  Compile-only total memory grows monotonically with the pixel count, so
  a bracket [fits, does not fit] is narrowed to adjacent multiples. Each
  round guesses the boundary by interpolating bytes linearly in pixels
  (memory is close to affine in h*w) and also probes the guess's neighbour,
  which usually ends the search in one round; a round that does not at
  least halve the bracket is followed by a plain bisection step, so the
  search never needs more than about twice bisection's compiles.

  Args:
    model_name: one of ``model_lib.MODEL_NAMES``.
    budget_bytes: memory per device (default 40e9, the paper's 40 GB).
    batch_per_device: examples per device.
    seq_len: frames T per example.
    lo: a size known (or hoped) to fit; default m.
    hi: a size expected not to fit; default: doubled from ``lo`` until it
      does not fit (up to ``max_size``).
    max_size: cap of the doubling search.
    channels: frame channels.
    known: ``{size: total_bytes}`` already measured with the same settings
      (e.g. by a sweep); used instead of compiling those sizes again.
    analyze_fn: replaces :func:`analyze` (for tests); same signature.
    **model_options: ``msrnn_jax.model.create`` options (``remat``, ``hidden``...).

  Returns:
    dict with ``size`` (largest fitting side), ``bytes`` (its total),
    ``next_size`` (``size + m``, the first that does not fit, or None when
    ``hi`` itself fits) and ``next_bytes``; ``multiple`` (m), ``budget_bytes``,
    ``evaluations`` ([size, bytes] in the order compiled) and
    ``hi_fits`` (True when the true maximum may lie above ``hi``).

  Raises:
    ValueError: the budget cannot hold the parameters and Adam state
      (``4 * 4 * params`` bytes, eq. 2) or even ``lo`` does not fit;
      ``lo``/``hi`` are not multiples of m or not increasing.
  """
  analyze_fn = analyze_fn or analyze
  model = model_lib.create(model_name, channels=channels, **model_options)
  m = model.config.size_multiple()
  params = param_count(model_name, channels=channels, **model_options)
  floor_bytes = 4 * 4 * params
  if budget_bytes < floor_bytes:
    raise ValueError(
        f"budget_bytes={budget_bytes:.4g} is below what {model_name}'s {params:,} parameters "
        f"need before any activation: {floor_bytes:,} bytes (parameters, gradients and Adam's "
        f"two moments in float32, eq. 2's 4 M_par); raise the budget or use a smaller model "
        f"(hidden, num_layers).")
  lo = m if lo is None else lo
  for name, v in (("lo", lo), ("hi", hi)):
    if v is not None and (v < m or v % m):
      raise ValueError(f"{name}={v} is not a positive multiple of {m}, the pyramid factor of "
                       f"{model_name}; use e.g. {max(m, v // m * m)}.")
  if hi is not None and hi <= lo:
    raise ValueError(f"hi={hi} must be larger than lo={lo}.")

  evaluations: list[list[int]] = []
  cache: dict[int, int] = {int(k): int(v) for k, v in (known or {}).items()}

  def total(size: int) -> int:
    if size not in cache:
      res = analyze_fn(model_name, image_size=size, batch_per_device=batch_per_device,
                       seq_len=seq_len, channels=channels, flops="none", **model_options)
      cache[size] = int(res["total_bytes"])
      evaluations.append([size, cache[size]])
    return cache[size]

  def result(size, nxt, hi_fits=False):
    return {"model": model_name, "size": size, "bytes": cache[size], "next_size": nxt,
            "next_bytes": cache.get(nxt) if nxt is not None else None, "multiple": m,
            "budget_bytes": budget_bytes, "batch_per_device": batch_per_device,
            "seq_len": seq_len, "evaluations": evaluations, "hi_fits": hi_fits,
            "model_options": dict(model_options)}

  if total(lo) > budget_bytes:
    raise ValueError(
        f"even {lo}x{lo} needs {cache[lo]:,} bytes > budget {budget_bytes:.4g} for "
        f"{model_name}; pass a smaller lo (multiple of {m}), a larger budget, remat='step', or "
        f"a smaller batch_per_device/hidden.")
  good = lo
  if hi is None:
    bad = lo
    while total(bad) <= budget_bytes:
      good = bad
      if bad >= max_size:
        return result(good, None, hi_fits=True)
      bad = min(2 * bad, max_size // m * m)
  else:
    bad = hi
    if total(bad) <= budget_bytes:
      return result(bad, None, hi_fits=True)

  interpolate = True
  while bad - good > m:
    gap = bad - good
    if interpolate:
      pg, pb = good * good, bad * bad
      frac = (budget_bytes - cache[good]) / max(cache[bad] - cache[good], 1)
      guess = int(math.sqrt(pg + frac * (pb - pg))) // m * m
      cand = min(max(guess, good + m), bad - m)
    else:
      cand = (good + bad) // 2 // m * m
      cand = min(max(cand, good + m), bad - m)
    if total(cand) <= budget_bytes:
      good = cand
      if interpolate and cand + m < bad:
        nb = cand + m
        if total(nb) <= budget_bytes:
          good = nb
        else:
          bad = nb
    else:
      bad = cand
      if interpolate and cand - m > good:
        nb = cand - m
        if total(nb) <= budget_bytes:
          good = nb
        else:
          bad = nb
    interpolate = (bad - good) * 2 <= gap if interpolate else True
  return result(good, bad)
