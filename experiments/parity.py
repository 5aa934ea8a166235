"""Parity self-check: msrnn_jax against a PyTorch rebuild of the authors' models.

For each model (``--models``; ConvLSTM, TrajGRU, PredRNN, PredRNN++, MIM,
MotionRNN, PredRNN-V2, CMS-LSTM, MoDeRNN, PrecipLSTM and MK-LSTM, each plain
and MS; MS-MK-LSTM is the authors' MS-LSTM) this
builds our JAX model with ``msrnn_jax.model.create`` and the PyTorch rebuild
of the authors' model (``experiments/torch_reference.py``; MS-RNN, Ma et al.,
arXiv:2206.03010, code at github.com/mazhf/MS-RNN, commit c563636),
initialises the JAX parameters, copies them into the PyTorch model (each of
our ``Conv`` modules holds the parameters of one PyTorch ``Conv2d`` or
``ConvTranspose2d``, also where we fuse several into one call; HWIO kernels
become OIHW, or IOHW flipped for a transposed convolution), runs both on
the same random frames with the same scheduled-sampling mask, and compares,
all in float32:

* the T-1 predicted frames: ``max|a - b| / max|b|`` over the whole output;
* the loss (L2 sum + L1 sum over pixels, mean over frames and batch,
  ``msrnn_jax.training.losses``, plus 0.01 x PredRNN-V2's decoupling term):
  ``|a - b| / |b|``;
* every parameter gradient: ``max|a - b| / max|b|`` per tensor (``a`` ours,
  ``b`` PyTorch's), reported as the worst tensor (see ``grad_errors`` for
  gradients that are zero by construction);
* the parameter counts (equal, and at 6 x 64 equal to the authors' models;
  for PredRNN++ less the GHU pairs the authors build in every layer but use
  only in layer 1, which we do not create).

TrajGRU and MotionRNN are compared with the intended warping maths
(``docs/model.md``, "Deviations"), the PyTorch side sampling with
``warp='exact'`` (``PARITY_OPTIONS``; why: experiments/README.md). Family
options given on the command line (``--attention-window``) go to both sides,
to the families that have them.

A model passes when all three relative errors are <= ``--threshold`` (1e-4).
The mask is a fixed random 0/1 mask over all T-1 steps: the models must both
ignore its entries in the context phase (truth is forced there) and feed back
their own predictions where it is 0 afterwards. The script prints a Markdown
table, writes ``experiments/results/parity.json`` and exits 1 if any model
fails (2 if PyTorch is missing). ``--quick`` checks in seconds that it all
runs: ConvLSTM and MS-ConvLSTM at 6 x 4 channels, 16x16, batch 1, T = 4 (2
context frames), into ``experiments/results/parity_quick.json``; where
``--torch-python`` has no torch it runs our side alone (parameter counts,
loss, gradients), says so and compares nothing.

PyTorch is not a project requirement. This process (the project's venv) runs
the JAX side and starts ``--torch-python`` (default: this interpreter) on this
same file in ``--torch-side`` mode for the PyTorch side, which needs ``torch``
and ``numpy`` only (not msrnn_jax; set-up: ``INSTALL_HINT``). From the
repository root::

    .venv/bin/python experiments/parity.py --torch-python torchenv/bin/python
    .venv/bin/python experiments/parity.py --torch-python torchenv/bin/python \\
        --models ms_predrnn --conv-impl xla,auto --hidden 64

Defaults: hidden 16, 6 layers, batch 2, T = 20 with 10 context frames, 64x64,
``conv_impl='auto'`` (oneDNN on CPU): from half a minute (ConvLSTM) to a few
minutes (TrajGRU, MotionRNN; CMS-LSTM and PrecipLSTM, with their attention,
longer) per model on 2 cores. ``--conv-impl xla`` checks XLA's own
convolutions (the GPU path), which are slow on CPU inside the rolled time
loop (about 3x, TrajGRU 7 minutes on its own). Each kernel listed is a model
of its own (``conv_impl``).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The authors' models at 6 layers x 64 channels, one input channel (TrajGRU
# with L = 13 links), for each family; MS models have the same parameters.
PAPER_PARAMS = {"convlstm": 1_772_737, "trajgru": 2_157_661, "predrnn": 3_594_817,
                "predrnn_pp": 5_608_513, "mim": 7_361_473, "motionrnn": 7_560_547,
                "predrnn_v2": 3_598_977, "cms_lstm": 4_483_393, "modernn": 5_854_657,
                "preciplstm": 7_041_217, "mk_lstm": 7_576_897}
MODELS = tuple(prefix + family for family in PAPER_PARAMS for prefix in ("", "ms_"))
# The weight of PredRNN-V2's decoupling term in the loss (the authors'
# cfg.decouple_loss_weight); the other models' term is zero.
DECOUPLE_WEIGHT = 0.01
NUM_LAYERS = 6
# Options of the PyTorch cells that have them (see the docstring).
PARITY_OPTIONS = {"warp": "exact"}
# Family options taken from the command line, for both sides (each family takes its own).
FAMILY_ARGS = ("attention_window",)
# --quick: a few seconds, as CI runs it.
QUICK_MODELS = ("convlstm", "ms_convlstm")
QUICK_SHAPE = dict(hidden=4, size=16, batch=1, seq_len=4, in_len=2)
INSTALL_HINT = ("experiments/parity.py needs PyTorch and numpy in --torch-python (default: this "
                "interpreter): python3 -m venv torchenv && torchenv/bin/pip install "
                "numpy && torchenv/bin/pip install torch --index-url "
                "https://download.pytorch.org/whl/cpu, then pass --torch-python "
                "torchenv/bin/python")


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  """``max|a - b| / max|b|`` over one tensor (``b`` the reference; 0 if both are 0).

  Args:
    a: our values.
    b: the reference values, same shape.

  Returns:
    The largest absolute difference relative to the largest reference magnitude.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  diff = float(np.max(np.abs(a - b))) if a.size else 0.0
  scale = float(np.max(np.abs(b))) if b.size else 0.0
  if scale == 0.0:
    return 0.0 if diff == 0.0 else float("inf")
  return diff / scale


