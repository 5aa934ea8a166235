"""PredRNN's spatiotemporal LSTM (Wang et al. 2017), also PredRNN-V2's cell."""

from typing import ClassVar

from msrnn_jax.backend.gates import gated_tanh, memory_update_with_increment
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import conv_of_parts, fused_conv, split_gates


class STLSTMCell(CellBase):
  """PredRNN's spatiotemporal LSTM (ST-LSTM).

  ``[i,f,g,o] = conv_x(X) + conv_h(H)``, ``C' = s(f) C + s(i) tanh(g)``;
  ``[i',f',g'] = conv_xm(X) + conv_mm(M)``, ``M' = s(f') M + s(i') tanh(g')``;
  ``o = s(o + conv_co(C') + conv_mo(M'))``; ``H' = o tanh(conv1x1([C', M']))``.
  State ``(H, C)``; M zig-zags through the stack. ``extras`` holds
  the increments ``s(i) tanh(g)`` and ``s(i') tanh(g')`` for PredRNN-V2's
  decoupling loss.
  """

  zigzag_m: ClassVar[bool] = True
  units: ClassVar[int] = 10

  def setup(self):
    self.setup_st_lstm()

  def setup_st_lstm(self):
    """The ST-LSTM convolutions (also MIM's core)."""
    hd = self.hidden
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)
    self.conv_xm = self.conv(3 * hd)
    self.conv_mm = self.conv(3 * hd)
    self.conv_co = self.conv(hd)
    self.conv_mo = self.conv(hd)
    self.conv_last = self.conv(hd, in_features=2 * hd, kernel_size=1)

  def __call__(self, x, state, m, diag=None):
    h, c = state
    i, f, g, o = split_gates(fused_conv([self.conv_x, self.conv_h], [x, h]), 4)
    c, delta_c = memory_update_with_increment(i, f, g, c)
    im, fm, gm = split_gates(fused_conv([self.conv_xm, self.conv_mm], [x, m], kept=[m]), 3)
    m, delta_m = memory_update_with_increment(im, fm, gm, m)
    h = gated_tanh(o + fused_conv([self.conv_co, self.conv_mo], [c, m]),
                   conv_of_parts([self.conv_last], [c, m]))
    # For PredRNN-V2's decoupling loss (unread elsewhere).
    extras = {"increments": (delta_c, delta_m)}
    return h, (h, c), m, extras
