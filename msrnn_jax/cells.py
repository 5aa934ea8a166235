"""The recurrent cells of MS-RNN, one shared interface.

Every cell is a Flax module called once per time step as::

    h, new_state, m, extras = cell(x, state, m, diag)

* ``x``: the layer input ``[batch, h, w, hidden]`` at the layer's resolution.
* ``state``: the cell's own temporal states (a tuple; ``state[0]`` is always
  the layer output H of the previous step, which the next layer reads as
  MIM's diagonal input).
* ``m``: the zig-zag spatiotemporal memory M (cells with
  ``uses_memory``), else None.
* ``diag``: MIM's diagonal input H_{t-1}^{l-1} (cells with
  ``uses_diagonal``), else None; zeros for layer 0.
* ``extras``: a dict of auxiliary outputs (PredRNN-V2's ``delta_c`` and
  ``delta_m``).

Equations follow the authors' PyTorch code (``docs/model.md``); the gate
chunks are split in the reference's order. Convolutions whose outputs are
summed are fused into one call over stacked inputs (same parameters, same
numbers, faster). The LSTM-style gate arithmetic goes through the fused
custom-VJP functions of ``msrnn_jax.gates`` (same values; the backward pass
keeps about half the residuals of autodiff).
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax.conv import Conv, fused_conv
from msrnn_jax.gates import gated_tanh, lstm_update, memory_update

State = tuple[jax.Array, ...]


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def bilinear_warp(image: jax.Array, flow: jax.Array) -> jax.Array:
  """Samples ``image`` at ``(x + dx, y + dy)`` for each of K flows, bilinearly.

  Sample points are in pixel units (zero flow is the identity); taps outside
  the image read zeros (``grid_sample`` with ``padding_mode='zeros'``).

  Args:
    image: ``[batch, height, width, channels]``.
    flow: ``[batch, height, width, K, 2]``; ``flow[..., 0]`` is the
      displacement along the width (x), ``flow[..., 1]`` along the height (y).

  Returns:
    ``[batch, height, width, K, channels]``.
  """
  b, h, w, c = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype),
                        indexing="ij")
  sx = xs[None, :, :, None] + flow[..., 0]
  sy = ys[None, :, :, None] + flow[..., 1]
  x0 = jnp.floor(sx)
  y0 = jnp.floor(sy)
  wx1 = sx - x0
  wy1 = sy - y0
  flat = image.reshape(b, h * w, c)
  k = flow.shape[3]
  out = jnp.zeros((b, h, w, k, c), image.dtype)
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      xi = x0 + dx
      yi = y0 + dy
      valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
      vals = jnp.take_along_axis(flat, idx.reshape(b, -1, 1), axis=1)
      weight = jnp.where(valid, wx * wy, 0.0).astype(image.dtype)
      out = out + vals.reshape(b, h, w, k, c) * weight[..., None]
  return out


class CellBase(nn.Module):
  """Fields shared by all cells.

  Attributes:
    hidden: hidden channels (64 in the paper); the layer input has as many.
    kernel_size: spatial kernel of the gate convolutions (3).
    layer: index of this layer in the stack (some cells depend on it).
    num_layers: depth of the stack.
    impl: convolution implementation (see ``msrnn_jax.conv``).
    initializer: ``'torch'`` or ``'flax'`` initialisation.
    dtype: compute dtype.
    links: TrajGRU's number of warped links L.
    motion_k: MotionGRU's filter size k (k*k flows).
    motion_alpha: MotionGRU's trend momentum alpha.
  """

  hidden: int = 64
  kernel_size: int = 3
  layer: int = 0
  num_layers: int = 1
  impl: str = "auto"
  initializer: str = "torch"
  dtype: Any = jnp.float32
  links: int = 13
  motion_k: int = 3
  motion_alpha: float = 0.5

  uses_memory: ClassVar[bool] = False
  uses_diagonal: ClassVar[bool] = False
  # Extra multiple of 2 that frame sizes need beyond the pyramid (MotionGRU
  # runs at half the layer's resolution).
  extra_factor: ClassVar[int] = 0

  def conv(self, features: int, in_features: int | None = None, kernel_size: int | None = None,
           **kwargs) -> Conv:
    """A ``Conv`` with this cell's settings (call from ``setup``)."""
    return Conv(features=features, in_features=in_features or self.hidden,
                kernel_size=kernel_size or self.kernel_size, impl=self.impl, initializer=self.initializer,
                dtype=self.dtype, **kwargs)

  @classmethod
  def state_spec(cls, hidden: int, layer: int, num_layers: int,
                 **options: Any) -> tuple[tuple[int, int], ...]:
    """Per state: (channels, spatial divisor relative to the layer resolution)."""
    raise NotImplementedError


