"""CMS-LSTM (Chai et al. 2022): context embedding and spatiotemporal expression blocks."""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrnn_jax.backend.gates import lstm_update, memory_update
from msrnn_jax.model.attention import block_attention
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import fused_conv, split_gates

# Block grids of the SE block's self-attention: 1x1, 2x2 and 4x4 blocks.
SE_SCALES = (1, 2, 4)


class CMSLSTMCell(CellBase):
  """CMS-LSTM: a context embedding (CE) block, ConvLSTM, a spatiotemporal expression (SE) block.

  CE, ``ce_iters`` rounds r = 1, 2, ...: odd rounds ``X <- 2 s(ce_q(H)) X``,
  even rounds ``H <- 2 s(ce_r(X)) H``. ConvLSTM on the gated pair gives
  ``H_l, C_l``. SE: ``F = [H_l | C_l]``, the two maps side by side along the
  width; for each scale s in 1, 2, 4, ``A_s = F + attn_s(F)`` with
  self-attention (1x1 query, key and value convolutions, unscaled scores)
  among the tokens of each block of an s x s grid, a token being one
  position of H_l or of C_l; ``Z = se_fuse([A_1, A_2, A_4])`` (a k x k
  convolution over the side-by-side image, so it mixes the two maps at
  their seam, as the reference); ``z = se_z([Z_H, Z_C])`` (1x1 over the
  halves); ``[i, g, o] = se_h(H_l) + se_zh(z)``;
  ``C' = (1 - s(i)) C_l + s(i) tanh(g)``, ``H' = s(o) C'``. State ``(H, C)``.

  The grid splits height and width each into s blocks (the reference
  derives the block side from the height alone, so it needs square
  maps); layer resolutions must be multiples of 4.
  """

  extra_factor: ClassVar[int] = 2
  options: ClassVar[dict] = {"ce_iters": 5}

  def setup(self):
    hd = self.hidden
    self.ce_q = self.conv(hd)
    self.ce_r = self.conv(hd)
    self.conv_x = self.conv(4 * hd)
    self.conv_h = self.conv(4 * hd)
    self.se_query = [self.conv(hd, kernel_size=1) for _ in SE_SCALES]
    self.se_key = [self.conv(hd, kernel_size=1) for _ in SE_SCALES]
    self.se_value = [self.conv(hd, kernel_size=1) for _ in SE_SCALES]
    self.se_fuse = self.conv(hd, in_features=len(SE_SCALES) * hd)
    self.se_z = self.conv(hd, in_features=2 * hd, kernel_size=1)
    self.se_h = self.conv(3 * hd)
    self.se_zh = self.conv(3 * hd)

  @classmethod
  def paper_units(cls, config):
    # CE: a gate and the gated map per round; ConvLSTM 6; SE: per scale the
    # query, key, value and attended maps over both halves (8), the fused
    # map (2), z, the gates i, g, o and C', H' (6).
    return 2 * config.option("ce_iters") + 6 + 8 * len(SE_SCALES) + 8

  def context_embedding(self, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The CE rounds; returns the gated ``(X, H)``."""
    for r in range(1, self.option("ce_iters") + 1):
      if r % 2:
        x = 2.0 * nn.sigmoid(self.ce_q(h)) * x
      else:
        h = 2.0 * nn.sigmoid(self.ce_r(x)) * h
    return x, h

  def attend(self, feats: jax.Array, index: int) -> jax.Array:
    """``feats + attn(feats)`` over the blocks of scale ``SE_SCALES[index]``.

    Args:
      feats: ``[batch, h, 2 w, hidden]``, H and C side by side.
      index: which scale (and which query, key and value convolutions).
    """
    b, h, w2, c = feats.shape

    def maps(y):  # [b, h, 2w, c] -> [b, 2, h, w, c]
      return y.reshape(b, h, 2, w2 // 2, c).transpose(0, 2, 1, 3, 4)

    out = block_attention(maps(self.se_query[index](feats)), maps(self.se_key[index](feats)),
                          maps(self.se_value[index](feats)), SE_SCALES[index])
    return feats + out.transpose(0, 2, 1, 3, 4).reshape(b, h, w2, c)

  def spatiotemporal_expression(self, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The SE block; returns ``(H', C')``."""
    feats = jnp.concatenate([h, c], axis=2)
    fused = self.se_fuse(jnp.concatenate([self.attend(feats, s) for s in range(len(SE_SCALES))],
                                         axis=-1))
    z_h, z_c = jnp.split(fused, 2, axis=2)
    z = self.se_z(jnp.concatenate([z_h, z_c], axis=-1))
    i, g, o = split_gates(fused_conv([self.se_h, self.se_zh], [h, z]), 3)
    # 1 - s(i) = s(-i): the update is an LSTM memory update with forget gate -i.
    c = memory_update(i, -i, g, c)
    return nn.sigmoid(o) * c, c

  def __call__(self, x, state, m=None, diag=None):
    h, c = state
    x, h = self.context_embedding(x, h)
    h, c = lstm_update(fused_conv([self.conv_x, self.conv_h], [x, h]), c)
    h, c = self.spatiotemporal_expression(h, c)
    return h, (h, c), m, {}
