"""PrecipLSTM (Ma et al. 2022): local attention, then ConvLSTM with three more memories."""

from typing import ClassVar

from msrnn_jax.backend.gates import gated_tanh, memory_update
from msrnn_jax.model.attention import local_attention
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import conv_of_parts, fused_conv, split_gates


class PrecipLSTMCell(CellBase):
  """PrecipLSTM: local attention on the input, then four memories share one output gate.

  Local attention: ``X_a = X + conv_att(LA(att_q(X), att_k(X), att_v(X)))``
  (bias-free 1x1 query, key and value; ``LA`` is
  :func:`msrnn_jax.model.attention.local_attention` over an
  ``attention_window``-sided window). With ``D = X_{t-1}``, this layer's own
  input at the previous step (zeros at t = 0):

  * ConvLSTM: ``[i, f, g, o] = conv_x(X_a) + conv_h(H)``, ``C' = s(f) C + s(i) tanh(g)``;
  * PredRNN's M (zig-zag): ``[i, f, g] = conv_xm(X_a) + conv_mm(M)``, ``M' = s(f) M + s(i) tanh(g)``;
  * spatial memory: ``[i, f, g] = conv_xs(X_a) + conv_ss(S)``, S' likewise;
  * temporal-difference memory: ``[i, f, g] = conv_xt(X - D) + conv_tt(T)``, T' likewise;
  * ``o = s(o + conv_co(C') + conv_so(S') + conv_to(T') + conv_mo(M'))``,
    ``H' = o tanh(conv_last([C', S', T', M']))`` (1x1).

  State ``(H, C, S, T, X)``: the cell keeps its input for the next step's
  difference (in an MS stack, after resampling and skips, as the reference).
  """

  zigzag_m: ClassVar[bool] = True
  # The local attention's window side (the reference's la_num).
  options: ClassVar[dict] = {"attention_window": 30}
  # q, k, v, attended map, X_a; 4 + 3 x 3 gates; C, M, S, T; X - D; H; the kept X.
  units: ClassVar[int] = 25

  def setup(self):
    hd = self.hidden
    self.att_q = self.conv(hd, kernel_size=1, use_bias=False)
    self.att_k = self.conv(hd, kernel_size=1, use_bias=False)
    self.att_v = self.conv(hd, kernel_size=1, use_bias=False)
    self.conv_att = self.conv(hd)
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)
    self.conv_xm = self.conv(3 * hd)
    self.conv_mm = self.conv(3 * hd)
    self.conv_xs = self.conv(3 * hd)
    self.conv_ss = self.conv(3 * hd)
    self.conv_xt = self.conv(3 * hd)
    self.conv_tt = self.conv(3 * hd)
    self.conv_co = self.conv(hd)
    self.conv_so = self.conv(hd)
    self.conv_to = self.conv(hd)
    self.conv_mo = self.conv(hd)
    self.conv_last = self.conv(hd, in_features=4 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, config, layer):
    return ((config.hidden, 1),) * 5

  def __call__(self, x, state, m, diag=None):
    h, c, s, t, x_prev = state
    att = local_attention(self.att_q(x), self.att_k(x), self.att_v(x),
                          self.option("attention_window"))
    xa = x + self.conv_att(att)
    i, f, g, o = split_gates(fused_conv([self.conv_x, self.conv_h], [xa, h]), 4)
    c = memory_update(i, f, g, c)
    # M, S and T are kept by their own updates: the convolutions share them.
    m = memory_update(
        *split_gates(fused_conv([self.conv_xm, self.conv_mm], [xa, m], kept=[m]), 3), m)
    s = memory_update(
        *split_gates(fused_conv([self.conv_xs, self.conv_ss], [xa, s], kept=[s]), 3), s)
    t = memory_update(
        *split_gates(fused_conv([self.conv_xt, self.conv_tt], [x - x_prev, t], kept=[t]), 3), t)
    o = o + fused_conv([self.conv_co, self.conv_so, self.conv_to, self.conv_mo], [c, s, t, m])
    h = gated_tanh(o, conv_of_parts([self.conv_last], [c, s, t, m]))
    return h, (h, c, s, t, x), m, {}
