"""PredRNN++'s Causal LSTM with the Gradient Highway Unit (Wang et al. 2018)."""

from typing import ClassVar

import jax.numpy as jnp

from msrnn_jax.backend.gates import gated_tanh, highway_update, memory_update
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import conv_of_parts, fused_conv, split_gates


class CausalLSTMCell(CellBase):
  """PredRNN++'s Causal LSTM, with the Gradient Highway Unit inside layer 1.

  GHU (layer 1 only): ``[p, s] = conv_x(X) + conv_z(Z)``,
  ``Z' = s(s) tanh(p) + (1 - s(s)) Z``; Z' replaces X.
  ``[i,f,g] = conv_a([X,H,C])``, ``C' = s(f) C + s(i) tanh(g)``;
  ``[i',f',g'] = conv_b([X,C',M])``, ``M' = s(f') tanh(conv1x1_m(M)) + s(i') tanh(g')``;
  ``o = tanh(conv_o([X,C',M']))`` (tanh, as the reference);
  ``H' = o tanh(conv1x1([C', M']))``. State ``(H, C)``, plus ``Z`` in layer 1.

  Only layer 1 creates GHU parameters; the reference instantiates (unused)
  GHU convolutions in every layer, so its count is 5 x 147,712 higher.
  """

  zigzag_m: ClassVar[bool] = True
  units: ClassVar[int] = 10

  @staticmethod
  def has_ghu(layer: int, num_layers: int) -> bool:
    return layer == 1 and num_layers > 1

  def setup(self):
    hd = self.hidden
    if self.has_ghu(self.layer, self.num_layers):
      self.ghu_x = self.conv(2 * hd)
      self.ghu_z = self.conv(2 * hd)
    self.conv_a = self.conv(3 * hd, in_features=3 * hd)
    self.conv_b = self.conv(3 * hd, in_features=3 * hd)
    self.conv_m = self.conv(hd, kernel_size=1)
    self.conv_o = self.conv(hd, in_features=3 * hd)
    self.conv_last = self.conv(hd, in_features=2 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, config, layer):
    extra = ((config.hidden, 1),) if cls.has_ghu(layer, config.num_layers) else ()
    return ((config.hidden, 1), (config.hidden, 1)) + extra

  def __call__(self, x, state, m, diag=None):
    if self.has_ghu(self.layer, self.num_layers):
      h, c, z = state
      p, s = split_gates(fused_conv([self.ghu_x, self.ghu_z], [x, z], kept=[z]), 2)
      z = highway_update(p, s, z)
      x = z
      extra = (z,)
    else:
      h, c = state
      extra = ()
    i, f, g = split_gates(conv_of_parts([self.conv_a], [x, h, c], kept=[c]), 3)
    c = memory_update(i, f, g, c)
    im, fm, gm = split_gates(conv_of_parts([self.conv_b], [x, c, m]), 3)
    m = gated_tanh(fm, self.conv_m(m)) + gated_tanh(im, gm)
    o = jnp.tanh(conv_of_parts([self.conv_o], [x, c, m]))
    h = o * jnp.tanh(conv_of_parts([self.conv_last], [c, m]))
    return h, (h, c) + extra, m, {}