class ConvLSTMCell(CellBase):
  """ConvLSTM (Shi et al. 2015), no peepholes, no forget bias.

  ``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f) C + s(i) tanh(g)``;
  ``H' = s(o) tanh(C')``. State ``(H, C)``.
  """

  def setup(self):
    self.conv_x = self.conv(4 * self.hidden)
    self.conv_h = self.conv(4 * self.hidden)

  @classmethod
  def state_spec(cls, hidden, layer, num_layers, **options):
    return ((hidden, 1), (hidden, 1))

  def __call__(self, x, state, m=None, diag=None):
    h, c = state
    h, c = lstm_update(fused_conv([self.conv_x, self.conv_h], [x, h]), c)
    return h, (h, c), m, {}


class TrajGRUCell(CellBase):
  """TrajGRU (Shi et al. 2017) with L learned warping links.

  A flow generator ``u = lrelu(conv_x2f(X) + conv_h2f(H))``,
  ``flows = conv_flow(u)`` (2L channels, pairs (dx, dy)) warps H along each
  negated flow; a 1x1 projection of the L warped maps gives the recurrent
  gate terms of a GRU with LeakyReLU(0.2) candidate. State ``(H,)``.

  Deviation from the reference (documented in ``docs/model.md``): PyTorch's
  code builds an ``align_corners=True`` grid but samples with
  ``align_corners=False``, so its sample point is ``(x+dx) W/(W-1) - 0.5``
  and zero flow is not the identity. We sample at the intended pixel
  ``x - dx`` exactly.
  """

  def setup(self):
    hd = self.hidden
    self.conv_x2h = self.conv(3 * hd)
    self.conv_x2f = self.conv(hd)
    self.conv_h2f = self.conv(hd)
    self.conv_flow = self.conv(2 * self.links)
    self.project = self.conv(3 * hd, in_features=hd * self.links, kernel_size=1)

  @classmethod
  def state_spec(cls, hidden, layer, num_layers, **options):
    return ((hidden, 1),)

  def __call__(self, x, state, m=None, diag=None):
    (h,) = state
    zx, rx, hx = jnp.split(self.conv_x2h(x), 3, axis=-1)
    u = leaky_relu(fused_conv([self.conv_x2f, self.conv_h2f], [x, h]))
    flows = self.conv_flow(u)
    b, hh, ww, _ = flows.shape
    flows = flows.reshape(b, hh, ww, self.links, 2)
    warped = bilinear_warp(h, -flows).reshape(b, hh, ww, self.links * self.hidden)
    zh, rh, hh_ = jnp.split(self.project(warped), 3, axis=-1)
    z = nn.sigmoid(zx + zh)
    r = nn.sigmoid(rx + rh)
    cand = leaky_relu(hx + r * hh_)
    h = (1.0 - z) * cand + z * h
    return h, (h,), m, {}


