"""Model registry: ``create(name, **config)`` for the plain and MS- models.

Names: ``convlstm``, ``trajgru``, ``predrnn``, ``predrnn_v2``, ``predrnn_pp``,
``mim``, ``motionrnn``, each also as ``ms_<name>`` (the multi-scale variant
with the mirror pyramid and UNet skips).
"""

import dataclasses
from typing import Any

from msrnn_jax.cells import CELLS
from msrnn_jax.predictor import Predictor, predict

__all__ = ["MODEL_NAMES", "Predictor", "create", "model_options", "predict", "split_name"]

MODEL_NAMES: tuple[str, ...] = tuple(
    n for base in ("convlstm", "trajgru", "predrnn", "predrnn_pp", "mim", "motionrnn",
                   "predrnn_v2") for n in (base, f"ms_{base}"))

# Fields set by the registry from the model name.
_FROM_NAME = ("cell", "multiscale", "decouple", "reverse_scheduled_sampling")


def model_options() -> tuple[str, ...]:
  """Keyword options ``create`` accepts (the ``Predictor`` fields)."""
  return tuple(f.name for f in dataclasses.fields(Predictor)
               if f.name not in _FROM_NAME and f.name not in ("parent", "name"))


def split_name(name: str) -> tuple[str, bool]:
  """``'ms_predrnn'`` -> ``('predrnn', True)``; validates the name."""
  if name not in MODEL_NAMES:
    raise ValueError(f"Unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}.")
  multiscale = name.startswith("ms_")
  base = name[3:] if multiscale else name
  assert base in CELLS
  return base, multiscale


def create(name: str, **config: Any) -> Predictor:
  """Builds a model by name.

  Args:
    name: one of ``MODEL_NAMES``.
    **config: ``Predictor`` options (see ``model_options()``), e.g.
      ``hidden=64, num_layers=6, channels=1, remat='step'``.

  Returns:
    A ``Predictor``. PredRNN-V2 models compute the decoupling loss term
    (``aux['decouple_loss']``) and use reverse scheduled sampling.
  """
  base, multiscale = split_name(name)
  unknown = sorted(set(config) - set(model_options()))
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown}; valid: {', '.join(model_options())}.")
  if config.get("levels") is not None:
    config["levels"] = tuple(config["levels"])
  v2 = base == "predrnn_v2"
  return Predictor(cell=base, multiscale=multiscale, decouple=v2,
                   reverse_scheduled_sampling=v2, **config)