# A gradient below this fraction of the model's largest one is zero by construction (e.g. an
# attention key's bias: it shifts all of a query's scores alike, which the softmax ignores):
# both sides hold rounding noise, compared at the scale of the model's largest gradient.
ZERO_GRAD = 1e-5


def grad_errors(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
  """Per-tensor gradient errors, zero-by-construction gradients at the model's scale.

  ``rel_err``, or for a tensor whose reference gradient is below ``ZERO_GRAD``
  times the model's largest, ``max|a - b|`` over that largest.

  Args:
    ours: our gradients by ``state_dict`` name.
    ref: the reference's, same names and shapes.

  Returns:
    The error of each tensor, by name.
  """
  top = max(float(np.max(np.abs(v))) if v.size else 0.0 for v in ref.values())
  errs = {}
  for k, b in ref.items():
    b = np.asarray(b, np.float64)
    if b.size and top > 0 and float(np.max(np.abs(b))) < ZERO_GRAD * top:
      errs[k] = float(np.max(np.abs(np.asarray(ours[k], np.float64) - b))) / top
    else:
      errs[k] = rel_err(ours[k], b)
  return errs


def flat_params(params) -> dict[str, np.ndarray]:
  """Our parameter tree under the PyTorch model's ``state_dict`` names, in our layouts.

  Args:
    params: ``variables['params']`` of a ``Predictor`` (``step/embed``,
      ``step/head``, ``step/adapter``, ``step/layer_<l>/<conv>``, each with
      ``kernel`` HWIO and, but for bias-free convolutions, ``bias``).

  Returns:
    ``{'embed.weight': HWIO, 'cells.<l>.<conv>.bias': ..., 'head.bias': ...}``
    (the PyTorch side transposes the kernels: it knows which are transposed
    convolutions; a Flax list of modules, ``se_query_0``, is a ``ModuleList``,
    ``se_query.0``).
  """
  out = {}

  def conv(prefix, p):
    if set(p) not in ({"kernel", "bias"}, {"kernel"}):
      raise ValueError(f"{prefix}: unexpected parameters {sorted(p)}")
    out[f"{prefix}.weight"] = np.asarray(p["kernel"])
    if "bias" in p:
      out[f"{prefix}.bias"] = np.asarray(p["bias"])

  if set(params) != {"step"}:
    raise ValueError(f"unexpected top-level parameters {sorted(params)}")
  for name, p in params["step"].items():
    if name.startswith("layer_"):
      for cname, cp in p.items():
        cname = re.sub(r"_(\d+)$", r".\1", cname)
        conv(f"cells.{int(name[len('layer_'):])}.{cname}", cp)
    else:
      conv(name, p)
  return out


def tensor_label(name: str) -> str:
  """``cells.3.conv_h.weight`` -> ``layer 3 conv_h`` (the parameter tensor, readable)."""
  parts = name.split(".")
  if parts[0] == "cells":
    return f"layer {parts[1]} {'.'.join(parts[2:-1])}"
  return parts[0]


# ---------------------------------------------------------------------------
# PyTorch side: runs under --torch-python, imports neither jax nor msrnn_jax.


def torch_side(inp: str, out: str) -> None:
  """Loads inputs and parameters from ``inp``, runs the PyTorch model, writes ``out``.

  Args:
    inp: ``.npz`` with ``config`` (JSON), ``frames`` ``[S, B, C, H, W]``,
      ``mask`` ``[S-1, B]`` and ``param/<state_dict name>`` arrays in our
      layouts (HWIO kernels).
    out: ``.npz`` to write: ``preds``, ``loss``, ``grad/<name>`` (our
      layouts) and ``meta`` (JSON).
  """
  import torch

  sys.path.insert(0, HERE)
  import torch_reference as ref

  data = np.load(inp)
  cfg = json.loads(str(data["config"]))
  torch.set_num_threads(cfg["threads"])
  options = {k: v for k, v in {**PARITY_OPTIONS, **cfg["options"]}.items()
             if k in ref.CELLS[cfg["model"].removeprefix("ms_")].options}
  model = ref.build(cfg["model"], cfg["hidden"], cfg["layers"], cfg["channels"], **options)
  paper = ref.build(cfg["model"], 64, NUM_LAYERS, 1, **options)
  given = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
  params = dict(model.named_parameters())
  # Parameters the authors create but never use may be absent from ours
  # (PredRNN++'s GHU outside layer 1); they must get no gradient below.
  absent = sorted(set(params) - set(given))
  if set(given) - set(params):
    raise SystemExit(f"parameters only in ours: {sorted(set(given) - set(params))}")
  transposed = {f"{n}.weight" for n, mod in model.named_modules()
                if isinstance(mod, torch.nn.ConvTranspose2d)}

  def to_torch(name, v):  # HWIO -> OIHW (Conv2d) or IOHW, flipped (ConvTranspose2d)
    if v.ndim != 4:
      return v
    if name in transposed:
      return v[::-1, ::-1].transpose(2, 3, 0, 1)
    return v.transpose(3, 2, 0, 1)

  def from_torch(name, v):
    if v.ndim != 4:
      return v
    if name in transposed:
      return v.transpose(2, 3, 0, 1)[::-1, ::-1]
    return v.transpose(2, 3, 1, 0)

  with torch.no_grad():
    for k, v in given.items():
      v = np.ascontiguousarray(to_torch(k, v), np.float32)
      if tuple(params[k].shape) != v.shape:
        raise SystemExit(f"{k}: PyTorch shape {tuple(params[k].shape)}, ours {v.shape}")
      params[k].copy_(torch.from_numpy(v))
  frames = torch.from_numpy(np.array(data["frames"], np.float32))
  mask = torch.from_numpy(np.array(data["mask"], np.float32))
  t0 = time.perf_counter()
  preds, decouple = ref.unroll(model, frames, cfg["in_len"], mask)
  loss = ref.loss_fn(preds, frames, decouple, cfg["decouple_weight"])
  loss.backward()
  seconds = time.perf_counter() - t0
  used = [k for k in absent if params[k].grad is not None]
  if used:
    raise SystemExit(f"parameters absent from ours but used by PyTorch's model: {used}")
  paper_params = dict(paper.named_parameters())
  meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": seconds,
          "params": sum(p.numel() for p in params.values()),
          "params_absent": sum(params[k].numel() for k in absent),
          "params_6x64": sum(p.numel() for p in paper_params.values()),
          "params_6x64_absent": sum(paper_params[k].numel() for k in absent)}
  # A parameter whose output never reaches the loss (MIM's MIM-N/MIM-S in
  # layer 0, MotionGRU in the last MotionRNN layer) has no gradient: zero.
  grads = {k: np.ascontiguousarray(from_torch(k, (params[k].grad if params[k].grad is not None
                                                  else torch.zeros_like(params[k])).numpy()))
           for k in given}
  np.savez(out, preds=preds.detach().numpy(), loss=np.float32(loss.item()), meta=json.dumps(meta),
           **{f"grad/{k}": v for k, v in grads.items()})


