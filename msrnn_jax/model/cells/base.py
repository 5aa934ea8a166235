"""The interface every recurrent cell implements.

A cell is a Flax module called once per time step as::

    h, new_state, m, extras = cell(x, state, m, diag)

* ``x``: the layer input ``[batch, h, w, hidden]`` at the layer's resolution.
* ``state``: the cell's own temporal states (a tuple; ``state[0]`` is always
  the layer output H of the previous step, which the next layer reads as
  MIM's diagonal input).
* ``m``: the zig-zag spatiotemporal memory M (cells with ``zigzag_m``),
  else None.
* ``diag``: MIM's diagonal input H_{t-1}^{l-1} (cells with
  ``uses_diagonal``), else None; zeros for layer 0.
* ``extras``: a dict of auxiliary outputs (PredRNN-V2's ``increments``).

Every hyper-parameter comes from the one ``ModelConfig`` (``self.config``),
the cell's own ones declared in ``options``. Equations follow the authors'
PyTorch code (``docs/model.md``); convolutions whose outputs are summed are
fused into one call over stacked inputs (same parameters and numbers).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax

from msrnn_jax.model.config import ModelConfig
from msrnn_jax.model.layers import Conv

State = tuple[jax.Array, ...]


class CellBase(nn.Module):
  """What all cells share.

  Attributes:
    config: the model's hyper-parameters.
    layer: index of this layer in the stack (some cells depend on it).
  """

  config: ModelConfig
  layer: int = 0

  # Carries the zig-zag memory M through the stack (PredRNN-style cells).
  zigzag_m: ClassVar[bool] = False
  # Reads MIM's diagonal input H_{t-1}^{l-1}.
  uses_diagonal: ClassVar[bool] = False
  # Extra multiple of 2 that frame sizes need beyond the pyramid (MotionGRU
  # runs at half the layer's resolution).
  extra_factor: ClassVar[int] = 0
  # The cell's own options and their defaults (ModelConfig.option), and those
  # that change the parameter tree (a checkpoint records and checks them).
  options: ClassVar[dict[str, Any]] = {}
  state_options: ClassVar[tuple[str, ...]] = ()
  # U of the paper's memory estimate (eq. 3-5): hidden-sized maps the cell
  # is counted with per layer and step (msrnn_jax.analysis.footprint).
  units: ClassVar[int] = 0

  @property
  def hidden(self) -> int:
    return self.config.hidden

  @property
  def num_layers(self) -> int:
    return self.config.num_layers

  def option(self, key: str) -> Any:
    return self.config.option(key)

  def conv(self, features: int, in_features: int | None = None, kernel_size: int | None = None,
           **kwargs) -> Conv:
    """A ``Conv`` with this cell's settings (call from ``setup``)."""
    return Conv(features=features, in_features=in_features or self.hidden,
                kernel_size=kernel_size or self.config.kernel_size,
                initializer=self.config.initializer, dtype=self.config.compute_dtype,
                conv_impl=self.config.conv_impl, **kwargs)

  @classmethod
  def state_spec(cls, config: ModelConfig, layer: int) -> tuple[tuple[int, int], ...]:
    """Per state: (channels, spatial divisor relative to the layer resolution); (H, C) here."""
    return ((config.hidden, 1), (config.hidden, 1))

  @classmethod
  def paper_units(cls, config: ModelConfig) -> int:
    """U of eq. 3-5 for this cell under ``config``."""
    return cls.units
