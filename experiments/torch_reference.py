"""PyTorch rebuild of the authors' ConvLSTM / PredRNN training step (plain and MS), for comparison.

MS-RNN (Ma et al., "MS-RNN: A Flexible Multi-Scale Framework for Spatiotemporal
Predictive Learning", arXiv:2206.03010) comes with a PyTorch implementation by
its authors (github.com/mazhf/MS-RNN, commit c563636). That code needs four
GPUs and DDP, so this script rebuilds its training step for one CPU process,
with the same modules and the same maths, to compare msrnn_jax with it on the
same machine: ``experiments/vs_torch.py`` times the two steps back to back,
``experiments/parity.py`` checks that they compute the same outputs, loss and
gradients from the same parameters.

What is rebuilt (the authors' ``models/convlstm.py``, ``ms_convlstm.py``,
``predrnn.py``, ``ms_predrnn.py``, ``model.py``, ``net_params.py`` and
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
* Plain stacks: layer l reads only the output of layer l-1 (no skips).
* MS stacks: the mirror pyramid H, H/2, H/4, H/4, H/2, H with 2x2 max pooling
  after layers 0 and 1, bilinear 2x upsampling (``align_corners=False``)
  after layers 3 and 4, and additive skips of the raw outputs of layers 1
  and 0 into the inputs of layers 4 and 5; M follows the same pool/up
  schedule without skips.
* Scheduled sampling over the future inputs, the L2(sum) + L1(sum) loss over
  the 19 predicted frames (mean over frames and batch) and Adam.

Parameter counts equal the authors' models: 1,772,737 for (MS-)ConvLSTM and
3,594,817 for (MS-)PredRNN at 6 x 64 with one input channel. It is not part
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
except ImportError:
  sys.exit("experiments/torch_reference.py needs PyTorch, which msrnn_jax does not install: "
           "pip install torch --index-url https://download.pytorch.org/whl/cpu "
           "(in a separate virtualenv).")

MODELS = ("convlstm", "ms_convlstm", "predrnn", "ms_predrnn")


class ConvLSTMCell(nn.Module):
  """``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f)C + s(i)tanh(g)``; ``H' = s(o)tanh(C')``."""

  uses_memory = False

  def __init__(self, channels: int):
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

  def __init__(self, channels: int):
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


CELLS = {"convlstm": ConvLSTMCell, "predrnn": STLSTMCell}


def _up(x):
  return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Stack(nn.Module):
  """Embedding, six recurrent layers (plain or mirror pyramid), head: one time step."""

  def __init__(self, multiscale: bool, channels: int = 64, layers: int = 6, cell: str = "convlstm",
               in_channels: int = 1):
    super().__init__()
    if multiscale and layers != 6:
      raise ValueError("the MS stack is the authors' six-layer mirror pyramid")
    self.multiscale = multiscale
    self.channels = channels
    self.uses_memory = CELLS[cell].uses_memory
    self.embed = nn.Conv2d(in_channels, channels, 1)
    self.cells = nn.ModuleList(CELLS[cell](channels) for _ in range(layers))
    self.head = nn.Conv2d(channels, in_channels, 1)

  def levels(self) -> list[int]:
    """Pyramid level (downsampling 2**level) of each layer."""
    if not self.multiscale:
      return [0] * len(self.cells)
    return [0, 1, 2, 2, 1, 0]

  def initial_states(self, batch: int, height: int, width: int):
    """Zero ``(H, C)`` per layer at its resolution, and a zero M (or None)."""
    states = [(torch.zeros(batch, self.channels, height >> lv, width >> lv),) * 2
              for lv in self.levels()]
    m = torch.zeros(batch, self.channels, height, width) if self.uses_memory else None
    return states, m

  def forward(self, frame, states, m=None):
    x = self.embed(frame)
    outs, new = [], []
    for layer, cell in enumerate(self.cells):
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
    return self.head(x), new, m


def build(model: str, channels: int = 64, layers: int = 6, in_channels: int = 1) -> Stack:
  """The stack for a model name of ``MODELS``."""
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
  multiscale = model.startswith("ms_")
  return Stack(multiscale, channels, layers, model.removeprefix("ms_"), in_channels)


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