# ---------------------------------------------------------------------------
# JAX side.


def has_torch(python: str) -> bool:
  """Whether the interpreter ``python`` imports torch and numpy."""
  try:
    return subprocess.run([python, "-c", "import numpy, torch"],
                          capture_output=True).returncode == 0
  except OSError:
    return False


def run_torch(python: str, cfg: dict, frames: np.ndarray, mask: np.ndarray,
              params: dict[str, np.ndarray], tmp: str) -> dict:
  """Runs the PyTorch side in a subprocess; returns its outputs (PyTorch layouts)."""
  inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
  np.savez(inp, config=json.dumps(cfg), frames=frames, mask=mask,
           **{f"param/{k}": v for k, v in params.items()})
  # glibc's dynamic mmap threshold lets the PyTorch side's many mid-sized
  # temporaries (warp='exact' recomputes its taps) fragment the heap to
  # several GB; a fixed threshold returns them to the system.
  env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
  subprocess.run([python, os.path.abspath(__file__), "--torch-side", inp, out], check=True,
                 env=env)
  data = np.load(out)
  return {"preds": data["preds"], "loss": float(data["loss"]), "meta": json.loads(str(data["meta"])),
          "grads": {k[len("grad/"):]: data[k] for k in data.files if k.startswith("grad/")}}