class STLSTMCell(CellBase):
  """PredRNN's spatiotemporal LSTM (ST-LSTM).

  ``[i,f,g,o] = conv_x(X) + conv_h(H)``, ``C' = s(f) C + s(i) tanh(g)``;
  ``[i',f',g'] = conv_xm(X) + conv_mm(M)``, ``M' = s(f') M + s(i') tanh(g')``;
  ``o = s(o + conv_co(C') + conv_mo(M'))``; ``H' = o tanh(conv1x1([C', M']))``.
  State ``(H, C)``; M zig-zags through the stack. ``extras`` holds
  ``delta_c = s(i) tanh(g)`` and ``delta_m = s(i') tanh(g')`` for PredRNN-V2.
  """

  uses_memory: ClassVar[bool] = True

  def setup(self):
    hd = self.hidden
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)
    self.conv_xm = self.conv(3 * hd)
    self.conv_mm = self.conv(3 * hd)
    self.conv_co = self.conv(hd)
    self.conv_mo = self.conv(hd)
    self.conv_last = self.conv(hd, in_features=2 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, hidden, layer, num_layers, **options):
    return ((hidden, 1), (hidden, 1))

  def __call__(self, x, state, m, diag=None):
    h, c = state
    i, f, g, o = jnp.split(fused_conv([self.conv_x, self.conv_h], [x, h]), 4, axis=-1)
    c = memory_update(i, f, g, c)
    im, fm, gm = jnp.split(fused_conv([self.conv_xm, self.conv_mm], [x, m]), 3, axis=-1)
    m = memory_update(im, fm, gm, m)
    h = gated_tanh(o + fused_conv([self.conv_co, self.conv_mo], [c, m]),
                   self.conv_last(jnp.concatenate([c, m], axis=-1)))
    # Only PredRNN-V2's decoupling loss reads the increments; elsewhere XLA
    # drops them as dead code.
    extras = {"delta_c": gated_tanh(i, g), "delta_m": gated_tanh(im, gm)}
    return h, (h, c), m, extras


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

  uses_memory: ClassVar[bool] = True

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
  def state_spec(cls, hidden, layer, num_layers, **options):
    extra = ((hidden, 1),) if cls.has_ghu(layer, num_layers) else ()
    return ((hidden, 1), (hidden, 1)) + extra

  def __call__(self, x, state, m, diag=None):
    if self.has_ghu(self.layer, self.num_layers):
      h, c, z = state
      p, s = jnp.split(fused_conv([self.ghu_x, self.ghu_z], [x, z]), 2, axis=-1)
      s = nn.sigmoid(s)
      z = s * jnp.tanh(p) + (1.0 - s) * z
      x = z
      extra = (z,)
    else:
      h, c = state
      extra = ()
    i, f, g = jnp.split(self.conv_a(jnp.concatenate([x, h, c], axis=-1)), 3, axis=-1)
    c = memory_update(i, f, g, c)
    im, fm, gm = jnp.split(self.conv_b(jnp.concatenate([x, c, m], axis=-1)), 3, axis=-1)
    m = gated_tanh(fm, self.conv_m(m)) + gated_tanh(im, gm)
    o = jnp.tanh(self.conv_o(jnp.concatenate([x, c, m], axis=-1)))
    h = o * jnp.tanh(self.conv_last(jnp.concatenate([c, m], axis=-1)))
    return h, (h, c) + extra, m, {}


class MIMCell(CellBase):
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

  uses_memory: ClassVar[bool] = True
  uses_diagonal: ClassVar[bool] = True

  def setup(self):
    hd = self.hidden
    self.n_x = self.conv(3 * hd)
    self.n_h = self.conv(3 * hd)
    self.n_ox = self.conv(hd)
    self.n_on = self.conv(hd)
    self.s_x = self.conv(4 * hd)
    self.s_c = self.conv(4 * hd)
    self.s_o = self.conv(hd)
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)
    self.conv_xm = self.conv(3 * hd)
    self.conv_mm = self.conv(3 * hd)
    self.conv_co = self.conv(hd)
    self.conv_mo = self.conv(hd)
    self.conv_last = self.conv(hd, in_features=2 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, hidden, layer, num_layers, **options):
    return ((hidden, 1),) * 4

  def mim(self, x, state, m, diag):
    """The MIM block; returns ``(H', C', N', S', M', o)``."""
    h, c, n, s = state[:4]
    if diag is None:
      diag = jnp.zeros_like(x)
    t = None
    if self.layer > 0 or self.is_initializing():
      xd = x - diag
      i_n, f_n, g_n = jnp.split(fused_conv([self.n_x, self.n_h], [xd, n]), 3, axis=-1)
      n = memory_update(i_n, f_n, g_n, n)
      dif = gated_tanh(fused_conv([self.n_ox, self.n_on], [xd, n]), n)
      i_s, f_s, g_s, o_s = jnp.split(fused_conv([self.s_x, self.s_c], [dif, c]), 4, axis=-1)
      s = memory_update(i_s, f_s, g_s, s)
      t = gated_tanh(o_s + self.s_o(s), s)
    i, f, g, o = jnp.split(fused_conv([self.conv_x, self.conv_h], [x, h]), 4, axis=-1)
    if self.layer == 0:
      c = memory_update(i, f, g, c)
    else:
      c = t + gated_tanh(i, g)
    im, fm, gm = jnp.split(fused_conv([self.conv_xm, self.conv_mm], [x, m]), 3, axis=-1)
    m = memory_update(im, fm, gm, m)
    o = o + fused_conv([self.conv_co, self.conv_mo], [c, m])
    h = gated_tanh(o, self.conv_last(jnp.concatenate([c, m], axis=-1)))
    # MotionRNN's highway reads the output gate; MIM alone drops it.
    return h, c, n, s, m, nn.sigmoid(o)

  def __call__(self, x, state, m, diag=None):
    h, c, n, s, m, _ = self.mim(x, state, m, diag)
    return h, (h, c, n, s), m, {}


