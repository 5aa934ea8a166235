"""MoDeRNN (Chai et al. 2022): detail context blocks before a ConvLSTM."""

from typing import ClassVar

import flax.linen as nn
import jax

from msrnn_jax.backend.gates import lstm_update
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import fused_conv


class MoDeRNNCell(CellBase):
  """MoDeRNN: a detail context block (DCB) mutually gates X and H, then ConvLSTM.

  DCB, ``ce_iters`` rounds r = 1, 2, ...: odd rounds
  ``X <- 2 s(mean_k conv_hk(H)) X``, even rounds
  ``H <- 2 s(mean_k conv_xk(X)) H``, with k over 3x3, 5x5 and 7x7 kernels
  (the cell's own sizes, as in the reference).
  Then ConvLSTM on the gated pair: ``[i, f, g, o] = conv_x(X) + conv_h(H)``,
  ``C' = s(f) C + s(i) tanh(g)``, ``H' = s(o) tanh(C')``. State ``(H, C)``.
  """

  options: ClassVar[dict] = {"ce_iters": 5}

  def setup(self):
    hd = self.hidden
    # dcb_x* gate H from X, dcb_h* gate X from H.
    self.dcb_x3 = self.conv(hd, kernel_size=3)
    self.dcb_x5 = self.conv(hd, kernel_size=5)
    self.dcb_x7 = self.conv(hd, kernel_size=7)
    self.dcb_h3 = self.conv(hd, kernel_size=3)
    self.dcb_h5 = self.conv(hd, kernel_size=5)
    self.dcb_h7 = self.conv(hd, kernel_size=7)
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)

  @classmethod
  def paper_units(cls, config):
    # Each DCB round: a gate and the gated map; then ConvLSTM's 6.
    return 2 * config.option("ce_iters") + 6

  def detail_context(self, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The DCB rounds; returns the gated ``(X, H)``."""
    for r in range(1, self.option("ce_iters") + 1):
      if r % 2:
        x = 2.0 * nn.sigmoid((self.dcb_h3(h) + self.dcb_h5(h) + self.dcb_h7(h)) / 3.0) * x
      else:
        h = 2.0 * nn.sigmoid((self.dcb_x3(x) + self.dcb_x5(x) + self.dcb_x7(x)) / 3.0) * h
    return x, h

  def __call__(self, x, state, m=None, diag=None):
    h, c = state
    x, h = self.detail_context(x, h)
    h, c = lstm_update(fused_conv([self.conv_x, self.conv_h], [x, h]), c)
    return h, (h, c), m, {}
