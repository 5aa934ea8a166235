"""Memory In Memory (Wang et al. 2019)."""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from msrnn_jax.backend.gates import gated_tanh, memory_update
from msrnn_jax.model.cells.st_lstm import STLSTMCell
from msrnn_jax.model.layers import conv_of_parts, fused_conv, split_gates


class MIMCell(STLSTMCell):
  """Memory In Memory (Wang et al. 2019): MIM-N, MIM-S and an ST-LSTM core.

  Inputs ``X = H_t^{l-1}`` and the diagonal ``D = H_{t-1}^{l-1}`` (zeros in
  layer 0).
  MIM-N: ``[i,f,g] = conv(X-D) + conv(N)``, ``N' = s(f) N + s(i) tanh(g)``,
  ``o_n = s(conv(X-D) + conv(N'))``, ``Dif = o_n tanh(N')``.
  MIM-S: ``[i,f,g,o] = conv(Dif) + conv(C)``, ``S' = s(f) S + s(i) tanh(g)``,
  ``T = s(o + conv(S')) tanh(S')``.
  Core: as ST-LSTM except ``C' = T + s(i) tanh(g)`` in layers >= 1 (layer 0
  keeps the usual forget-gate update). State ``(H, C, N, S)``.

  In layer 0 the MIM-N/MIM-S outputs are never used (the reference computes
  and carries them anyway). We create their parameters, so the parameter
  count equals the reference's, but skip computing them after
  initialisation: the outputs are identical and those parameters get zero
  gradients.
  """

  uses_diagonal: ClassVar[bool] = True
  units: ClassVar[int] = 22

  def setup(self):
    hd = self.hidden
    self.n_x = self.conv(3 * hd)
    self.n_h = self.conv(3 * hd)
    self.n_ox = self.conv(hd)
    self.n_on = self.conv(hd)
    self.s_x = self.conv(4 * hd)
    self.s_c = self.conv(4 * hd)
    self.s_o = self.conv(hd)
    self.setup_st_lstm()

  @classmethod
  def state_spec(cls, config, layer):
    return ((config.hidden, 1),) * 4

  def mim(self, x, state, m, diag):
    """The MIM block; returns ``(H', C', N', S', M', o)``."""
    h, c, n, s = state[:4]
    if diag is None:
      diag = jnp.zeros_like(x)
    t = None
    if self.layer > 0 or self.is_initializing():
      xd = x - diag
      i_n, f_n, g_n = split_gates(fused_conv([self.n_x, self.n_h], [xd, n], kept=[n]), 3)
      n = memory_update(i_n, f_n, g_n, n)
      dif = gated_tanh(fused_conv([self.n_ox, self.n_on], [xd, n]), n)
      i_s, f_s, g_s, o_s = split_gates(fused_conv([self.s_x, self.s_c], [dif, c]), 4)
      s = memory_update(i_s, f_s, g_s, s)
      t = gated_tanh(o_s + self.s_o(s), s)
    i, f, g, o = split_gates(fused_conv([self.conv_x, self.conv_h], [x, h]), 4)
    if self.layer == 0:
      c = memory_update(i, f, g, c)
    else:
      c = t + gated_tanh(i, g)
    im, fm, gm = split_gates(fused_conv([self.conv_xm, self.conv_mm], [x, m], kept=[m]), 3)
    m = memory_update(im, fm, gm, m)
    o = o + fused_conv([self.conv_co, self.conv_mo], [c, m])
    h = gated_tanh(o, conv_of_parts([self.conv_last], [c, m]))
    # MotionRNN's highway reads the output gate; MIM alone drops it.
    return h, c, n, s, m, nn.sigmoid(o)

  def __call__(self, x, state, m, diag=None):
    h, c, n, s, m, _ = self.mim(x, state, m, diag)
    return h, (h, c, n, s), m, {}