class MotionRNNCell(MIMCell):
  """MotionRNN (Wu et al. 2021) on MIM: a MIM block followed by MotionGRU.

  MotionGRU runs at half the layer's resolution on ``He = conv_enc(H_mim)``
  (2x2, stride 2, hidden -> hidden/4) with transient variation F and trend D
  (``2 k^2`` channels each): ``u, r = s(1x1([He, F]))``,
  ``z = tanh(1x1([He, r F]))``, ``F_tr = u z + (1-u) F``,
  ``D' = D + alpha (F - D)``, ``F' = F_tr + D'``. He is warped along each of
  the k^2 flows of F' (+flow), weighted by ``s(1x1(He))``, decoded
  (1x1 to hidden/4, ``ConvTranspose(4, stride 2, pad 1)`` to hidden) to Hd, and
  gated: ``g = s(1x1([Hd, H_mim]))``, ``Xm = g H_mim + (1-g) Hd``.
  Motion highway: ``H' = Xm + (1 - o) X`` in every layer but the last, where
  ``H' = H_mim``. State ``(H', C, N, S, F, D)``.

  Deviations from the reference (``docs/model.md``): (1) flow j of sample b is
  channel pair (2j, 2j+1) of that sample (the reference's raw reshape mixes
  samples when the per-GPU batch is > 1); (2) the k^2 warped maps are
  concatenated along channels before the decoder (the reference's raw
  reshape scrambles space and filter axes); (3) warping samples the exact
  pixel (see ``TrajGRUCell``). In the last layer MotionGRU's output is
  discarded by the reference; we create its parameters but skip computing it
  after initialisation (identical outputs; F and D stay zero there).
  """

  extra_factor: ClassVar[int] = 1

  def setup(self):
    super().setup()
    hd = self.hidden
    he = hd // 4
    kk = self.motion_k ** 2
    self.motion_enc = self.conv(he, kernel_size=2, stride=2)
    self.motion_u = self.conv(2 * kk, in_features=he + 2 * kk, kernel_size=1)
    self.motion_r = self.conv(2 * kk, in_features=he + 2 * kk, kernel_size=1)
    self.motion_z = self.conv(2 * kk, in_features=he + 2 * kk, kernel_size=1)
    self.motion_hm = self.conv(kk, in_features=he, kernel_size=1)
    self.motion_dec = self.conv(he, in_features=he * kk, kernel_size=1)
    self.motion_up = self.conv(hd, in_features=he, kernel_size=4, stride=2, transpose=True,
                               torch_padding=1)
    self.motion_gate = self.conv(hd, in_features=2 * hd, kernel_size=1)

  @classmethod
  def state_spec(cls, hidden, layer, num_layers, motion_k=3, **options):
    return ((hidden, 1),) * 4 + ((2 * motion_k ** 2, 2),) * 2

  def motion_gru(self, h_mim, f, d):
    """Returns ``(Xm, F', D')``."""
    he = self.motion_enc(h_mim)
    hf = jnp.concatenate([he, f], axis=-1)
    u = nn.sigmoid(self.motion_u(hf))
    r = nn.sigmoid(self.motion_r(hf))
    z = jnp.tanh(self.motion_z(jnp.concatenate([he, r * f], axis=-1)))
    f_tr = u * z + (1.0 - u) * f
    d_new = d + self.motion_alpha * (f - d)
    f_new = f_tr + d_new
    weights = nn.sigmoid(self.motion_hm(he))
    b, hh, ww, c = he.shape
    kk = self.motion_k ** 2
    warped = bilinear_warp(he, f_new.reshape(b, hh, ww, kk, 2)) * weights[..., None]
    hd = self.motion_up(self.motion_dec(warped.reshape(b, hh, ww, kk * c)))
    g = nn.sigmoid(self.motion_gate(jnp.concatenate([hd, h_mim], axis=-1)))
    return g * h_mim + (1.0 - g) * hd, f_new, d_new

  def __call__(self, x, state, m, diag=None):
    h_mim, c, n, s, m, o = self.mim(x, state, m, diag)
    f, d = state[4], state[5]
    last = self.layer == self.num_layers - 1
    if not last or self.is_initializing():
      xm, f_new, d_new = self.motion_gru(h_mim, f, d)
    if last:
      h = h_mim
    else:
      h = xm + (1.0 - o) * x
      f, d = f_new, d_new
    return h, (h, c, n, s, f, d), m, {}


CELLS: dict[str, type[CellBase]] = {
    "convlstm": ConvLSTMCell,
    "trajgru": TrajGRUCell,
    "predrnn": STLSTMCell,
    "predrnn_v2": STLSTMCell,
    "predrnn_pp": CausalLSTMCell,
    "mim": MIMCell,
    "motionrnn": MotionRNNCell,
}