def jax_loss_and_grads(model, params, frames: np.ndarray, mask: np.ndarray):
  """Our predictions, loss and parameter gradients (float32)."""
  import jax
  import jax.numpy as jnp

  from msrnn_jax.training import losses

  frames = jnp.asarray(frames, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)

  def loss_of(p):
    preds, aux = model.apply({"params": p}, frames, mask)
    loss, _ = losses.training_loss(preds, frames, aux["decouple_loss"], DECOUPLE_WEIGHT)
    return loss, preds

  (loss, preds), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(params)
  jax.block_until_ready(grads)
  return np.asarray(preds), float(loss), grads


def family_options(name: str, args: argparse.Namespace) -> dict:
  """The command line's family options (``FAMILY_ARGS``) that ``name``'s family has."""
  from msrnn_jax import model as model_lib

  own = model_lib.family(name).options
  return {k: getattr(args, k) for k in FAMILY_ARGS if k in own}


def check_model(name: str, impls: list[str], args: argparse.Namespace, tmp: str,
                with_torch: bool = True) -> list[dict]:
  """Compares one model for each JAX ``conv_impl``; one result dict per impl.

  Without torch (``--quick`` only) it runs our side alone: parameter counts,
  loss and gradients, nothing compared.
  """
  import jax
  import jax.numpy as jnp

  from msrnn_jax import model as model_lib

  rng = np.random.default_rng(args.seed)
  b, t, s, c = args.batch, args.seq_len, args.size, 1
  frames = rng.uniform(size=(b, t, s, s, c)).astype(np.float32)
  mask = (rng.uniform(size=(b, t - 1)) < 0.5).astype(np.float32)

  def create(hidden=args.hidden, conv_impl="xla"):
    return model_lib.create(name, hidden=hidden, num_layers=NUM_LAYERS, channels=c,
                            in_len=args.in_len, conv_impl=conv_impl, **options)

  options = family_options(name, args)

  params = jax.jit(create().init)(jax.random.PRNGKey(args.seed), jnp.asarray(frames),
                                  jnp.asarray(mask))["params"]
  paper_shapes = jax.eval_shape(create(64).init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, 2, 16, 16, 1), jnp.float32))
  jax_params_6x64 = int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(paper_shapes)))
  torch_params = flat_params(params)
  cfg = {"model": name, "hidden": args.hidden, "layers": NUM_LAYERS, "channels": c,
         "in_len": args.in_len, "threads": args.threads, "decouple_weight": DECOUPLE_WEIGHT,
         "options": options}
  # PyTorch layouts: frames [S, B, C, H, W], mask [S-1, B].
  ref = run_torch(args.torch_python, cfg, frames.transpose(1, 0, 4, 2, 3), mask.T.copy(),
                  torch_params, tmp) if with_torch else None
  results = []
  for impl in impls:
    t0 = time.perf_counter()
    model = create(conv_impl=impl)
    resolved = model.config.conv_impl
    preds, loss, grads = jax_loss_and_grads(model, params, frames, mask)
    seconds = time.perf_counter() - t0
    r = {"model": name, "conv_impl": impl, "resolved_impl": resolved,
         "params": int(sum(v.size for v in torch_params.values())),
         "params_6x64": jax_params_6x64,
         "paper_params_6x64": PAPER_PARAMS[name.removeprefix("ms_")], "loss": loss,
         "jax_seconds": seconds}
    if ref is None:
      print(f"  {name} [{impl}]: loss {loss:.4g}, {r['params']:,} parameters; JAX {seconds:.1f} s",
            flush=True)
      results.append(r)
      continue
    preds = preds.transpose(1, 0, 4, 2, 3)
    grad_errs = grad_errors(flat_params(grads), ref["grads"])
    worst = max(grad_errs, key=grad_errs.get)
    r.update(
        torch_params=ref["meta"]["params"], torch_params_absent=ref["meta"]["params_absent"],
        torch_params_6x64=ref["meta"]["params_6x64"],
        torch_params_6x64_absent=ref["meta"]["params_6x64_absent"],
        output_abs_diff=float(np.max(np.abs(preds - ref["preds"]))),
        output_rel_err=rel_err(preds, ref["preds"]),
        torch_loss=ref["loss"], loss_rel_err=abs(loss - ref["loss"]) / abs(ref["loss"]),
        worst_grad_rel_err=grad_errs[worst], worst_grad_param=worst,
        worst_grad_tensor=tensor_label(worst), grad_rel_err=grad_errs,
        torch_seconds=ref["meta"]["seconds"], torch=ref["meta"]["torch"],
        torch_threads=ref["meta"]["threads"])
    r["params_ok"] = (r["params"] == r["torch_params"] - r["torch_params_absent"]
                      and r["torch_params_6x64"] == r["paper_params_6x64"]
                      and r["params_6x64"] == r["torch_params_6x64"]
                      - r["torch_params_6x64_absent"])
    r["pass"] = bool(r["params_ok"] and max(r["output_rel_err"], r["loss_rel_err"],
                                            r["worst_grad_rel_err"]) <= args.threshold)
    print(f"  {name} [{impl}]: output {r['output_rel_err']:.2e}, loss {r['loss_rel_err']:.2e}, "
          f"worst grad {r['worst_grad_rel_err']:.2e} ({worst}); JAX {seconds:.1f} s, PyTorch "
          f"{r['torch_seconds']:.1f} s", flush=True)
    results.append(r)
  return results


