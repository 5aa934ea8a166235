"""The recurrent predictor: embed, a stack of cells on a pyramid, head, over time.

One time step (:class:`Step`) embeds the input frame (1x1 conv), runs the N
layers at their pyramid levels with the chosen skip topology, resamples the
zig-zag memory M and MIM's diagonal input between levels, and predicts the
next frame with a 1x1 conv head (linear output). :class:`Predictor` unrolls
the step over time with ``nn.scan`` (parameters broadcast, so every step
shares them) and implements scheduled sampling: the input at step t is
``mask * frame_t + (1 - mask) * prediction_{t-1}``.

Precision. Convolutions and gates compute in ``config.dtype``; the carry
(every cell state, M, the previous prediction) is float32 whatever that
dtype, as ``torch.autocast``'s type promotion keeps the reference's states:
an LSTM cell state rounded to bfloat16 every step loses the small updates
that long memories add up (``docs/performance.md``).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax import backend
from msrnn_jax.model import pyramid
from msrnn_jax.model.config import ModelConfig
from msrnn_jax.model.layers import Conv


def decouple_term(adapter: nn.Module, increments: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
  """PredRNN-V2's decoupling term of one step, summed over layers and channels.

  |cos| between the adapted increments of C and M, ``delta = s(i) tanh(g)``,
  each flattened over space and L2-normalised per channel; one shared 1x1
  convolution adapts both. One call per layer: a call on a whole pyramid
  level's increments holds all their adapted maps at once, which at large
  frames outweighs the calls saved (docs/performance.md). The time loop calls
  it rematerialised: the backward pass keeps the increments alone and
  recomputes the rest.

  Args:
    adapter: the shared 1x1 convolution.
    increments: per layer, the increments of C and of M, each
      ``[batch, h, w, hidden]`` (h, w: the layer's pyramid level).

  Returns:
    ``[batch]``.
  """
  total = 0.0
  for c_increment, m_increment in increments:
    adapted = adapter(jnp.concatenate([c_increment, m_increment])).astype(jnp.float32)
    adapted = adapted / jnp.maximum(jnp.linalg.norm(adapted, axis=(1, 2), keepdims=True), 1e-12)
    a, m = jnp.split(adapted, 2)
    total = total + jnp.sum(jnp.abs(jnp.sum(a * m, axis=(1, 2))), axis=-1)
  return total


_rematerialised_decouple_term = nn.checkpoint(decouple_term, prevent_cse=False)


class Step(nn.Module):
  """One time step of the whole network.

  Called as ``(carry, (frame, use_truth)) -> (carry, (prediction, decouple))``:
  the next frame ``[batch, H, W, channels]`` (float32) and PredRNN-V2's
  decoupling term of this step ``[batch]`` (zeros for the other families).

  Attributes:
    config: the model's hyper-parameters.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, carry, inputs):
    cfg = self.config
    dtype = cfg.compute_dtype
    states, m, prev = carry
    frame, use_truth = inputs
    cell_cls = cfg.spec.cell
    if cfg.remat == "cell":
      cell_cls = nn.remat(cell_cls, policy=cfg.checkpoint_policy, prevent_cse=False)
    conv_kw = dict(initializer=cfg.initializer, dtype=dtype, conv_impl=cfg.conv_impl, kernel_size=1)
    lv = cfg.pyramid_levels()
    skip = cfg.skip_topology()

    g = use_truth.astype(jnp.float32)[:, None, None, None]
    x = g * frame.astype(jnp.float32) + (1.0 - g) * prev
    x = Conv(cfg.hidden, in_features=cfg.channels, name="embed", **conv_kw)(x)
    x = pyramid.resample(x, 0, lv[0])
    if m is not None:
      # The top layer's M of step t-1 enters layer 0 of step t.
      m = pyramid.resample(m, lv[-1], lv[0])

    outs, new_states, increments = [], [], []
    for l in range(cfg.num_layers):
      if l > 0:
        x = pyramid.layer_input(outs, lv, skip, l)
        if m is not None:
          m = pyramid.resample(m, lv[l - 1], lv[l])
      diag = None
      if cell_cls.uses_diagonal and l > 0:
        # H_{t-1}^{l-1}, moved to this layer's level without any skip term.
        diag = pyramid.resample(states[l - 1][0], lv[l - 1], lv[l])
      h, state, m, extras = cell_cls(config=cfg, layer=l, name=f"layer_{l}")(x, states[l], m, diag)
      outs.append(h)
      new_states.append(tuple(v.astype(jnp.float32) for v in state))
      if m is not None:
        m = m.astype(jnp.float32)
      if cfg.spec.decouple:
        increments.append(extras["increments"])

    y = pyramid.resample(outs[-1], lv[-1], 0)
    y = Conv(cfg.channels, in_features=cfg.hidden, name="head", **conv_kw)(y).astype(jnp.float32)
    decouple = jnp.zeros(y.shape[:1], jnp.float32)
    if cfg.spec.decouple:
      adapter = Conv(cfg.hidden, in_features=cfg.hidden, name="adapter", **conv_kw)
      decouple = _rematerialised_decouple_term(adapter, increments)
    return (tuple(new_states), m, y), (y, decouple)


# The time loops: ``(predictor, initial carry, per-step inputs) -> (final
# carry, per-step outputs)``, time on axis 1.


def scanned(module: nn.Module, carry: Any, xs: Any, remat_step: bool = False) -> tuple[Any, Any]:
  """:class:`Step` over time with ``nn.scan`` (shared parameters); ``remat_step``: checkpointed."""
  cfg = module.config
  frames = xs[0]
  step_cls = Step
  if remat_step:
    # prevent_cse=False is safe (and faster) inside a scan.
    step_cls = nn.remat(Step, policy=cfg.checkpoint_policy, prevent_cse=False)
  scan = nn.scan(step_cls, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=1, out_axes=1, length=frames.shape[1], unroll=cfg.time_unroll(frames.shape))
  # An explicit name keeps the parameter tree identical whatever the loop.
  return scan(config=cfg, name="step")(carry, xs)


remat_scanned = functools.partial(scanned, remat_step=True)


def _custom_scan(scan_fn: Callable, module: nn.Module, carry: Any, xs: Any) -> tuple[Any, Any]:
  """:class:`Step` over time with one of ``backend``'s differentiable scans."""
  cfg = module.config
  step = lambda params, c, x: Step(cfg).apply({"params": params}, c, x)  # noqa: E731
  swap = functools.partial(jax.tree.map, lambda v: jnp.swapaxes(v, 0, 1))
  carry, ys = scan_fn(step, module.variables["params"]["step"], carry, swap(xs),
                      cfg.compute_dtype, cfg.time_unroll(xs[0].shape))
  return carry, swap(ys)


def stored_carries(module: nn.Module, carry: Any, xs: Any) -> tuple[Any, Any]:
  """Each step checkpointed, its input carry kept in the compute dtype.

  ``nn.remat`` would keep every step's float32 carry. Other policies than
  ``nothing_saveable``, and initialisation (which makes the parameters),
  take :func:`remat_scanned`.
  """
  if module.is_initializing() or module.config.remat_policy != "nothing_saveable":
    return remat_scanned(module, carry, xs)
  return _custom_scan(backend.stored_carry_scan, module, carry, xs)


def packed_residuals(module: nn.Module, carry: Any, xs: Any) -> tuple[Any, Any]:
  """:func:`scanned` with the low-precision residuals stacked in place
  (``backend.packed_residual_scan``); initialisation takes :func:`scanned`."""
  if module.is_initializing():
    return scanned(module, carry, xs)
  return _custom_scan(backend.packed_residual_scan, module, carry, xs)


# The time loop of each (remat mode, low precision).
TIME_LOOPS = {
    ("none", False): scanned, ("none", True): packed_residuals,
    ("cell", False): scanned, ("cell", True): scanned,
    ("step", False): remat_scanned, ("step", True): stored_carries,
}


class Predictor(nn.Module):
  """MS-RNN / RNN next-frame predictor.

  Build one with ``msrnn_jax.model.create(name, **options)``.

  Attributes:
    config: every hyper-parameter (:class:`ModelConfig`).
  """

  config: ModelConfig

  def replace(self, **changes: Any) -> "Predictor":
    """The same model with some ``ModelConfig`` fields changed."""
    # parent=None: an unbound copy, not a submodule of this one.
    return Predictor(dataclasses.replace(self.config, **changes), parent=None)

  def check_frames(self, frames: jax.Array) -> None:
    """Raises ``ValueError`` naming the problem for a malformed frame batch."""
    cfg = self.config
    if frames.ndim != 5:
      raise ValueError(f"frames must be [batch, time, height, width, channels]; got shape "
                       f"{frames.shape}.")
    b, t, h, w, c = frames.shape
    if c != cfg.channels:
      raise ValueError(f"frames have {c} channels but the model expects {cfg.channels}; "
                       f"set model channels (config data.channels) to {c}.")
    if t < 2:
      raise ValueError(f"need at least 2 frames to predict one; got {t}.")
    k = cfg.size_multiple()
    for name, size in (("height", h), ("width", w)):
      if size % k:
        raise ValueError(
            f"frame {name} {size} is not a multiple of {k}, which the pyramid levels "
            f"{cfg.pyramid_levels()} of {cfg.family} need; resize or crop frames to a multiple "
            f"of {k} (e.g. {max(k, size // k * k)}).")

  def initial_carry(self, batch: int, height: int, width: int):
    """Zero states for every layer, zero M and a zero previous prediction (float32)."""
    cfg = self.config
    dtype = jnp.float32
    levels = cfg.pyramid_levels()
    cell_cls = cfg.spec.cell
    states = []
    for l, lv in enumerate(levels):
      states.append(tuple(
          jnp.zeros((batch, height // (2 ** lv * div), width // (2 ** lv * div), ch), dtype)
          for ch, div in cell_cls.state_spec(cfg, l)))
    m = None
    if cell_cls.zigzag_m:
      top = levels[-1]
      m = jnp.zeros((batch, height // 2 ** top, width // 2 ** top, cfg.hidden), dtype)
    prev = jnp.zeros((batch, height, width, cfg.channels), dtype)
    return tuple(states), m, prev

  def truth_mask(self, mask: jax.Array | None, batch: int, steps: int) -> jax.Array:
    """The per-step ground-truth weights actually used, ``[batch, steps]``."""
    in_len = self.config.in_len
    t = jnp.arange(steps)
    if mask is None:
      # Evaluation: the whole context is truth, also under reverse scheduled
      # sampling (the reference tests PredRNN-V2 at eta_r = 1).
      return jnp.broadcast_to((t < in_len).astype(jnp.float32), (batch, steps))
    forced = t < (1 if self.config.spec.reverse_scheduled_sampling else in_len)
    if mask.shape != (batch, steps):
      raise ValueError(f"mask must have shape (batch, T-1) = {(batch, steps)}; got {mask.shape}.")
    return jnp.where(forced[None, :], 1.0, mask.astype(jnp.float32))

  @nn.compact
  def __call__(self, frames: jax.Array, mask: jax.Array | None = None):
    """Predicts every next frame.

    Args:
      frames: ``[batch, T, height, width, channels]`` in [0, 1].
      mask: ``[batch, T-1]`` ground-truth weights of the inputs at steps
        0..T-2 (1 = feed the true frame, 0 = feed the previous prediction);
        steps < ``in_len`` are forced to 1 (step 0 only, with reverse
        scheduled sampling). None = evaluation: truth in the context, then
        the model's own predictions.

    Returns:
      ``(predictions, aux)``: predictions ``[batch, T-1, height, width,
      channels]`` (float32, unclipped) of frames 1..T-1, and a dict with the
      scalar ``decouple_loss`` (PredRNN-V2; 0 otherwise) and the final
      ``carry`` ``(layer states, M, last prediction)``.
    """
    cfg = self.config
    self.check_frames(frames)
    b, t, h, w, _ = frames.shape
    mask = self.truth_mask(mask, b, t - 1)
    loop = TIME_LOOPS[cfg.remat, cfg.compute_dtype != jnp.float32]
    carry, (preds, decouple) = loop(self, self.initial_carry(b, h, w), (frames[:, :-1], mask))
    return preds, {"decouple_loss": jnp.mean(decouple), "carry": carry}


def predict(model: Predictor, variables: Any, context: jax.Array, horizon: int) -> jax.Array:
  """Predicts ``horizon`` future frames from a context, no targets needed.

  Args:
    model: the predictor.
    variables: its variables (``{'params': ...}``).
    context: ``[batch, T_context, height, width, channels]`` in [0, 1].
    horizon: number of future frames (any positive number).

  Returns:
    ``[batch, horizon, height, width, channels]`` float32, unclipped.
  """
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1; got {horizon}.")
  if context.ndim != 5:
    raise ValueError(f"context must be [batch, time, height, width, channels]; got shape "
                     f"{context.shape}.")
  b, tc = context.shape[:2]
  pad = jnp.zeros((b, horizon) + context.shape[2:], context.dtype)
  frames = jnp.concatenate([context, pad], axis=1)
  # Context length may differ from training: truth for all context steps,
  # the model's own predictions afterwards.
  preds, _ = model.replace(in_len=tc).apply(variables, frames)
  return preds[:, tc - 1:]
