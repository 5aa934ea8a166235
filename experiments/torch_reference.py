"""PyTorch rebuild of the authors' training step, every family of msrnn_jax, plain and MS.

MS-RNN (Ma et al., "MS-RNN: A Flexible Multi-Scale Framework for Spatiotemporal
Predictive Learning", arXiv:2206.03010) comes with a PyTorch implementation by
its authors (github.com/mazhf/MS-RNN, commit c563636). That code needs four
GPUs and DDP, so this script rebuilds its training step for one CPU process,
with the same modules and the same maths, to compare msrnn_jax with it on the
same machine: ``experiments/vs_torch.py`` times the two steps back to back,
``experiments/parity.py`` checks that they compute the same outputs, loss and
gradients from the same parameters.

What is rebuilt (the authors' ``models/convlstm.py``, ``trajgru.py``,
``predrnn.py``, ``predrnn_plus2.py``, ``mim.py``, ``motionrnn.py``,
``predrnn_v2.py``, ``cms_lstm.py``, ``modernn.py``, ``preciplstm.py``,
``ms_lstm.py`` (MK-LSTM) and their ``ms_*.py``,
``img_local_att/function.py``, ``model.py``, ``net_params.py`` and
``loss.py``): a 1x1 embedding, six recurrent layers of 64 channels, a 1x1
linear head, all with PyTorch's default initialisation. Each cell's class
docstring gives its equations; every cell follows one interface (``Cell``),
and ``CELLS`` maps each family to its cell.

* ConvLSTM cells: separate ``conv_x`` / ``conv_h`` 3x3 convolutions (the
  authors' ``_conv_x2h`` / ``_conv_h2h``), gates ``i, f, g, o``, no peepholes.
* PredRNN's ST-LSTM cells: ``conv_x`` / ``conv_h`` (4 gates), ``conv_xm`` /
  ``conv_mm`` (3 gates of the spatiotemporal memory M), ``conv_co`` /
  ``conv_mo`` (3x3, into the output gate) and ``conv_last`` (1x1 over
  ``[C, M]``); the authors' ``_conv_x2h``, ``_conv_h2h``, ``_conv_x2h_m``,
  ``_conv_m2h_m``, ``_conv_c2o``, ``_conv_m2o``, ``_conv_c_m``. M zig-zags:
  up through the layers of one step, then from the top layer to layer 0 of
  the next step.
* CMS-LSTM, MoDeRNN, PrecipLSTM and MK-LSTM cells as the authors' (their
  class docstrings), module names as msrnn_jax's; PrecipLSTM's local
  attention is the extension's pure-PyTorch fallback, padded as its CUDA
  kernels (:func:`local_attention`).
* Plain stacks: layer l reads only the output of layer l-1 (no skips).
* MS stacks: the mirror pyramid H, H/2, H/4, H/4, H/2, H with 2x2 max pooling
  after layers 0 and 1, bilinear 2x upsampling (``align_corners=False``)
  after layers 3 and 4, and additive skips of the raw outputs of layers 1
  and 0 into the inputs of layers 4 and 5; M follows the same pool/up
  schedule without skips.
* MIM and MotionRNN also read the diagonal input H_{t-1}^{l-1}, moved to the
  layer's level like x but without skips (zeros in layer 0).
* Scheduled sampling over the future inputs (PredRNN-V2: over all inputs but
  the first, its reverse scheduled sampling), the L2(sum) + L1(sum) loss over
  the 19 predicted frames (mean over frames and batch; PredRNN-V2 adds 0.01
  times its decoupling term) and Adam.

Parameter counts equal the authors' models at 6 x 64 with one input channel:
1,772,737 for (MS-)ConvLSTM, 2,157,661 TrajGRU (13 links), 3,594,817 PredRNN,
5,608,513 PredRNN++, 7,361,473 MIM, 7,560,547 MotionRNN, 3,598,977
PredRNN-V2, 4,483,393 CMS-LSTM, 5,854,657 MoDeRNN, 7,041,217 PrecipLSTM,
7,576,897 MK-LSTM (MS-MK-LSTM is the authors' MS-LSTM). It is not part
of the library and needs ``torch``, which msrnn_jax does not install; e.g. in
a separate virtualenv: ``python -m venv /path/torchvenv &&
/path/torchvenv/bin/pip install numpy torch --index-url
https://download.pytorch.org/whl/cpu`` (numpy only for ``parity.py``).

    python experiments/torch_reference.py --model convlstm --repeats 8
    python experiments/torch_reference.py --model ms_predrnn --out /tmp/torch_ms.json

``--serve`` is how ``experiments/vs_torch.py`` interleaves it with the JAX
step: after the warm-up it prints ``ready``, then runs one timed step per
``step`` line read from standard input and prints its seconds.
"""

import argparse
import json
import resource
import statistics
import sys
import time

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
  from torch.utils.checkpoint import checkpoint
except ImportError:
  sys.exit("experiments/torch_reference.py needs PyTorch, which msrnn_jax does not install: "
           "pip install torch --index-url https://download.pytorch.org/whl/cpu "
           "(in a separate virtualenv).")


# The authors' cfg.decouple_loss_weight (PredRNN-V2's decoupling term).
DECOUPLE_WEIGHT = 0.01


