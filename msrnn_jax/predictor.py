"""The recurrent predictor: embed, a stack of cells on a pyramid, head, over time.

One time step (:class:`Step`) embeds the input frame (1x1 conv), runs the N
layers at their pyramid levels with the chosen skip topology, resamples the
zig-zag memory M and MIM's diagonal input between levels, and predicts the
next frame with a 1x1 conv head (linear output). :class:`Predictor` unrolls
the step over time with ``nn.scan`` (parameters broadcast, so every step
shares them) and implements scheduled sampling: the input at step t is
``mask * frame_t + (1 - mask) * prediction_{t-1}``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax import pyramid
from msrnn_jax.cells import CELLS
from msrnn_jax.conv import Conv, resolve_impl

REMAT_MODES = ("none", "step", "cell")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def remat_policy(name: str):
  """``jax.checkpoint_policies.<name>``, with a clear error for unknown names."""
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or name.startswith("_"):
    valid = [n for n in dir(jax.checkpoint_policies) if not n.startswith("_")]
    raise ValueError(f"Unknown remat_policy {name!r}; valid: {', '.join(valid)}.")
  return policy


def decouple_term(adapter: nn.Module, delta_c: jax.Array, delta_m: jax.Array) -> jax.Array:
  """PredRNN-V2's decoupling term of one layer, summed over channels.

  |cos| between the adapted increments of C and M, each flattened over space
  and L2-normalised per channel.

  Args:
    adapter: the shared 1x1 convolution.
    delta_c: ``[batch, h, w, hidden]``.
    delta_m: ``[batch, h, w, hidden]``.

  Returns:
    ``[batch]``.
  """
  a = adapter(delta_c).astype(jnp.float32)
  b = adapter(delta_m).astype(jnp.float32)
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=(1, 2), keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=(1, 2), keepdims=True), 1e-12)
  return jnp.sum(jnp.abs(jnp.sum(a * b, axis=(1, 2))), axis=-1)


class Step(nn.Module):
  """One time step of the whole network (see :class:`Predictor` for fields)."""

  cell: str = "convlstm"
  hidden: int = 64
  num_layers: int = 6
  kernel_size: int = 3
  channels: int = 1
  levels: tuple[int, ...] = (0,) * 6
  skip: str = "unet"
  impl: str = "xla"
  initializer: str = "torch"
  dtype: Any = jnp.float32
  links: int = 13
  motion_k: int = 3
  motion_alpha: float = 0.5
  remat: str = "none"
  remat_policy: str = "nothing_saveable"
  decouple: bool = False

  @nn.compact
  def __call__(self, carry, inputs):
    states, m, prev = carry
    frame, use_truth = inputs
    cell_cls = CELLS[self.cell]
    if self.remat == "cell":
      cell_cls = nn.remat(cell_cls, policy=remat_policy(self.remat_policy), prevent_cse=False)
    conv_kw = dict(impl=self.impl, initializer=self.initializer, dtype=self.dtype, kernel_size=1)
    lv = self.levels

    g = use_truth.astype(self.dtype)[:, None, None, None]
    x = g * frame.astype(self.dtype) + (1.0 - g) * prev
    x = Conv(self.hidden, in_features=self.channels, name="embed", **conv_kw)(x)
    x = pyramid.resample(x, 0, lv[0])
    if m is not None:
      # The top layer's M of step t-1 enters layer 0 of step t.
      m = pyramid.resample(m, lv[-1], lv[0])
    adapter = Conv(self.hidden, in_features=self.hidden, name="adapter",
                   **conv_kw) if self.decouple else None

    outs, new_states = [], []
    decouple = jnp.zeros(frame.shape[:1], jnp.float32)
    for l in range(self.num_layers):
      if l > 0:
        x = pyramid.layer_input(outs, lv, self.skip, l)
        if m is not None:
          m = pyramid.resample(m, lv[l - 1], lv[l])
      diag = None
      if cell_cls.uses_diagonal and l > 0:
        # H_{t-1}^{l-1}, moved to this layer's level without any skip term.
        diag = pyramid.resample(states[l - 1][0], lv[l - 1], lv[l])
      layer = cell_cls(hidden=self.hidden, kernel_size=self.kernel_size, layer=l,
                       num_layers=self.num_layers, impl=self.impl, initializer=self.initializer,
                       dtype=self.dtype, links=self.links, motion_k=self.motion_k,
                       motion_alpha=self.motion_alpha, name=f"layer_{l}")
      h, state, m, extras = layer(x, states[l], m, diag)
      outs.append(h)
      new_states.append(state)
      if adapter is not None:
        decouple = decouple + decouple_term(adapter, extras["delta_c"], extras["delta_m"])

    y = pyramid.resample(outs[-1], lv[-1], 0)
    y = Conv(self.channels, in_features=self.hidden, name="head", **conv_kw)(y)
    return (tuple(new_states), m, y), (y.astype(jnp.float32), decouple)


class Predictor(nn.Module):
  """MS-RNN / RNN next-frame predictor.

  Attributes:
    cell: cell name, a key of ``msrnn_jax.cells.CELLS``.
    multiscale: use the mirror pyramid (MS- variant) when ``levels`` is None.
    hidden: channels of every layer (64).
    num_layers: N (6).
    kernel_size: gate kernel size (3).
    channels: frame channels C.
    levels: per-layer pyramid level; None = mirror pyramid (MS) or all 0.
    skip: skip topology, one of ``pyramid.SKIPS``; None = the family's
      default: ``'unet'`` for MS- models, ``'none'`` for plain stacks (each
      layer reads only the layer below, as the reference's plain models).
    in_len: context length; inputs at steps t < in_len are always ground
      truth (unless ``reverse_scheduled_sampling``).
    reverse_scheduled_sampling: let the mask also replace input-phase frames
      (PredRNN-V2's reverse scheduled sampling); step 0 is always truth.
    remat: ``'none'``, ``'step'`` (checkpoint each time step) or ``'cell'``
      (checkpoint each cell).
    remat_policy: a ``jax.checkpoint_policies`` name.
    scan_unroll: ``nn.scan`` unroll factor (1 = rolled loop; >= T-1 = fully
      unrolled).
    conv_impl: convolution implementation (``msrnn_jax.conv.CONV_IMPLS``).
    dtype: compute dtype name (``'float32'``, ``'bfloat16'``); parameters
      stay float32.
    initializer: ``'torch'`` (PyTorch defaults, as the reference) or ``'flax'``.
    links: TrajGRU links L.
    motion_k: MotionGRU filter size.
    motion_alpha: MotionGRU trend momentum.
    decouple: compute PredRNN-V2's decoupling loss term.
  """

  cell: str = "convlstm"
  multiscale: bool = False
  hidden: int = 64
  num_layers: int = 6
  kernel_size: int = 3
  channels: int = 1
  levels: tuple[int, ...] | None = None
  skip: str | None = None
  in_len: int = 10
  reverse_scheduled_sampling: bool = False
  remat: str = "none"
  remat_policy: str = "nothing_saveable"
  scan_unroll: int = 1
  conv_impl: str = "auto"
  dtype: str = "float32"
  initializer: str = "torch"
  links: int = 13
  motion_k: int = 3
  motion_alpha: float = 0.5
  decouple: bool = False

  def pyramid_levels(self) -> tuple[int, ...]:
    """The level of each layer."""
    if self.levels is not None:
      levels = tuple(int(v) for v in self.levels)
      if len(levels) != self.num_layers or min(levels) < 0:
        raise ValueError(f"levels {levels} must give one non-negative level per layer "
                         f"({self.num_layers} layers).")
      return levels
    if self.multiscale:
      return pyramid.mirror_levels(self.num_layers)
    return (0,) * self.num_layers

  def skip_topology(self) -> str:
    """The skip topology used: ``skip``, or the family default."""
    if self.skip is not None:
      return self.skip
    return "unet" if self.multiscale else "none"

  def size_multiple(self) -> int:
    """Frame height and width must be multiples of this."""
    return pyramid.pyramid_factor(self.pyramid_levels(), CELLS[self.cell].extra_factor)

  def check_frames(self, frames: jax.Array) -> None:
    """Raises ``ValueError`` naming the problem for a malformed frame batch."""
    if frames.ndim != 5:
      raise ValueError(f"frames must be [batch, time, height, width, channels]; got shape "
                       f"{frames.shape}.")
    b, t, h, w, c = frames.shape
    if c != self.channels:
      raise ValueError(f"frames have {c} channels but the model expects {self.channels}; "
                       f"set model channels (config data.channels) to {c}.")
    if t < 2:
      raise ValueError(f"need at least 2 frames to predict one; got {t}.")
    k = self.size_multiple()
    for name, size in (("height", h), ("width", w)):
      if size % k:
        raise ValueError(
            f"frame {name} {size} is not a multiple of {k}, which the pyramid levels "
            f"{self.pyramid_levels()} of {self.cell} need; resize or crop frames to a multiple "
            f"of {k} (e.g. {max(k, size // k * k)}).")

  def _validate(self) -> None:
    if self.cell not in CELLS:
      raise ValueError(f"Unknown cell {self.cell!r}; valid: {', '.join(CELLS)}.")
    if self.remat not in REMAT_MODES:
      raise ValueError(f"Unknown remat {self.remat!r}; valid: {', '.join(REMAT_MODES)}.")
    if self.dtype not in DTYPES:
      raise ValueError(f"Unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}.")
    if self.skip_topology() not in pyramid.SKIPS:
      raise ValueError(f"Unknown skip {self.skip!r}; valid: {', '.join(pyramid.SKIPS)}.")
    remat_policy(self.remat_policy)

  def initial_carry(self, batch: int, height: int, width: int):
    """Zero states for every layer, zero M and a zero previous prediction."""
    dtype = DTYPES[self.dtype]
    levels = self.pyramid_levels()
    cell_cls = CELLS[self.cell]
    states = []
    for l, lv in enumerate(levels):
      spec = cell_cls.state_spec(self.hidden, l, self.num_layers, motion_k=self.motion_k)
      states.append(tuple(
          jnp.zeros((batch, height // (2 ** lv * div), width // (2 ** lv * div), ch), dtype)
          for ch, div in spec))
    m = None
    if cell_cls.uses_memory:
      top = levels[-1]
      m = jnp.zeros((batch, height // 2 ** top, width // 2 ** top, self.hidden), dtype)
    prev = jnp.zeros((batch, height, width, self.channels), dtype)
    return tuple(states), m, prev

  def truth_mask(self, mask: jax.Array | None, batch: int, steps: int) -> jax.Array:
    """The per-step ground-truth weights actually used, ``[batch, steps]``."""
    t = jnp.arange(steps)
    if mask is None:
      # Evaluation: the whole context is truth, also under reverse scheduled
      # sampling (the reference tests PredRNN-V2 at eta_r = 1).
      return jnp.broadcast_to((t < self.in_len).astype(jnp.float32), (batch, steps))
    forced = t < (1 if self.reverse_scheduled_sampling else self.in_len)
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
    self._validate()
    self.check_frames(frames)
    b, t, h, w, _ = frames.shape
    mask = self.truth_mask(mask, b, t - 1)
    step_cls = Step
    if self.remat == "step":
      # prevent_cse=False is safe (and faster) inside a scan.
      step_cls = nn.remat(Step, policy=remat_policy(self.remat_policy), prevent_cse=False)
    scan = nn.scan(step_cls, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, length=t - 1, unroll=max(1, min(self.scan_unroll, t - 1)))
    step = scan(cell=self.cell, hidden=self.hidden, num_layers=self.num_layers,
                kernel_size=self.kernel_size, channels=self.channels,
                levels=self.pyramid_levels(), skip=self.skip_topology(), impl=resolve_impl(self.conv_impl),
                initializer=self.initializer, dtype=DTYPES[self.dtype], links=self.links,
                motion_k=self.motion_k, motion_alpha=self.motion_alpha, remat=self.remat,
                remat_policy=self.remat_policy, decouple=self.decouple,
                # An explicit name keeps the parameter tree identical whatever
                # the remat setting.
                name="step")
    carry, (preds, decouple) = step(self.initial_carry(b, h, w), (frames[:, :-1], mask))
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
  preds, _ = model.clone(in_len=tc, reverse_scheduled_sampling=False).apply(variables, frames)
  return preds[:, tc - 1:]
