"""What defines a model, declared once: :class:`ModelConfig` and the families.

A model name (``convlstm``, ``ms_predrnn``, ...) is a family from
``msrnn_jax.model.cells.FAMILIES`` (its cell and family-wide switches),
optionally with the ``ms_`` prefix (the mirror pyramid and UNet skips).
:class:`ModelConfig` holds every hyper-parameter; ``Predictor``, its time
step and the cells all read this one frozen (hashable) object, so a field
is never repeated down the stack.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from msrnn_jax import backend
from msrnn_jax.model import pyramid

REMAT_MODES = ("none", "step", "cell")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INITS = ("torch", "flax")


def remat_policy(name: str):
  """``jax.checkpoint_policies.<name>``, with a clear error for unknown names."""
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or name.startswith("_"):
    valid = [n for n in dir(jax.checkpoint_policies) if not n.startswith("_")]
    raise ValueError(f"Unknown remat_policy {name!r}; valid: {', '.join(valid)}.")
  return policy


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every hyper-parameter of a predictor.

  Attributes:
    family: a key of ``msrnn_jax.model.cells.FAMILIES`` (``'convlstm'``...).
    multiscale: the MS- variant: mirror pyramid (when ``levels`` is None)
      and UNet skips (when ``skip`` is None).
    hidden: channels of every layer (64).
    num_layers: N (6).
    kernel_size: gate kernel size (3).
    channels: frame channels C.
    levels: per-layer pyramid level; None = mirror pyramid (MS) or all 0.
    skip: skip topology, one of ``pyramid.SKIPS``; None = the family
      default: ``'unet'`` for MS- models, ``'none'`` for plain stacks (each
      layer reads only the layer below, as the reference's plain models).
    in_len: context length; inputs at steps t < in_len are ground truth
      (unless reverse scheduled sampling).
    remat: ``'none'``, ``'step'`` (checkpoint each time step) or ``'cell'``.
    remat_policy: a ``jax.checkpoint_policies`` name.
    scan_unroll: ``nn.scan`` unroll factor (1 = rolled loop).
    dtype: compute dtype name (``'float32'``, ``'bfloat16'``), or ``'auto'``:
      bfloat16 where the platform's convolutions have native bfloat16
      kernels, else float32 (``backend.fast_dtype``); parameters stay float32.
    conv_impl: the convolution kernel, one of ``backend.CONV_IMPLS``
      (``'auto'``, ``create``'s default: the platform's fastest).
      :meth:`resolved` turns both ``'auto'`` values into concrete ones, once,
      when ``create`` builds the model; the model reads only those.
    initializer: ``'torch'`` (PyTorch defaults, as the reference) or ``'flax'``.
    options: the family's own options (TrajGRU's ``links``, MotionRNN's
      ``motion_k``...) as sorted ``(name, value)`` pairs; read them with
      :meth:`option`, whose defaults come from the cell class.
  """

  family: str = "convlstm"
  multiscale: bool = False
  hidden: int = 64
  num_layers: int = 6
  kernel_size: int = 3
  channels: int = 1
  levels: tuple[int, ...] | None = None
  skip: str | None = None
  in_len: int = 10
  remat: str = "none"
  remat_policy: str = "nothing_saveable"
  scan_unroll: int = 1
  dtype: str = "float32"
  conv_impl: str = "xla"
  initializer: str = "torch"
  options: tuple[tuple[str, Any], ...] = ()

  @property
  def name(self) -> str:
    """The model's registry name, e.g. ``'ms_predrnn'``."""
    return f"ms_{self.family}" if self.multiscale else self.family

  @property
  def spec(self):
    """The family's :class:`msrnn_jax.model.cells.Family`."""
    from msrnn_jax.model.cells import FAMILIES
    if self.family not in FAMILIES:
      raise ValueError(f"Unknown cell family {self.family!r}; valid: {', '.join(FAMILIES)}.")
    return FAMILIES[self.family]

  @property
  def compute_dtype(self):
    """The dtype convolutions and gates compute in (of a resolved config)."""
    if self.dtype == "auto":
      raise ValueError("dtype='auto' is unresolved; build the model with create(), or use "
                       "ModelConfig.resolved().")
    return DTYPES[self.dtype]

  def resolved(self) -> "ModelConfig":
    """This config with ``conv_impl`` and ``dtype`` decided for this platform.

    Raises:
      RuntimeError: ``conv_impl='onednn'`` where oneDNN cannot run.
    """
    impl = backend.resolve(self.conv_impl)
    dtype = backend.fast_dtype(impl) if self.dtype == "auto" else self.dtype
    return dataclasses.replace(self, conv_impl=impl, dtype=dtype)

  def option(self, key: str) -> Any:
    """A family option: the configured value, else the cell's default."""
    return dict(self.options).get(key, self.spec.cell.options[key])

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
    return pyramid.pyramid_factor(self.pyramid_levels(), self.spec.cell.extra_factor)

  def validate(self) -> None:
    """Raises ``ValueError`` naming the first value that cannot work."""
    spec = self.spec
    if self.remat not in REMAT_MODES:
      raise ValueError(f"Unknown remat {self.remat!r}; valid: {', '.join(REMAT_MODES)}.")
    if self.dtype not in (*DTYPES, "auto"):
      raise ValueError(f"Unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}, auto.")
    if self.conv_impl not in backend.CONV_IMPLS:
      raise ValueError(f"Unknown conv_impl {self.conv_impl!r}; valid: "
                       f"{', '.join(backend.CONV_IMPLS)}.")
    if self.initializer not in INITS:
      raise ValueError(f"Unknown initializer {self.initializer!r}; valid: {', '.join(INITS)}.")
    if self.skip_topology() not in pyramid.SKIPS:
      raise ValueError(f"Unknown skip {self.skip!r}; valid: {', '.join(pyramid.SKIPS)}.")
    unknown = sorted(set(dict(self.options)) - set(spec.cell.options))
    if unknown:
      raise ValueError(f"{self.family} has no option(s) {unknown}; its options: "
                       f"{', '.join(spec.cell.options) or 'none'}.")
    remat_policy(self.remat_policy)
    self.pyramid_levels()