class Cell(nn.Module):
  """The interface of the cells: ``h, state, m, extras = cell(x, state, m, diag)``.

  ``state`` is the cell's own temporal state (``state[0]`` its output H), ``m``
  the zig-zag memory M (cells with ``uses_memory``, else None), ``diag`` MIM's
  diagonal input H_{t-1}^{l-1} (cells with ``uses_diagonal``; zeros in layer 0,
  else None), ``extras`` PredRNN-V2's increments ``delta_c`` / ``delta_m``.
  Class attributes carry the family-wide switches; ``options`` are the cell's
  own keyword options with their defaults.
  """

  uses_memory = False
  uses_diagonal = False
  # PredRNN-V2: the decoupling loss over a shared 1x1 adapter, and reverse
  # scheduled sampling (only step 0 is forced to the true frame).
  decouple = False
  reverse_scheduled_sampling = False
  options: dict = {}

  def __init__(self, channels: int, layer: int = 0, layers: int = 6, **options):
    super().__init__()
    unknown = set(options) - set(self.options)
    if unknown:
      raise ValueError(f"{type(self).__name__}: unknown options {sorted(unknown)}; "
                       f"valid: {sorted(self.options)}")
    self.channels, self.layer, self.layers = channels, layer, layers
    self.opts = {**self.options, **options}

  def initial_state(self, batch: int, height: int, width: int) -> tuple:
    """Zero ``(H, C)`` at the layer's resolution."""
    return (torch.zeros(batch, self.channels, height, width),) * 2


def conv3(channels: int, features: int) -> nn.Conv2d:
  """The authors' 3x3, stride 1, padding 1 ``Conv2d``."""
  return nn.Conv2d(channels, features, 3, padding=1)


class ConvLSTMCell(Cell):
  """``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f)C + s(i)tanh(g)``; ``H' = s(o)tanh(C')``."""

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    self.conv_x = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1)

  def forward(self, x, state, m=None, diag=None):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c), m, {}


class STLSTMCell(Cell):
  """PredRNN's spatiotemporal LSTM, as the authors' ``PredRNN_Cell``.

  ``[i, f, g, o] = conv_x(X) + conv_h(H)``, ``C' = s(f)C + s(i)tanh(g)``;
  ``[i', f', g'] = conv_xm(X) + conv_mm(M)``, ``M' = s(f')M + s(i')tanh(g')``;
  ``o = s(o + conv_co(C') + conv_mo(M'))``; ``H' = o tanh(conv_last([C', M']))``.
  """

  uses_memory = True

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    self.conv_x = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_xm = nn.Conv2d(channels, 3 * channels, 3, padding=1)
    self.conv_mm = nn.Conv2d(channels, 3 * channels, 3, padding=1)
    self.conv_co = nn.Conv2d(channels, channels, 3, padding=1)
    self.conv_mo = nn.Conv2d(channels, channels, 3, padding=1)
    self.conv_last = nn.Conv2d(2 * channels, channels, 1)

  def forward(self, x, state, m, diag=None):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    im, fm, gm = torch.chunk(self.conv_xm(x) + self.conv_mm(m), 3, dim=1)
    m = torch.sigmoid(fm) * m + torch.sigmoid(im) * torch.tanh(gm)
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
    return h, (h, c), m, {}


CELLS = {"convlstm": ConvLSTMCell, "predrnn": STLSTMCell}


WARPS = ("grid", "exact", "literal")


def _sample_exact(image, sx, sy):
  """Bilinear taps of ``image`` ``[B, C, H, W]`` at pixel coordinates ``sx``, ``sy`` ``[B, H, W]``."""
  b, c, height, width = image.shape
  x0, y0 = torch.floor(sx), torch.floor(sy)
  # Pixels as rows [B, H*W, C]: one index per pixel, not per channel.
  rows = image.reshape(b, c, height * width).transpose(1, 2)
  batch = torch.arange(b)[:, None]
  out = 0
  for dy, wy in ((0, 1 - (sy - y0)), (1, sy - y0)):
    for dx, wx in ((0, 1 - (sx - x0)), (1, sx - x0)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
      idx = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long().reshape(b, -1)
      taps = rows[batch, idx].transpose(1, 2).reshape(b, c, height, width)
      out = out + taps * (wx * wy * inside)[:, None]
  return out


def warp(image, flow, mode: str = "grid"):
  """Samples ``image`` at ``(x + dx, y + dy)``, bilinearly, zeros outside.

  Args:
    image: ``[B, C, H, W]``.
    flow: ``[B, 2, H, W]`` in pixels, ``(dx, dy)`` (along the width, the height).
    mode: ``'grid'``: ``F.grid_sample`` (the authors' kernel) with
      ``align_corners=True``, i.e. the intended pixel ``x + dx`` (as msrnn_jax,
      its ``docs/model.md``) up to the float rounding of the grid's
      normalisation; ``'exact'``: the same points without that round trip
      (four gathers; slower, for parity checks: the gradient with respect to
      the flow jumps where a sample point crosses a pixel boundary, so a
      rounding of the point can move a gradient term across);
      ``'literal'``: the authors' code as written, a grid normalised for
      ``align_corners=True`` read with ``align_corners=False``, i.e. at
      ``(x + dx) W/(W-1) - 0.5`` (zero flow is not the identity).

  Returns:
    ``[B, C, H, W]``.
  """
  _, _, height, width = image.shape
  ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype),
                          torch.arange(width, dtype=flow.dtype), indexing="ij")
  sx, sy = xs + flow[:, 0], ys + flow[:, 1]
  if mode == "exact":
    # Recomputed in the backward pass: the four taps would otherwise be kept
    # per warp (about 4x grid_sample's memory).
    return checkpoint(_sample_exact, image, sx, sy, use_reentrant=False)
  if mode not in WARPS:
    raise ValueError(f"unknown warp {mode!r}; valid: {', '.join(WARPS)}")
  gx = 2.0 * sx / max(width - 1, 1) - 1.0
  gy = 2.0 * sy / max(height - 1, 1) - 1.0
  grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
  return F.grid_sample(image, grid, align_corners=mode != "literal")