def table(results: list[dict], threshold: float) -> str:
  """The Markdown table of the results."""
  lines = [
      "| model | conv_impl | params (H / 6x64) | max output diff (abs / rel) | loss rel diff "
      f"| worst grad rel diff (param) | pass (<= {threshold:g}) |",
      "|---|---|---|---|---|---|---|"]
  for r in results:
    impl = r["conv_impl"] + (f" (= {r['resolved_impl']})" if r["resolved_impl"] != r["conv_impl"]
                             else "")
    if "pass" not in r:  # our side alone (--quick without torch)
      lines.append(f"| {r['model']} | {impl} | {r['params']:,} / {r['params_6x64']:,} | - | - | - "
                   "| not compared |")
      continue
    params = f"{r['params']:,} / {r['params_6x64']:,}" + ("" if r["params_ok"] else " MISMATCH")
    lines.append(
        f"| {r['model']} | {impl} | {params} | {r['output_abs_diff']:.2e} / "
        f"{r['output_rel_err']:.2e} | {r['loss_rel_err']:.2e} | {r['worst_grad_rel_err']:.2e} "
        f"(`{r['worst_grad_param']}`) | {'pass' if r['pass'] else '**FAIL**'} |")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch-python", default=sys.executable,
                 help="a Python interpreter with torch and numpy (default: this one)")
  p.add_argument("--models", default=None,
                 help=f"comma-separated, of {MODELS} (default: all; --quick: "
                      f"{','.join(QUICK_MODELS)})")
  p.add_argument("--conv-impl", default="auto",
                 help="JAX conv_impl, or several comma-separated (e.g. xla,auto)")
  p.add_argument("--hidden", type=int, default=16, help="channels of every layer")
  p.add_argument("--size", type=int, default=64, help="frame height and width")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq-len", type=int, default=20, help="T (T-1 predicted frames)")
  p.add_argument("--in-len", type=int, default=10, help="context frames")
  p.add_argument("--attention-window", type=int, default=30,
                 help="PrecipLSTM's local-attention window (the authors' la_num)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=1, help="PyTorch threads")
  p.add_argument("--threshold", type=float, default=1e-4)
  p.add_argument("--quick", action="store_true",
                 help="seconds: ConvLSTM and MS-ConvLSTM at 6 x 4, 16x16, batch 1, T = 4 (2 "
                      "context); without torch in --torch-python, our side alone")
  p.add_argument("--out", default=None,
                 help="JSON to write (default experiments/results/parity.json, --quick: "
                      "parity_quick.json)")
  p.add_argument("--torch-side", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    vars(args).update(QUICK_SHAPE)
  args.models = args.models or ",".join(QUICK_MODELS if args.quick else MODELS)
  args.out = args.out or os.path.join(
      HERE, "results", "parity_quick.json" if args.quick else "parity.json")
  if args.torch_side is None:
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
      p.error(f"unknown model(s) {bad}; valid: {', '.join(MODELS)}")
    if args.size % 4:
      p.error("--size must be a multiple of 4 (the MS pyramid)")
    if not 1 <= args.in_len < args.seq_len:
      p.error("need 1 <= --in-len < --seq-len")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.torch_side:
    torch_side(*args.torch_side)
    return 0
  with_torch = has_torch(args.torch_python)
  if not with_torch:
    if not args.quick:
      print(INSTALL_HINT)
      return 2
    print(f"PyTorch not found in {args.torch_python}: running our side alone, nothing compared",
          flush=True)
  sys.path.insert(0, ROOT)
  import jax

  from msrnn_jax import model as model_lib

  for name in args.models.split(","):
    multiple = model_lib.config_for(name).size_multiple()
    if args.size % multiple:
      print(f"error: --size {args.size} is not a multiple of {multiple}, which {name} needs; "
            f"pass e.g. --size {max(multiple, args.size // multiple * multiple)}")
      return 2

  t0 = time.perf_counter()
  impls = [i for i in args.conv_impl.split(",") if i]
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      print(f"{name}:", flush=True)
      results += check_model(name, impls, args, tmp, with_torch)
  seconds = time.perf_counter() - t0
  settings = {k: v for k, v in vars(args).items() if k not in ("torch_side", "out")}
  settings.update(layers=NUM_LAYERS, jax=jax.__version__, backend=jax.default_backend(),
                  torch=results[0].get("torch") if results else None, seconds=seconds)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump({"settings": settings, "results": results}, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(table(results, args.threshold))
  compared = [r for r in results if "pass" in r]
  verdict = (f"{sum(r['pass'] for r in compared)}/{len(compared)} passed" if with_torch
             else "our side alone, nothing compared,")
  print(f"{verdict} in {seconds:.0f} s; wrote {args.out}")
  return 0 if all(r["pass"] for r in compared) else 1


if __name__ == "__main__":
  sys.exit(main())
