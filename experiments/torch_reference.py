"""PyTorch rebuild of the authors' training step (ConvLSTM, PredRNN, CMS-LSTM, MoDeRNN, PrecipLSTM, MK-LSTM; plain and MS), for comparison.

MS-RNN (Ma et al., "MS-RNN: A Flexible Multi-Scale Framework for Spatiotemporal
Predictive Learning", arXiv:2206.03010) comes with a PyTorch implementation by
its authors (github.com/mazhf/MS-RNN, commit c563636). That code needs four
GPUs and DDP, so this script rebuilds its training step for one CPU process,
with the same modules and the same maths, to compare msrnn_jax with it on the
same machine: ``experiments/vs_torch.py`` times the two steps back to back,
``experiments/parity.py`` checks that they compute the same outputs, loss and
gradients from the same parameters.

What is rebuilt (the authors' ``models/convlstm.py``, ``ms_convlstm.py``,
``predrnn.py``, ``ms_predrnn.py``, ``cms_lstm.py``, ``modernn.py``,
``preciplstm.py``, ``ms_lstm.py`` (MK-LSTM) and their MS files,
``img_local_att/function.py``, ``model.py``, ``net_params.py`` and
``loss.py``): a 1x1 embedding, six recurrent layers of 64 channels, a 1x1
linear head, all with PyTorch's default initialisation.

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
  docstrings below), module names as msrnn_jax's. PrecipLSTM's local
  attention is the extension's pure-PyTorch fallback (an unfold of every
  pixel's window), padded as its CUDA kernels (offsets -15..14 for the
  30-wide window: the fallback's symmetric padding only works for odd
  windows); the layer's input of the previous step is kept by the stack,
  as the authors' ``x_t_1_lis``. Both attentions run under
  ``torch.utils.checkpoint`` (same values; the unfolded window is not kept
  for the backward pass).
* Plain stacks: layer l reads only the output of layer l-1 (no skips).
* MS stacks: the mirror pyramid H, H/2, H/4, H/4, H/2, H with 2x2 max pooling
  after layers 0 and 1, bilinear 2x upsampling (``align_corners=False``)
  after layers 3 and 4, and additive skips of the raw outputs of layers 1
  and 0 into the inputs of layers 4 and 5; M follows the same pool/up
  schedule without skips.
* Scheduled sampling over the future inputs, the L2(sum) + L1(sum) loss over
  the 19 predicted frames (mean over frames and batch) and Adam.

Parameter counts equal the authors' models at 6 x 64 with one input channel:
1,772,737 for (MS-)ConvLSTM, 3,594,817 for (MS-)PredRNN, 4,483,393 for
(MS-)CMS-LSTM, 5,854,657 for (MS-)MoDeRNN, 7,041,217 for (MS-)PrecipLSTM
and 7,576,897 for (MS-)MK-LSTM (MS-LSTM). It is not part
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

FAMILIES = ("convlstm", "predrnn", "cms_lstm", "modernn", "preciplstm", "mk_lstm")
MODELS = tuple(n for f in FAMILIES for n in (f, f"ms_{f}"))


class ConvLSTMCell(nn.Module):
  """``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f)C + s(i)tanh(g)``; ``H' = s(o)tanh(C')``."""

  uses_memory = False
  num_states = 2

  def __init__(self, channels: int, **_):
    super().__init__()
    self.conv_x = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1)

  def forward(self, x, state, m=None):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c), m


class STLSTMCell(nn.Module):
  """PredRNN's spatiotemporal LSTM, as the authors' ``PredRNN_Cell``.

  ``[i, f, g, o] = conv_x(X) + conv_h(H)``, ``C' = s(f)C + s(i)tanh(g)``;
  ``[i', f', g'] = conv_xm(X) + conv_mm(M)``, ``M' = s(f')M + s(i')tanh(g')``;
  ``o = s(o + conv_co(C') + conv_mo(M'))``; ``H' = o tanh(conv_last([C', M']))``.
  """

  uses_memory = True
  num_states = 2

  def __init__(self, channels: int, **_):
    super().__init__()
    self.conv_x = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_xm = nn.Conv2d(channels, 3 * channels, 3, padding=1)
    self.conv_mm = nn.Conv2d(channels, 3 * channels, 3, padding=1)
    self.conv_co = nn.Conv2d(channels, channels, 3, padding=1)
    self.conv_mo = nn.Conv2d(channels, channels, 3, padding=1)
    self.conv_last = nn.Conv2d(2 * channels, channels, 1)

  def forward(self, x, state, m):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    im, fm, gm = torch.chunk(self.conv_xm(x) + self.conv_mm(m), 3, dim=1)
    m = torch.sigmoid(fm) * m + torch.sigmoid(im) * torch.tanh(gm)
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
    return h, (h, c), m


def _conv(cin: int, cout: int, k: int = 3, bias: bool = True):
  return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class CMSLSTMCell(nn.Module):
  """The authors' ``CMS_LSTM_Cell``: CE block, ConvLSTM, SE block.

  CE: ``ce_iters`` rounds, odd ``X = 2 s(ce_q(H)) X``, even ``H = 2 s(ce_r(X)) H``.
  SE on ``[H | C]`` concatenated along the width: per scale 1, 2, 4, self-attention
  within the blocks (split and batched as the authors' ``seblock``) plus the input;
  ``se_fuse`` over the three, halves joined by ``se_z``, gates ``i, g, o`` from
  ``se_h(H) + se_zh(z)``, ``C' = C (1 - s(i)) + s(i) tanh(g)``, ``H' = C' s(o)``.
  """

  uses_memory = False
  num_states = 2

  def __init__(self, channels: int, ce_iters: int = 5, **_):
    super().__init__()
    c = channels
    self.ce_iters = ce_iters
    self.ce_q, self.ce_r = _conv(c, c), _conv(c, c)
    self.conv_x, self.conv_h = _conv(c, 4 * c), _conv(c, 4 * c)
    self.se_query = nn.ModuleList(_conv(c, c, 1) for _ in range(3))
    self.se_key = nn.ModuleList(_conv(c, c, 1) for _ in range(3))
    self.se_value = nn.ModuleList(_conv(c, c, 1) for _ in range(3))
    self.se_fuse = _conv(3 * c, c)
    self.se_z = _conv(2 * c, c, 1)
    self.se_h, self.se_zh = _conv(c, 3 * c), _conv(c, 3 * c)

  @staticmethod
  def _attend(q, k, v, scale):
    """The authors' seblock attention on ``[B, C, h, 2w]`` maps (blocks batched)."""
    c, h, w = q.shape[1], q.shape[2], q.shape[3] // 2
    block = h // scale

    def locals_(x):
      x = torch.stack([x[..., :w], x[..., w:]], 4)
      x = torch.cat(torch.split(x, block, dim=2), 0)
      return torch.cat(torch.split(x, block, dim=3), 0)

    q, k, v = locals_(q), locals_(k), locals_(v)
    n = q.shape[0]
    sim = torch.softmax(torch.bmm(q.reshape(n, c, -1).permute(0, 2, 1), k.reshape(n, c, -1)), -1)
    ctx = torch.bmm(v.reshape(n, c, -1), sim.permute(0, 2, 1)).view(n, c, block, block, 2)
    ctx = torch.cat(torch.split(ctx, n // scale, 0), dim=3)
    ctx = torch.cat(torch.split(ctx, n // scale // scale, 0), dim=2)
    return torch.cat([ctx[..., 0], ctx[..., 1]], 3)

  def forward(self, x, state, m=None):
    h, c = state
    for r in range(1, self.ce_iters + 1):
      if r % 2 == 0:
        h = 2 * torch.sigmoid(self.ce_r(x)) * h
      else:
        x = 2 * torch.sigmoid(self.ce_q(h)) * x
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    feats = torch.cat([h, c], dim=-1)
    priors = [feats + checkpoint(self._attend, self.se_query[j](feats), self.se_key[j](feats),
                                 self.se_value[j](feats), scale, use_reentrant=False)
              for j, scale in enumerate((1, 2, 4))]
    out = self.se_fuse(torch.cat(priors, dim=1))
    z_h, z_c = torch.split(out, out.shape[-1] // 2, -1)
    z = self.se_z(torch.cat([z_h, z_c], dim=1))
    i, g, o = torch.split(self.se_h(h) + self.se_zh(z), h.shape[1], dim=1)
    i = torch.sigmoid(i)
    c = c * (1 - i) + i * torch.tanh(g)
    h = c * torch.sigmoid(o)
    return h, (h, c), m


class MoDeRNNCell(nn.Module):
  """The authors' ``MoDeRNN_Cell``: DCB rounds (3/5/7 kernels averaged), then ConvLSTM."""

  uses_memory = False
  num_states = 2

  def __init__(self, channels: int, ce_iters: int = 5, **_):
    super().__init__()
    c = channels
    self.ce_iters = ce_iters
    self.dcb_x3, self.dcb_x5, self.dcb_x7 = _conv(c, c, 3), _conv(c, c, 5), _conv(c, c, 7)
    self.dcb_h3, self.dcb_h5, self.dcb_h7 = _conv(c, c, 3), _conv(c, c, 5), _conv(c, c, 7)
    self.conv_x, self.conv_h = _conv(c, 4 * c), _conv(c, 4 * c)

  def forward(self, x, state, m=None):
    h, c = state
    for r in range(1, self.ce_iters + 1):
      if r % 2 == 0:
        h = 2 * torch.sigmoid((self.dcb_x3(x) + self.dcb_x5(x) + self.dcb_x7(x)) / 3.0) * h
      else:
        x = 2 * torch.sigmoid((self.dcb_h3(h) + self.dcb_h5(h) + self.dcb_h7(h)) / 3.0) * x
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c), m


def local_attention(q, k, v, window: int):
  """The extension's unfold fallback, padded as its CUDA kernels (zero keys/values outside)."""
  n, c, h, w = q.shape
  r = window // 2
  pad = (r, window - 1 - r, r, window - 1 - r)
  ks = F.unfold(F.pad(k, pad), window).view(n, c, window * window, h * w)
  vs = F.unfold(F.pad(v, pad), window).view(n, c, window * window, h * w)
  scores = torch.einsum("ncp,nckp->nkp", q.reshape(n, c, h * w), ks)
  weights = torch.softmax(scores, dim=1)
  return torch.einsum("nkp,nckp->ncp", weights, vs).view(n, c, h, w)


class PrecipLSTMCell(nn.Module):
  """The authors' ``PrecipLSTM_cell``: local attention, ConvLSTM, M (zig-zag), S, T.

  ``X_a = X + conv_att(LA(X))``; C from ``conv_x(X_a) + conv_h(H)``; M, S from
  ``X_a``; T from ``X - X_{t-1}``; ``o = s(o + conv_co(C') + conv_so(S') +
  conv_to(T') + conv_mo(M'))``; ``H' = o tanh(conv_last([C', S', T', M']))``.
  """

  uses_memory = True
  uses_prev_input = True
  num_states = 4

  def __init__(self, channels: int, attention_window: int = 30, **_):
    super().__init__()
    c = channels
    self.window = attention_window
    self.att_q, self.att_k, self.att_v = (_conv(c, c, 1, bias=False) for _ in range(3))
    self.conv_att = _conv(c, c)
    self.conv_x, self.conv_h = _conv(c, 4 * c), _conv(c, 4 * c)
    self.conv_xm, self.conv_mm = _conv(c, 3 * c), _conv(c, 3 * c)
    self.conv_xs, self.conv_ss = _conv(c, 3 * c), _conv(c, 3 * c)
    self.conv_xt, self.conv_tt = _conv(c, 3 * c), _conv(c, 3 * c)
    self.conv_co, self.conv_so, self.conv_to, self.conv_mo = (_conv(c, c) for _ in range(4))
    self.conv_last = _conv(4 * c, c, 1)

  @staticmethod
  def _lstm3(gates, state):
    i, f, g = torch.chunk(gates, 3, dim=1)
    return torch.sigmoid(f) * state + torch.sigmoid(i) * torch.tanh(g)

  def forward(self, x, state, m, x_prev):
    h, c, s, t = state
    att = checkpoint(local_attention, self.att_q(x), self.att_k(x), self.att_v(x), self.window,
                     use_reentrant=False)
    xa = x + self.conv_att(att)
    i, f, g, o = torch.chunk(self.conv_x(xa) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m = self._lstm3(self.conv_xm(xa) + self.conv_mm(m), m)
    s = self._lstm3(self.conv_xs(xa) + self.conv_ss(s), s)
    t = self._lstm3(self.conv_xt(x - x_prev) + self.conv_tt(t), t)
    o = torch.sigmoid(o + self.conv_co(c) + self.conv_so(s) + self.conv_to(t) + self.conv_mo(m))
    h = o * torch.tanh(self.conv_last(torch.cat([c, s, t, m], dim=1)))
    return h, (h, c, s, t), m


class MKLSTMCell(nn.Module):
  """The authors' ``MK_LSTM_Cell``: 3x3 and 5x5 ConvLSTM paths, one output gate."""

  uses_memory = False
  num_states = 3

  def __init__(self, channels: int, **_):
    super().__init__()
    c = channels
    self.conv_x3, self.conv_h3 = _conv(c, 4 * c, 3), _conv(c, 4 * c, 3)
    self.conv_x5, self.conv_h5 = _conv(c, 4 * c, 5), _conv(c, 4 * c, 5)
    self.conv_c3, self.conv_c5 = _conv(c, c, 3), _conv(c, c, 5)
    self.conv_last = _conv(2 * c, c, 1)

  def forward(self, x, state, m=None):
    h, c3, c5 = state
    i3, f3, g3, o3 = torch.chunk(self.conv_x3(x) + self.conv_h3(h), 4, dim=1)
    i5, f5, g5, o5 = torch.chunk(self.conv_x5(x) + self.conv_h5(h), 4, dim=1)
    c3 = torch.sigmoid(f3) * c3 + torch.sigmoid(i3) * torch.tanh(g3)
    c5 = torch.sigmoid(f5) * c5 + torch.sigmoid(i5) * torch.tanh(g5)
    o = torch.sigmoid(o3 + o5 + self.conv_c3(c3) + self.conv_c5(c5))
    h = o * torch.tanh(self.conv_last(torch.cat([c3, c5], dim=1)))
    return h, (h, c3, c5), m


CELLS = {"convlstm": ConvLSTMCell, "predrnn": STLSTMCell, "cms_lstm": CMSLSTMCell,
         "modernn": MoDeRNNCell, "preciplstm": PrecipLSTMCell, "mk_lstm": MKLSTMCell}


def _up(x):
  return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Stack(nn.Module):
  """Embedding, six recurrent layers (plain or mirror pyramid), head: one time step."""

  def __init__(self, multiscale: bool, channels: int = 64, layers: int = 6, cell: str = "convlstm",
               in_channels: int = 1, **cell_options):
    super().__init__()
    if multiscale and layers != 6:
      raise ValueError("the MS stack is the authors' six-layer mirror pyramid")
    self.multiscale = multiscale
    self.channels = channels
    self.cell_cls = CELLS[cell]
    self.embed = nn.Conv2d(in_channels, channels, 1)
    self.cells = nn.ModuleList(self.cell_cls(channels, **cell_options) for _ in range(layers))
    self.head = nn.Conv2d(channels, in_channels, 1)

  def levels(self) -> list[int]:
    """Pyramid level (downsampling 2**level) of each layer."""
    if not self.multiscale:
      return [0] * len(self.cells)
    return [0, 1, 2, 2, 1, 0]

  def initial_states(self, batch: int, height: int, width: int):
    """Zero states per layer at its resolution, and a zero M (or None).

    Returns:
      ``((cell states, layer inputs of the previous step), M)``.
    """
    zeros = [torch.zeros(batch, self.channels, height >> lv, width >> lv) for lv in self.levels()]
    states = [(z,) * self.cell_cls.num_states for z in zeros]
    m = torch.zeros(batch, self.channels, height, width) if self.cell_cls.uses_memory else None
    return (states, zeros), m

  def forward(self, frame, states, m=None):
    states, prev_inputs = states
    x = self.embed(frame)
    outs, new, inputs = [], [], []
    for layer, cell in enumerate(self.cells):
      inputs.append(x)
      if getattr(cell, "uses_prev_input", False):
        out, state, m = cell(x, states[layer], m, prev_inputs[layer])
      else:
        out, state, m = cell(x, states[layer], m)
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
    return self.head(x), (new, inputs), m


def build(model: str, channels: int = 64, layers: int = 6, in_channels: int = 1,
          **cell_options) -> Stack:
  """The stack for a model name of ``MODELS`` (cell options: ``ce_iters``, ``attention_window``)."""
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
  multiscale = model.startswith("ms_")
  return Stack(multiscale, channels, layers, model.removeprefix("ms_"), in_channels,
               **cell_options)


def unroll(model: Stack, frames, in_len: int, mask):
  """Predicts frames 1..S-1 from frames ``[S, B, C, H, W]``.

  Args:
    model: the stack.
    frames: ``[S, B, C, H, W]``.
    in_len: context length: inputs at steps ``t < in_len`` are the true frames.
    mask: ``[S-1, B]`` truth weights of the inputs at steps ``t >= in_len``
      (1 = the true frame, 0 = the previous prediction; entries of earlier
      steps are ignored).

  Returns:
    ``[S-1, B, C, H, W]`` predictions.
  """
  seq, batch, _, height, width = frames.shape
  states, m = model.initial_states(batch, height, width)
  preds, prev = [], None
  for t in range(seq - 1):
    frame = frames[t]
    if t >= in_len:
      g = mask[t].view(batch, 1, 1, 1)
      frame = g * frame + (1 - g) * prev
    prev, states, m = model(frame, states, m)
    preds.append(prev)
  return torch.stack(preds)


def loss_fn(preds, frames):
  """L2(sum) + L1(sum) over pixels, each a mean over frames and batch."""
  d = frames[1:] - preds
  return (d ** 2).sum(dim=(2, 3, 4)).mean() + d.abs().sum(dim=(2, 3, 4)).mean()


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
    preds = unroll(model, frames, in_len, mask)
  loss = loss_fn(preds.float(), frames)
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
