"""ConvLSTM (Shi et al. 2015)."""

from typing import ClassVar

from msrnn_jax.backend.gates import lstm_update
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import fused_conv


class ConvLSTMCell(CellBase):
  """ConvLSTM (Shi et al. 2015), no peepholes, no forget bias.

  ``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f) C + s(i) tanh(g)``;
  ``H' = s(o) tanh(C')``. State ``(H, C)``.
  """

  units: ClassVar[int] = 6

  def setup(self):
    self.conv_x = self.conv(4 * self.hidden)
    self.conv_h = self.conv(4 * self.hidden)

  def __call__(self, x, state, m=None, diag=None):
    h, c = state
    h, c = lstm_update(fused_conv([self.conv_x, self.conv_h], [x, h]), c)
    return h, (h, c), m, {}
