"""PyTorch stand-in for the authors' ConvLSTM / MS-ConvLSTM training step, for back-to-back timing.

Issue 5 compares our JAX step with the authors' PyTorch code on the same CPU,
and this VM's speed drifts by 15-25% over a day, so the two have to be timed
back to back. This script rebuilds the reference's training step in PyTorch
from the specification in ``shared/reference/msrnn_reference.md`` (sections
2-5): a 1x1 embedding, six ConvLSTM layers of 64 channels with separate
``conv_x`` / ``conv_h`` 3x3 convolutions (the MS variant on the mirror
pyramid H, H/2, H/4, H/4, H/2, H with 2x2 max-pooling, bilinear upsampling
and additive skips), a 1x1 head, scheduled sampling, the L2(sum) + L1(sum)
loss over the 19 predicted frames and Adam. Parameter counts equal the
reference's (1,772,737 for both). It is not part of the library and needs
``torch`` (not a project requirement; e.g. ``pip install torch
--index-url https://download.pytorch.org/whl/cpu``, in a separate virtualenv).

    python experiments/torch_reference.py --model convlstm --repeats 8
    python experiments/torch_reference.py --model ms_convlstm --out /tmp/torch_ms.json

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


class ConvLSTMCell(nn.Module):
  """``[i, f, g, o] = conv_x(X) + conv_h(H)``; ``C' = s(f)C + s(i)tanh(g)``; ``H' = s(o)tanh(C')``."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv_x = nn.Conv2d(channels, 4 * channels, 3, padding=1)
    self.conv_h = nn.Conv2d(channels, 4 * channels, 3, padding=1)

  def forward(self, x, state):
    h, c = state
    i, f, g, o = torch.chunk(self.conv_x(x) + self.conv_h(h), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


class Stack(nn.Module):
  """Embedding, six ConvLSTM layers (plain or mirror pyramid), head."""

  def __init__(self, multiscale: bool, channels: int = 64, layers: int = 6):
    super().__init__()
    self.multiscale = multiscale
    self.channels = channels
    self.embed = nn.Conv2d(1, channels, 1)
    self.cells = nn.ModuleList(ConvLSTMCell(channels) for _ in range(layers))
    self.head = nn.Conv2d(channels, 1, 1)

  def sizes(self, size: int) -> list[int]:
    if not self.multiscale:
      return [size] * len(self.cells)
    return [size, size // 2, size // 4, size // 4, size // 2, size]

  def forward(self, frame, states):
    x = self.embed(frame)
    outs, new = [], []
    for layer, cell in enumerate(self.cells):
      out, state = cell(x, states[layer])
      outs.append(out)
      new.append(state)
      x = out
      if self.multiscale:
        if layer in (0, 1):
          x = F.max_pool2d(out, 2, 2)
        elif layer == 3:
          x = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=False) + outs[1]
        elif layer == 4:
          x = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=False) + outs[0]
    return self.head(x), new


def train_step(model, opt, frames, in_len: int, eta: float, generator) -> float:
  """One step over frames ``[S, B, 1, H, W]``: S-1 predictions, sampled inputs, Adam."""
  seq, batch, _, size, _ = frames.shape
  states = [(torch.zeros(batch, model.channels, s, s),) * 2 for s in model.sizes(size)]
  preds, prev = [], None
  for t in range(seq - 1):
    frame = frames[t]
    if t >= in_len:
      mask = (torch.rand(batch, 1, 1, 1, generator=generator) < eta).float()
      frame = mask * frame + (1 - mask) * prev
    prev, states = model(frame, states)
    preds.append(prev)
  d = frames[1:] - torch.stack(preds)
  loss = (d ** 2).sum(dim=(2, 3, 4)).mean() + d.abs().sum(dim=(2, 3, 4)).mean()
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss.detach().item()


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="convlstm", choices=("convlstm", "ms_convlstm"))
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--repeats", type=int, default=8)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--out", default=None)
  p.add_argument("--serve", action="store_true",
                 help="after the warm-up, one timed step per 'step' line on stdin")
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(2022)
  generator = torch.Generator().manual_seed(0)
  model = Stack(multiscale=args.model == "ms_convlstm")
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  frames = torch.rand(args.seq_len, args.batch, 1, args.size, args.size, generator=generator)
  for _ in range(args.warmup):
    train_step(model, opt, frames, args.seq_len // 2, 0.5, generator)
  if args.serve:
    print("ready", flush=True)
    for line in sys.stdin:
      if line.strip() == "rss":  # peak resident memory of this process, GB
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, flush=True)
        continue
      if line.strip() != "step":
        break
      t0 = time.perf_counter()
      train_step(model, opt, frames, args.seq_len // 2, 0.5, generator)
      print(f"{time.perf_counter() - t0:.6f}", flush=True)
    return {}
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    train_step(model, opt, frames, args.seq_len // 2, 0.5, generator)
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
