"""MK-LSTM, the multi-kernel LSTM of MS-LSTM (Ma et al. 2023, arXiv:2304.07724)."""

from typing import ClassVar

from msrnn_jax.backend.gates import gated_tanh, memory_update
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import conv_of_parts, fused_conv, split_gates


class MKLSTMCell(CellBase):
  """MK-LSTM: two ConvLSTM paths with 3x3 and 5x5 kernels sharing one output gate.

  ``[i_k, f_k, g_k, o_k] = conv_xk(X) + conv_hk(H)`` and
  ``C_k' = s(f_k) C_k + s(i_k) tanh(g_k)`` for k = 3, 5;
  ``o = s(o_3 + o_5 + conv_c3(C_3') + conv_c5(C_5'))`` (3x3 and 5x5);
  ``H' = o tanh(conv_last([C_3', C_5']))`` (1x1). State ``(H, C_3, C_5)``.
  The kernel sizes are the cell's own (``kernel_size`` does not apply), as
  in the reference. Its MS variant is the authors' MS-LSTM.
  """

  units: ClassVar[int] = 11

  def setup(self):
    hd = self.hidden
    self.conv_x3 = self.conv(4 * hd, kernel_size=3)
    self.conv_h3 = self.conv(4 * hd, kernel_size=3)
    self.conv_x5 = self.conv(4 * hd, kernel_size=5)
    self.conv_h5 = self.conv(4 * hd, kernel_size=5)
    self.conv_c3 = self.conv(hd, kernel_size=3)
    self.conv_c5 = self.conv(hd, kernel_size=5)
    self.conv_last = self.conv(hd, in_features=2 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, config, layer):
    return ((config.hidden, 1),) * 3

  def __call__(self, x, state, m=None, diag=None):
    h, c3, c5 = state
    i3, f3, g3, o3 = split_gates(fused_conv([self.conv_x3, self.conv_h3], [x, h]), 4)
    i5, f5, g5, o5 = split_gates(fused_conv([self.conv_x5, self.conv_h5], [x, h]), 4)
    c3 = memory_update(i3, f3, g3, c3)
    c5 = memory_update(i5, f5, g5, c5)
    o = o3 + o5 + self.conv_c3(c3) + self.conv_c5(c5)
    h = gated_tanh(o, conv_of_parts([self.conv_last], [c3, c5]))
    return h, (h, c3, c5), m, {}
