"""MotionRNN (Wu et al. 2021) on MIM."""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from msrnn_jax.model.cells.mim import MIMCell
from msrnn_jax.model.layers import bilinear_warp


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
  # MotionGRU filter size k (k*k flows) and trend momentum alpha.
  options: ClassVar[dict] = {**MIMCell.options, "motion_k": 3, "motion_alpha": 0.5}
  state_options: ClassVar[tuple[str, ...]] = ("motion_k",)
  units: ClassVar[int] = 26

  def setup(self):
    super().setup()
    hd = self.hidden
    he = hd // 4
    kk = self.option("motion_k") ** 2
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
  def state_spec(cls, config, layer):
    return ((config.hidden, 1),) * 4 + ((2 * config.option("motion_k") ** 2, 2),) * 2

  def motion_gru(self, h_mim, f, d):
    """Returns ``(Xm, F', D')``."""
    he = self.motion_enc(h_mim)
    hf = jnp.concatenate([he, f], axis=-1)
    u = nn.sigmoid(self.motion_u(hf))
    r = nn.sigmoid(self.motion_r(hf))
    z = jnp.tanh(self.motion_z(jnp.concatenate([he, r * f], axis=-1)))
    f_tr = u * z + (1.0 - u) * f
    d_new = d + self.option("motion_alpha") * (f - d)
    f_new = f_tr + d_new
    weights = nn.sigmoid(self.motion_hm(he))
    b, hh, ww, c = he.shape
    kk = self.option("motion_k") ** 2
    warped = bilinear_warp(he, f_new.reshape(b, hh, ww, kk, 2), self.config.warp_impl)
    warped = warped * weights[..., None]
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