class TrajGRUCell(Cell):
  """TrajGRU (the authors' ``TrajGRU_Cell``): a GRU whose recurrent input is H warped along L flows.

  ``flows = conv_flow(lrelu(conv_x2f(X) + conv_h2f(H)))`` (2L channels, link l
  = channels ``(2l, 2l+1)`` = ``(dx, dy)``); H is warped along each negated
  flow, the L maps concatenated and projected (1x1) to the recurrent terms:
  ``z = s(zx + zh)``, ``r = s(rx + rh)``, ``H~ = lrelu(hx + r hh)``,
  ``H' = (1 - z) H~ + z H`` (LeakyReLU slope 0.2). Options: ``links`` L (13;
  the authors' ``cfg.TrajGRU_link_num`` is 10 at c563636), ``warp`` (a mode
  of :func:`warp`).
  """

  options = {"links": 13, "warp": "grid"}

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    links = self.opts["links"]
    self.conv_x2h = conv3(channels, 3 * channels)
    self.conv_x2f = conv3(channels, channels)
    self.conv_h2f = conv3(channels, channels)
    self.conv_flow = conv3(channels, 2 * links)
    self.project = nn.Conv2d(links * channels, 3 * channels, 1)

  def initial_state(self, batch, height, width):
    return (torch.zeros(batch, self.channels, height, width),)

  def forward(self, x, state, m=None, diag=None):
    (h,) = state
    zx, rx, hx = torch.chunk(self.conv_x2h(x), 3, dim=1)
    flows = self.conv_flow(F.leaky_relu(self.conv_x2f(x) + self.conv_h2f(h), 0.2))
    # One warp per link, as the authors' loop.
    warped = torch.cat([warp(h, -flow, self.opts["warp"])
                        for flow in torch.chunk(flows, self.opts["links"], dim=1)], dim=1)
    zh, rh, hh = torch.chunk(self.project(warped), 3, dim=1)
    z = torch.sigmoid(zx + zh)
    r = torch.sigmoid(rx + rh)
    cand = F.leaky_relu(hx + r * hh, 0.2)
    h = (1 - z) * cand + z * h
    return h, (h,), m, {}


