"""What defines a model, declared once: :class:`ModelConfig`.

It holds every hyper-parameter; ``Predictor``, its time step and the cells
all read this one frozen (hashable) object, so a field is never repeated
down the stack, and it validates itself when it is made.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from msrnn_jax import backend
from msrnn_jax.model import pyramid

REMAT_MODES = ("none", "step", "cell")
# scan_unroll='auto' unrolls the time loop fully, for the model variants that
# gain from it (``Family.unroll``), where the frame-sized float32 state map
# (batch x H x W x hidden) takes at least this many bytes (the paper's shape:
# 1 MiB per example). Below it, as in tests and quick runs, a step is short and
# the unrolled program's longer compile is the larger cost (docs/performance.md).
AUTO_UNROLL_MIN_STATE_BYTES = 1 << 20
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INITS = ("torch", "flax")


class ConfigValueError(ValueError):
  """A model hyper-parameter that cannot work: ``field=value: rule``."""

  def __init__(self, field: str, value: Any, rule: str):
    super().__init__(f"{field}={value!r}: {rule}.")
    self.field, self.value, self.rule = field, value, rule


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
    scan_unroll: the time loop's unroll factor (1 = rolled, >= T-1 = fully
      unrolled), or ``'auto'``: fully unrolled at large frames, for the
      model variants that gain from it (:meth:`time_unroll`).
    dtype: compute dtype name (``'float32'``, ``'bfloat16'``), or ``'auto'``
      (``backend.fast_dtype``); parameters stay float32.
    conv_impl: the convolution kernel, one of ``backend.CONV_IMPLS``;
      ``create`` (default ``'auto'``) resolves the ``'auto'`` values once.
    warp_impl: the flow warp of the warping families, one of
      ``backend.WARP_IMPLS`` (``create``'s default ``'auto'``).
    initializer: ``'torch'`` (PyTorch defaults, as the reference) or ``'flax'``.
    options: the family's own options (TrajGRU's ``links``...) as sorted
      ``(name, value)`` pairs; :meth:`option` reads them, with the cell's defaults.
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
  scan_unroll: int | str = "auto"
  dtype: str = "float32"
  conv_impl: str = "xla"
  warp_impl: str = "xla"
  initializer: str = "torch"
  options: tuple[tuple[str, Any], ...] = ()

  @property
  def spec(self):
    """The family's :class:`msrnn_jax.model.cells.Family`."""
    from msrnn_jax.model.cells import FAMILIES
    return FAMILIES[self.family]

  @property
  def compute_dtype(self):
    """The dtype convolutions and gates compute in."""
    if self.dtype == "auto":
      raise ValueError("dtype='auto' is resolved by create() or ModelConfig.resolved().")
    return DTYPES[self.dtype]

  def resolved(self) -> "ModelConfig":
    """This config with the kernels and ``dtype`` decided for this platform."""
    impl = backend.resolve(self.conv_impl)
    dtype = backend.fast_dtype(impl) if self.dtype == "auto" else self.dtype
    return dataclasses.replace(self, conv_impl=impl, dtype=dtype,
                               warp_impl=backend.resolve_warp(self.warp_impl))

  @property
  def checkpoint_policy(self):
    """``jax.checkpoint_policies.<remat_policy>``."""
    return getattr(jax.checkpoint_policies, self.remat_policy)

  def option(self, key: str) -> Any:
    """A family option: the configured value, else the cell's default."""
    return dict(self.options).get(key, self.spec.options[key])

  def pyramid_levels(self) -> tuple[int, ...]:
    """The level of each layer."""
    if self.levels is not None:
      return tuple(int(v) for v in self.levels)
    if self.multiscale:
      return pyramid.mirror_levels(self.num_layers)
    return (0,) * self.num_layers

  def skip_topology(self) -> str:
    """The skip topology used: ``skip``, or the family default."""
    if self.skip is not None:
      return self.skip
    return "unet" if self.multiscale else "none"

  def time_unroll(self, inputs_shape: tuple[int, ...]) -> int:
    """The unroll factor of the time loop over inputs of ``inputs_shape``.

    Args:
      inputs_shape: the loop's per-step input frames, ``[batch, steps, H, W,
        C]`` as traced (the global batch under data parallelism).

    Returns:
      ``scan_unroll`` clipped to ``[1, steps]``; for ``'auto'``, ``steps``
      without remat, where the family lists this variant (``'ms_'`` for a
      pyramid, then the compute dtype) in ``Family.unroll`` and the
      frame-sized state map takes ``AUTO_UNROLL_MIN_STATE_BYTES`` or more;
      else 1.
    """
    b, steps, h, w, _ = inputs_shape
    if self.scan_unroll == "auto":
      variant = ("ms_" if max(self.pyramid_levels()) else "") + self.dtype
      large = b * h * w * self.hidden * 4 >= AUTO_UNROLL_MIN_STATE_BYTES
      # Rematerialised loops stay rolled: they are chosen for memory.
      return steps if large and variant in self.spec.unroll and self.remat == "none" else 1
    return max(1, min(self.scan_unroll, steps))

  def auto_unrolls(self, inputs_shape: tuple[int, ...]) -> bool:
    """Whether ``scan_unroll='auto'`` unrolls the time loop over ``inputs_shape``."""
    return self.scan_unroll == "auto" and self.time_unroll(inputs_shape) > 1

  def size_multiple(self) -> int:
    """Frame height and width must be multiples of this."""
    return pyramid.pyramid_factor(self.pyramid_levels(), self.spec.cell.extra_factor)

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises :class:`ConfigValueError` for the first value that cannot work (run when made)."""
    from msrnn_jax.model.cells import FAMILIES
    policies = tuple(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
    for field, valid in (("family", tuple(FAMILIES)), ("remat", REMAT_MODES),
                         ("dtype", (*DTYPES, "auto")), ("conv_impl", backend.CONV_IMPLS),
                         ("warp_impl", backend.WARP_IMPLS),
                         ("initializer", INITS), ("skip", (None, *pyramid.SKIPS)),
                         ("remat_policy", policies)):
      if getattr(self, field) not in valid:
        raise ConfigValueError(field, getattr(self, field), f"use one of {valid}")
    def positive_int(value):
      return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for field in ("hidden", "num_layers", "kernel_size", "channels", "in_len"):
      if not positive_int(getattr(self, field)):
        raise ConfigValueError(field, getattr(self, field), "must be an integer >= 1")
    if self.scan_unroll != "auto" and not positive_int(self.scan_unroll):
      raise ConfigValueError("scan_unroll", self.scan_unroll, "must be an integer >= 1 or 'auto'")
    own = self.spec.options
    for key, value in self.options:
      if key not in own:
        raise ConfigValueError(key, value, f"{self.family} has no such option; its options: "
                               f"{', '.join(own) or 'none'}")
    if self.levels is not None and (len(self.levels) != self.num_layers or min(self.levels) < 0):
      raise ConfigValueError("levels", self.levels, f"give one non-negative level per layer "
                             f"({self.num_layers} layers)")
