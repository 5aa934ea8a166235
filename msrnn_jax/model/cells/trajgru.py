"""TrajGRU (Shi et al. 2017)."""

import functools
from typing import ClassVar

import flax.linen as nn

from msrnn_jax.backend.gates import gru_update
from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.layers import bilinear_warp, fused_conv, leaky_relu


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

  # Number of warped links L (13 in the paper-era code, 10 at the reference's HEAD).
  options: ClassVar[dict] = {"links": 13}
  state_options: ClassVar[tuple[str, ...]] = ("links",)

  def setup(self):
    hd = self.hidden
    self.conv_x2h = self.conv(3 * hd)
    self.conv_x2f = self.conv(hd)
    self.conv_h2f = self.conv(hd)
    self.conv_flow = self.conv(2 * self.option("links"))
    self.project = self.conv(3 * hd, in_features=hd * self.option("links"), kernel_size=1)

  @classmethod
  def state_spec(cls, config, layer):
    return ((config.hidden, 1),)

  @classmethod
  def paper_units(cls, config):
    return 5 + config.option("links")

  @functools.partial(nn.checkpoint, prevent_cse=False)
  def project_warped(self, h, flows):
    """The 1x1 projection of H warped along each link's negated flow.

    Recomputed in the backward pass (a gather per link): the L warped
    copies of H that the projection's kernel gradient needs are L times
    the size of H, the cell's largest tensor by far.

    Args:
      h: ``[batch, height, width, hidden]``.
      flows: ``[batch, height, width, 2 L]``, pairs (dx, dy).

    Returns:
      ``[batch, height, width, 3 hidden]``.
    """
    b, hh, ww, _ = flows.shape
    flows = flows.reshape(b, hh, ww, self.option("links"), 2)
    warped = bilinear_warp(h, -flows, self.config.warp_impl)
    warped = warped.reshape(b, hh, ww, self.option("links") * self.hidden)
    return self.project(warped)

  def __call__(self, x, state, m=None, diag=None):
    (h,) = state
    u = leaky_relu(fused_conv([self.conv_x2f, self.conv_h2f], [x, h], kept=[h]))
    h = gru_update(self.conv_x2h(x), self.project_warped(h, self.conv_flow(u)), h)
    return h, (h,), m, {}