class CausalLSTMCell(Cell):
  """PredRNN++'s Causal LSTM with the Gradient Highway Unit (the authors' ``PredRNN_Plus2_Cell``).

  GHU (layer 1 only): ``[p, s] = ghu_x(X) + ghu_z(Z)``,
  ``Z' = s(s) tanh(p) + (1 - s(s)) Z``; Z' replaces X.
  ``[i, f, g] = conv_a([X, H, C])``, ``C' = s(f)C + s(i)tanh(g)``;
  ``[i', f', g'] = conv_b([X, C', M])``, ``M' = s(f')tanh(conv_m(M)) + s(i')tanh(g')``;
  ``o = tanh(conv_o([X, C', M']))``; ``H' = o tanh(conv_last([C', M']))``.
  The authors build the GHU pair in every layer and use only layer 1's
  (``ghu_all_layers=True``, their parameter count); msrnn_jax creates only
  the used pair.
  """

  uses_memory = True
  options = {"ghu_all_layers": True}

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    if self.has_ghu or self.opts["ghu_all_layers"]:
      self.ghu_x = conv3(channels, 2 * channels)
      self.ghu_z = conv3(channels, 2 * channels)
    self.conv_a = conv3(3 * channels, 3 * channels)
    self.conv_b = conv3(3 * channels, 3 * channels)
    self.conv_m = nn.Conv2d(channels, channels, 1)
    self.conv_o = conv3(3 * channels, channels)
    self.conv_last = nn.Conv2d(2 * channels, channels, 1)

  @property
  def has_ghu(self) -> bool:
    return self.layer == 1 and self.layers > 1

  def initial_state(self, batch, height, width):
    """Zero ``(H, C)``, and Z in the GHU's layer."""
    return (torch.zeros(batch, self.channels, height, width),) * (3 if self.has_ghu else 2)

  def forward(self, x, state, m, diag=None):
    if self.has_ghu:
      h, c, z = state
      p, s = torch.chunk(self.ghu_x(x) + self.ghu_z(z), 2, dim=1)
      s = torch.sigmoid(s)
      z = s * torch.tanh(p) + (1 - s) * z
      x = z
      extra = (z,)
    else:
      h, c = state
      extra = ()
    i, f, g = torch.chunk(self.conv_a(torch.cat([x, h, c], dim=1)), 3, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    im, fm, gm = torch.chunk(self.conv_b(torch.cat([x, c, m], dim=1)), 3, dim=1)
    m = torch.sigmoid(fm) * torch.tanh(self.conv_m(m)) + torch.sigmoid(im) * torch.tanh(gm)
    o = torch.tanh(self.conv_o(torch.cat([x, c, m], dim=1)))
    h = o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
    return h, (h, c) + extra, m, {}


class MIMCell(Cell):
  """Memory In Memory (the authors' ``MIM_Cell``): MIM-N, MIM-S and an ST-LSTM core.

  Inputs X and the diagonal ``D = H_{t-1}^{l-1}`` (zeros in layer 0).
  MIM-N: ``[i, f, g] = n_x(X - D) + n_h(N)``, ``N' = s(f)N + s(i)tanh(g)``,
  ``Dif = s(n_ox(X - D) + n_on(N')) tanh(N')``.
  MIM-S: ``[i, f, g, o] = s_x(Dif) + s_c(C)``, ``S' = s(f)S + s(i)tanh(g)``,
  ``T = s(o + s_o(S')) tanh(S')``.
  Core: ST-LSTM (``STLSTMCell``) except ``C' = T + s(i)tanh(g)`` in layers
  >= 1. As the authors, layer 0 computes and carries N and S without using
  them. State ``(H, C, N, S)``.
  """

  uses_memory = True
  uses_diagonal = True

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    c = channels
    self.n_x = conv3(c, 3 * c)
    self.n_h = conv3(c, 3 * c)
    self.n_ox = conv3(c, c)
    self.n_on = conv3(c, c)
    self.s_x = conv3(c, 4 * c)
    self.s_c = conv3(c, 4 * c)
    self.s_o = conv3(c, c)
    self.conv_x = conv3(c, 4 * c)
    self.conv_h = conv3(c, 4 * c)
    self.conv_xm = conv3(c, 3 * c)
    self.conv_mm = conv3(c, 3 * c)
    self.conv_co = conv3(c, c)
    self.conv_mo = conv3(c, c)
    self.conv_last = nn.Conv2d(2 * c, c, 1)

  def initial_state(self, batch, height, width):
    return (torch.zeros(batch, self.channels, height, width),) * 4

  def mim(self, x, state, m, diag):
    """The MIM block; returns ``(H', C', N', S', M', o)`` (o the output gate)."""
    h, c, n, s = state[:4]
    xd = x - diag
    i_n, f_n, g_n = torch.chunk(self.n_x(xd) + self.n_h(n), 3, dim=1)
    n = torch.sigmoid(f_n) * n + torch.sigmoid(i_n) * torch.tanh(g_n)
    dif = torch.sigmoid(self.n_ox(xd) + self.n_on(n)) * torch.tanh(n)
    i_s, f_s, g_s, o_s = torch.chunk(self.s_x(dif) + self.s_c(c), 4, dim=1)
    s = torch.sigmoid(f_s) * s + torch.sigmoid(i_s) * torch.tanh(g_s)
    t = torch.sigmoid(o_s + self.s_o(s)) * torch.tanh(s)
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    if self.layer == 0:
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    else:
      c = t + torch.sigmoid(i) * torch.tanh(g)
    im, fm, gm = torch.chunk(self.conv_xm(x) + self.conv_mm(m), 3, dim=1)
    m = torch.sigmoid(fm) * m + torch.sigmoid(im) * torch.tanh(gm)
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
    return h, c, n, s, m, o

  def forward(self, x, state, m, diag=None):
    h, c, n, s, m, _ = self.mim(x, state, m, diag)
    return h, (h, c, n, s), m, {}


class MotionRNNCell(MIMCell):
  """MotionRNN on MIM (the authors' ``MotionRNN_Cell``): a MIM block, then MotionGRU.

  MotionGRU at half the layer's resolution on ``He = motion_enc(H_mim)`` (2x2,
  stride 2, C -> C/4), with transient variation F and trend D (``2k^2``
  channels): ``u, r = s(1x1([He, F]))``, ``z = tanh(1x1([He, r F]))``,
  ``F_tr = u z + (1 - u) F``, ``D' = D + alpha (F - D)``, ``F' = F_tr + D'``;
  He is warped along each of the k^2 flows of F', weighted by
  ``s(motion_hm(He))``, decoded (1x1 to C/4, ``ConvTranspose2d(4, 2, 1)`` to
  C) to Hd; ``g = s(1x1([Hd, H_mim]))``, ``Xm = g H_mim + (1 - g) Hd``.
  Highway: ``H' = Xm + (1 - o) X`` except in the last layer (``H' = H_mim``).
  State ``(H', C, N, S, F, D)``.

  Default: the intended maths, as msrnn_jax (its ``docs/model.md``): flow j
  of sample b is F' channel pair ``(2j, 2j+1)`` of that sample, the k^2
  warped maps are concatenated along channels (``j * C/4 + c``), and
  :func:`warp` samples the intended pixel. ``warp='literal'`` reproduces the
  authors' raw reshapes (``(B, 2k^2, h, w) -> (k^2, B, 2, h, w)``, which
  mixes samples when B > 1, and ``(B, C/4, h, w, k^2) -> (B, C/4 k^2, h,
  w)``) with their grid normalisation. Options ``motion_k`` (3),
  ``motion_alpha`` (0.5), ``warp`` (a mode of :func:`warp`).
  """

  options = {"motion_k": 3, "motion_alpha": 0.5, "warp": "grid"}

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    he, kk = channels // 4, self.opts["motion_k"] ** 2
    self.motion_enc = nn.Conv2d(channels, he, 2, stride=2)
    self.motion_u = nn.Conv2d(he + 2 * kk, 2 * kk, 1)
    self.motion_r = nn.Conv2d(he + 2 * kk, 2 * kk, 1)
    self.motion_z = nn.Conv2d(he + 2 * kk, 2 * kk, 1)
    self.motion_hm = nn.Conv2d(he, kk, 1)
    self.motion_dec = nn.Conv2d(he * kk, he, 1)
    self.motion_up = nn.ConvTranspose2d(he, channels, 4, stride=2, padding=1)
    self.motion_gate = nn.Conv2d(2 * channels, channels, 1)

  def initial_state(self, batch, height, width):
    kk = self.opts["motion_k"] ** 2
    return (super().initial_state(batch, height, width)
            + (torch.zeros(batch, 2 * kk, height // 2, width // 2),) * 2)

  def motion_gru(self, h, f, d):
    """Returns ``(Xm, F', D')``."""
    kk, mode = self.opts["motion_k"] ** 2, self.opts["warp"]
    he = self.motion_enc(h)
    hf = torch.cat([he, f], dim=1)
    u = torch.sigmoid(self.motion_u(hf))
    r = torch.sigmoid(self.motion_r(hf))
    z = torch.tanh(self.motion_z(torch.cat([he, r * f], dim=1)))
    f_tr = u * z + (1 - u) * f
    d = d + self.opts["motion_alpha"] * (f - d)
    f = f_tr + d
    weights = torch.sigmoid(self.motion_hm(he))  # [B, k^2, h, w]
    b, c4, hh, ww = he.shape
    if mode == "literal":
      flows = f.reshape(kk, b, 2, hh, ww)
      warped = torch.stack([warp(he, flows[j], mode) for j in range(kk)]).permute(1, 2, 3, 4, 0)
      warped = (weights.permute(0, 2, 3, 1).unsqueeze(1) * warped).reshape(b, c4 * kk, hh, ww)
    else:
      flows = f.reshape(b, kk, 2, hh, ww)
      warped = torch.stack([warp(he, flows[:, j], mode) for j in range(kk)], dim=1)
      warped = (warped * weights[:, :, None]).reshape(b, kk * c4, hh, ww)
    hd = self.motion_up(self.motion_dec(warped))
    g = torch.sigmoid(self.motion_gate(torch.cat([hd, h], dim=1)))
    return g * h + (1 - g) * hd, f, d

  def forward(self, x, state, m, diag=None):
    h_mim, c, n, s, m, o = self.mim(x, state, m, diag)
    # As the authors, MotionGRU runs (and updates F, D) in the last layer too,
    # whose output is H_mim.
    xm, f, d = self.motion_gru(h_mim, state[4], state[5])
    h = h_mim if self.layer == self.layers - 1 else xm + (1 - o) * x
    return h, (h, c, n, s, f, d), m, {}


class PredRNNV2Cell(STLSTMCell):
  """PredRNN-V2's cell (the authors' ``PredRNN_V2_Cell``): ST-LSTM that also returns its
  increments ``delta_c = s(i)tanh(g)``, ``delta_m = s(i')tanh(g')`` for the decoupling loss."""

  decouple = True
  reverse_scheduled_sampling = True

  def forward(self, x, state, m, diag=None):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    delta_c = torch.sigmoid(i) * torch.tanh(g)
    c = torch.sigmoid(f) * c + delta_c
    im, fm, gm = torch.chunk(self.conv_xm(x) + self.conv_mm(m), 3, dim=1)
    delta_m = torch.sigmoid(im) * torch.tanh(gm)
    m = torch.sigmoid(fm) * m + delta_m
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
    return h, (h, c), m, {"delta_c": delta_c, "delta_m": delta_m}


CELLS.update({"trajgru": TrajGRUCell, "predrnn_pp": CausalLSTMCell, "mim": MIMCell,
              "motionrnn": MotionRNNCell, "predrnn_v2": PredRNNV2Cell})


class CMSLSTMCell(Cell):
  """CMS-LSTM (the authors' ``CMS_LSTM_Cell``): a CE block, ConvLSTM, an SE block.

  CE: ``ce_iters`` rounds, odd ``X = 2 s(ce_q(H)) X``, even ``H = 2 s(ce_r(X)) H``.
  SE on ``[H | C]`` joined along the width: per scale 1, 2, 4 self-attention
  within the blocks (split and batched as the authors' ``seblock``) plus the
  input; ``se_fuse`` over the three, halves joined by ``se_z``, gates
  ``i, g, o`` from ``se_h(H) + se_zh(z)``, ``C' = C (1 - s(i)) + s(i) tanh(g)``,
  ``H' = C' s(o)``. The attention runs under ``torch.utils.checkpoint`` (same
  values; its scores are not kept for the backward pass). Option ``ce_iters`` (5).
  """

  options = {"ce_iters": 5}
  scales = (1, 2, 4)

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    c = channels
    self.ce_q, self.ce_r = conv3(c, c), conv3(c, c)
    self.conv_x, self.conv_h = conv3(c, 4 * c), conv3(c, 4 * c)
    self.se_query = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in self.scales)
    self.se_key = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in self.scales)
    self.se_value = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in self.scales)
    self.se_fuse = conv3(len(self.scales) * c, c)
    self.se_z = nn.Conv2d(2 * c, c, 1)
    self.se_h, self.se_zh = conv3(c, 3 * c), conv3(c, 3 * c)

  @staticmethod
  def attend(q, k, v, scale: int):
    """Attention within ``scale x scale`` blocks of ``[B, C, h, 2w]`` maps (H and C halves
    side by side; a block of each half is one batch entry), as the authors' ``seblock``."""
    c, h, w = q.shape[1], q.shape[2], q.shape[3] // 2
    block = h // scale

    def blocks(x):  # [B, C, h, 2w] -> [scale^2 B, C, block, block, 2]
      x = torch.stack([x[..., :w], x[..., w:]], 4)
      x = torch.cat(torch.split(x, block, dim=2), 0)
      return torch.cat(torch.split(x, block, dim=3), 0)

    q, k, v = blocks(q), blocks(k), blocks(v)
    n = q.shape[0]
    sim = torch.softmax(torch.bmm(q.reshape(n, c, -1).transpose(1, 2), k.reshape(n, c, -1)), -1)
    ctx = torch.bmm(v.reshape(n, c, -1), sim.transpose(1, 2)).view(n, c, block, block, 2)
    ctx = torch.cat(torch.split(ctx, n // scale, 0), dim=3)
    ctx = torch.cat(torch.split(ctx, n // scale // scale, 0), dim=2)
    return torch.cat([ctx[..., 0], ctx[..., 1]], 3)

  def forward(self, x, state, m=None, diag=None):
    h, c = state
    for r in range(1, self.opts["ce_iters"] + 1):
      if r % 2:
        x = 2 * torch.sigmoid(self.ce_q(h)) * x
      else:
        h = 2 * torch.sigmoid(self.ce_r(x)) * h
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    feats = torch.cat([h, c], dim=-1)
    priors = [feats + checkpoint(self.attend, self.se_query[j](feats), self.se_key[j](feats),
                                 self.se_value[j](feats), scale, use_reentrant=False)
              for j, scale in enumerate(self.scales)]
    out = self.se_fuse(torch.cat(priors, dim=1))
    z_h, z_c = torch.split(out, out.shape[-1] // 2, -1)
    z = self.se_z(torch.cat([z_h, z_c], dim=1))
    i, g, o = torch.chunk(self.se_h(h) + self.se_zh(z), 3, dim=1)
    i = torch.sigmoid(i)
    c = c * (1 - i) + i * torch.tanh(g)
    h = c * torch.sigmoid(o)
    return h, (h, c), m, {}


class MoDeRNNCell(Cell):
  """MoDeRNN (the authors' ``MoDeRNN_Cell``): detail-context rounds, then ConvLSTM.

  ``ce_iters`` rounds, odd ``X = 2 s(mean(dcb_h3, dcb_h5, dcb_h7)(H)) X``, even
  ``H = 2 s(mean(dcb_x3, dcb_x5, dcb_x7)(X)) H`` (3x3, 5x5, 7x7 kernels), then
  :class:`ConvLSTMCell`'s update. Option ``ce_iters`` (5).
  """

  options = {"ce_iters": 5}

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    c = channels
    self.dcb_x3, self.dcb_x5, self.dcb_x7 = (nn.Conv2d(c, c, k, padding=k // 2) for k in (3, 5, 7))
    self.dcb_h3, self.dcb_h5, self.dcb_h7 = (nn.Conv2d(c, c, k, padding=k // 2) for k in (3, 5, 7))
    self.conv_x, self.conv_h = conv3(c, 4 * c), conv3(c, 4 * c)

  def forward(self, x, state, m=None, diag=None):
    h, c = state
    for r in range(1, self.opts["ce_iters"] + 1):
      if r % 2:
        x = 2 * torch.sigmoid((self.dcb_h3(h) + self.dcb_h5(h) + self.dcb_h7(h)) / 3.0) * x
      else:
        h = 2 * torch.sigmoid((self.dcb_x3(x) + self.dcb_x5(x) + self.dcb_x7(x)) / 3.0) * h
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c), m, {}


def local_attention(q, k, v, window: int):
  """Each pixel attends to the ``window x window`` keys around it (zero keys and values outside).

  The authors' extension's pure-PyTorch fallback (an unfold of every pixel's
  window), padded as its CUDA kernels: offsets ``-(window // 2) .. window - 1 -
  window // 2`` (-15..14 for 30; the fallback's symmetric padding only works
  for odd windows).

  Args:
    q, k, v: ``[B, C, H, W]``.
    window: the side of the window.

  Returns:
    ``[B, C, H, W]``.
  """
  n, c, h, w = q.shape
  r = window // 2
  pad = (r, window - 1 - r, r, window - 1 - r)
  ks = F.unfold(F.pad(k, pad), window).view(n, c, window * window, h * w)
  vs = F.unfold(F.pad(v, pad), window).view(n, c, window * window, h * w)
  weights = torch.softmax(torch.einsum("ncp,nckp->nkp", q.reshape(n, c, h * w), ks), dim=1)
  return torch.einsum("nkp,nckp->ncp", weights, vs).view(n, c, h, w)


class PrecipLSTMCell(Cell):
  """PrecipLSTM (the authors' ``PrecipLSTM_cell``): local attention, ConvLSTM, M (zig-zag), S, T.

  ``X_a = X + conv_att(LA(att_q(X), att_k(X), att_v(X)))`` (:func:`local_attention`,
  under ``torch.utils.checkpoint``: the unfolded window is not kept for the
  backward pass); ``C' `` from ``conv_x(X_a) + conv_h(H)``; M and S as
  PredRNN's M from ``X_a``; T from ``X - X_{t-1}``, the layer's input of the
  previous step (the authors' ``x_t_1_lis``; zeros at t = 0), which the cell
  keeps in its state; ``o = s(o + conv_co(C') + conv_so(S') + conv_to(T') +
  conv_mo(M'))``; ``H' = o tanh(conv_last([C', S', T', M']))``. State
  ``(H, C, S, T, X)``. Option ``attention_window`` (30, the authors' ``la_num``).
  """

  uses_memory = True
  options = {"attention_window": 30}

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    c = channels
    self.att_q, self.att_k, self.att_v = (nn.Conv2d(c, c, 1, bias=False) for _ in range(3))
    self.conv_att = conv3(c, c)
    self.conv_x, self.conv_h = conv3(c, 4 * c), conv3(c, 4 * c)
    self.conv_xm, self.conv_mm = conv3(c, 3 * c), conv3(c, 3 * c)
    self.conv_xs, self.conv_ss = conv3(c, 3 * c), conv3(c, 3 * c)
    self.conv_xt, self.conv_tt = conv3(c, 3 * c), conv3(c, 3 * c)
    self.conv_co, self.conv_so, self.conv_to, self.conv_mo = (conv3(c, c) for _ in range(4))
    self.conv_last = nn.Conv2d(4 * c, c, 1)

  def initial_state(self, batch, height, width):
    """Zero ``(H, C, S, T, X_{t-1})``."""
    return (torch.zeros(batch, self.channels, height, width),) * 5

  @staticmethod
  def memory(gates, state):
    """``[i, f, g] -> s(f) state + s(i) tanh(g)``."""
    i, f, g = torch.chunk(gates, 3, dim=1)
    return torch.sigmoid(f) * state + torch.sigmoid(i) * torch.tanh(g)

  def forward(self, x, state, m, diag=None):
    h, c, s, t, x_prev = state
    att = checkpoint(local_attention, self.att_q(x), self.att_k(x), self.att_v(x),
                     self.opts["attention_window"], use_reentrant=False)
    xa = x + self.conv_att(att)
    i, f, g, o = torch.chunk(self.conv_x(xa) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m = self.memory(self.conv_xm(xa) + self.conv_mm(m), m)
    s = self.memory(self.conv_xs(xa) + self.conv_ss(s), s)
    t = self.memory(self.conv_xt(x - x_prev) + self.conv_tt(t), t)
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_so(s) + self.conv_to(t) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, s, t, m], dim=1)))
    return h, (h, c, s, t, x), m, {}


class MKLSTMCell(Cell):
  """MK-LSTM (the authors' ``MK_LSTM_Cell``; MS-MK-LSTM is their MS-LSTM): 3x3 and 5x5
  ConvLSTM paths with one output gate.

  ``[i_k, f_k, g_k, o_k] = conv_xk(X) + conv_hk(H)``, ``C_k' = s(f_k)C_k + s(i_k)tanh(g_k)``
  for k = 3, 5; ``o = s(o_3 + o_5 + conv_c3(C_3') + conv_c5(C_5'))``;
  ``H' = o tanh(conv_last([C_3', C_5']))``. State ``(H, C_3, C_5)``.
  """

  def __init__(self, channels: int, **kw):
    super().__init__(channels, **kw)
    c = channels
    self.conv_x3, self.conv_h3 = conv3(c, 4 * c), conv3(c, 4 * c)
    self.conv_x5 = nn.Conv2d(c, 4 * c, 5, padding=2)
    self.conv_h5 = nn.Conv2d(c, 4 * c, 5, padding=2)
    self.conv_c3, self.conv_c5 = conv3(c, c), nn.Conv2d(c, c, 5, padding=2)
    self.conv_last = nn.Conv2d(2 * c, c, 1)

  def initial_state(self, batch, height, width):
    """Zero ``(H, C_3, C_5)``."""
    return (torch.zeros(batch, self.channels, height, width),) * 3

  def forward(self, x, state, m=None, diag=None):
    h, c3, c5 = state
    i3, f3, g3, o3 = torch.chunk(self.conv_x3(x) + self.conv_h3(h), 4, dim=1)
    i5, f5, g5, o5 = torch.chunk(self.conv_x5(x) + self.conv_h5(h), 4, dim=1)
    c3 = torch.sigmoid(f3) * c3 + torch.sigmoid(i3) * torch.tanh(g3)
    c5 = torch.sigmoid(f5) * c5 + torch.sigmoid(i5) * torch.tanh(g5)
    o = torch.sigmoid(o3 + o5 + self.conv_c3(c3) + self.conv_c5(c5))
    h = o * torch.tanh(self.conv_last(torch.cat([c3, c5], dim=1)))
    return h, (h, c3, c5), m, {}


CELLS.update({"cms_lstm": CMSLSTMCell, "modernn": MoDeRNNCell, "preciplstm": PrecipLSTMCell,
              "mk_lstm": MKLSTMCell})


def _up(x):
  return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _resample(x, from_level: int, to_level: int):
  """Moves ``x`` between pyramid levels: 2x2 max pooling down, bilinear 2x up."""
  for _ in range(to_level - from_level):
    x = F.max_pool2d(x, 2, 2)
  for _ in range(from_level - to_level):
    x = _up(x)
  return x


def decouple_term(adapter: nn.Module, delta_c, delta_m):
  """PredRNN-V2's decoupling term of one layer: ``[B]``.

  |cos| over space between the adapted increments of C and M, summed over
  channels (the authors' ``torch.cosine_similarity`` of ``F.normalize``d
  ``adapter`` outputs).
  """
  a = F.normalize(adapter(delta_c).flatten(2), dim=2)
  b = F.normalize(adapter(delta_m).flatten(2), dim=2)
  return torch.abs(torch.cosine_similarity(a, b, dim=2)).sum(dim=1)


class Stack(nn.Module):
  """Embedding, six recurrent layers (plain or mirror pyramid), head: one time step."""

  def __init__(self, multiscale: bool, channels: int = 64, layers: int = 6, cell: str = "convlstm",
               in_channels: int = 1, **options):
    super().__init__()
    if multiscale and layers != 6:
      raise ValueError("the MS stack is the authors' six-layer mirror pyramid")
    cls = CELLS[cell]
    self.multiscale = multiscale
    self.channels = channels
    self.uses_memory = cls.uses_memory
    self.uses_diagonal = cls.uses_diagonal
    self.reverse_scheduled_sampling = cls.reverse_scheduled_sampling
    self.embed = nn.Conv2d(in_channels, channels, 1)
    self.cells = nn.ModuleList(cls(channels, layer=l, layers=layers, **options)
                               for l in range(layers))
    self.head = nn.Conv2d(channels, in_channels, 1)
    # PredRNN-V2: one 1x1 adapter shared by all layers.
    self.adapter = nn.Conv2d(channels, channels, 1) if cls.decouple else None

  def levels(self) -> list[int]:
    """Pyramid level (downsampling 2**level) of each layer."""
    if not self.multiscale:
      return [0] * len(self.cells)
    return [0, 1, 2, 2, 1, 0]

  def initial_states(self, batch: int, height: int, width: int):
    """Each layer's zero state at its resolution, and a zero M (or None)."""
    states = [cell.initial_state(batch, height >> lv, width >> lv)
              for cell, lv in zip(self.cells, self.levels(), strict=True)]
    m = torch.zeros(batch, self.channels, height, width) if self.uses_memory else None
    return states, m

  def forward(self, frame, states, m=None):
    """One step: ``(prediction, new states, M, decoupling term [B])``."""
    levels = self.levels()
    x = self.embed(frame)
    outs, new = [], []
    decouple = torch.zeros(frame.shape[0])
    for layer, cell in enumerate(self.cells):
      diag = None
      if self.uses_diagonal:
        # H_{t-1}^{l-1}, moved to this layer's level (no skip term).
        diag = (_resample(states[layer - 1][0], levels[layer - 1], levels[layer]) if layer
                else torch.zeros_like(x))
      out, state, m, extras = cell(x, states[layer], m, diag)
      if self.adapter is not None:
        decouple = decouple + decouple_term(self.adapter, extras["delta_c"], extras["delta_m"])
      outs.append(out)
      new.append(state)
      x = out
      if self.multiscale:
        if layer in (0, 1):
          x = F.max_pool2d(out, 2, 2)
          m = m if m is None else F.max_pool2d(m, 2, 2)
        elif layer in (3, 4):
          skip = outs[1] if layer == 3 else outs[0]
          x = _up(out) + skip
          m = m if m is None else _up(m)
    # The top layer's M goes to layer 0 of the next step as it is.
    return self.head(x), new, m, decouple


# Every family of CELLS, plain and MS.
MODELS = tuple(prefix + family for family in CELLS for prefix in ("", "ms_"))


def build(model: str, channels: int = 64, layers: int = 6, in_channels: int = 1,
          **options) -> Stack:
  """The stack for a model name of ``MODELS``; ``options`` go to every cell (e.g. ``links=10``)."""
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
  multiscale = model.startswith("ms_")
  return Stack(multiscale, channels, layers, model.removeprefix("ms_"), in_channels, **options)


def unroll(model: Stack, frames, in_len: int, mask):
  """Predicts frames 1..S-1 from frames ``[S, B, C, H, W]``.

  Args:
    model: the stack.
    frames: ``[S, B, C, H, W]``.
    in_len: context length: inputs at steps ``t < in_len`` are the true frames
      (only step 0 with PredRNN-V2's reverse scheduled sampling).
    mask: ``[S-1, B]`` truth weights of the inputs at the other steps
      (1 = the true frame, 0 = the previous prediction; entries of forced
      steps are ignored).

  Returns:
    ``[S-1, B, C, H, W]`` predictions and the decoupling terms ``[S-1, B]``
    (zeros but for PredRNN-V2).
  """
  seq, batch, _, height, width = frames.shape
  forced = 1 if model.reverse_scheduled_sampling else in_len
  states, m = model.initial_states(batch, height, width)
  preds, decouple, prev = [], [], None
  for t in range(seq - 1):
    frame = frames[t]
    if t >= forced:
      g = mask[t].view(batch, 1, 1, 1)
      frame = g * frame + (1 - g) * prev
    prev, states, m, dec = model(frame, states, m)
    preds.append(prev)
    decouple.append(dec)
  return torch.stack(preds), torch.stack(decouple)


def loss_fn(preds, frames, decouple=None, weight: float = DECOUPLE_WEIGHT):
  """L2(sum) + L1(sum) over pixels, each a mean over frames and batch, plus
  ``weight`` times the mean decoupling term ``[S-1, B]`` (PredRNN-V2)."""
  d = frames[1:] - preds
  loss = (d ** 2).sum(dim=(2, 3, 4)).mean() + d.abs().sum(dim=(2, 3, 4)).mean()
  if decouple is not None:
    loss = loss + weight * decouple.float().mean()
  return loss


def train_step(model, opt, frames, in_len: int, eta: float, generator,
               autocast: bool = False) -> float:
  """One step over frames ``[S, B, C, H, W]``: S-1 predictions, sampled inputs, Adam.

  ``autocast`` runs the forward pass under ``torch.autocast('cpu', torch.bfloat16)``
  (convolutions in bfloat16, parameters, optimizer and loss in float32), as a PyTorch
  user gets mixed precision with one line.
  """
  seq, batch = frames.shape[:2]
  mask = (torch.rand(seq - 1, batch, generator=generator) < eta).float()
  with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
    preds, decouple = unroll(model, frames, in_len, mask)
  loss = loss_fn(preds.float(), frames, decouple)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss.detach().item()


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="convlstm", choices=MODELS)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--repeats", type=int, default=8)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="bfloat16: the forward pass under torch.autocast('cpu', torch.bfloat16)")
  p.add_argument("--out", default=None)
  p.add_argument("--serve", action="store_true",
                 help="after the warm-up, one timed step per 'step' line on stdin")
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(2022)
  generator = torch.Generator().manual_seed(0)
  model = build(args.model, args.hidden)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  autocast = args.dtype == "bfloat16"
  frames = torch.rand(args.seq_len, args.batch, 1, args.size, args.size, generator=generator)
  for _ in range(args.warmup):
    train_step(model, opt, frames, args.seq_len // 2, 0.5, generator, autocast)
  if args.serve:
    print("ready", flush=True)
    for line in sys.stdin:
      if line.strip() == "rss":  # peak resident memory of this process, GB
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, flush=True)
        continue
      if line.strip() != "step":
        break
      t0 = time.perf_counter()
      train_step(model, opt, frames, args.seq_len // 2, 0.5, generator, autocast)
      print(f"{time.perf_counter() - t0:.6f}", flush=True)
    return {}
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    train_step(model, opt, frames, args.seq_len // 2, 0.5, generator, autocast)
    times.append(time.perf_counter() - t0)
  params = sum(v.numel() for v in model.parameters())
  result = {"model": args.model, "params": params, "torch": torch.__version__,
            "settings": vars(args), "times": times, "step_s": statistics.median(times)}
  print(f"torch {torch.__version__} {args.model} ({params:,} params): step "
        f"{result['step_s']:.3f}s (min {min(times):.3f}, max {max(times):.3f})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
