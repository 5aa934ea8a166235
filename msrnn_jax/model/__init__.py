"""The models: cells, the pyramid, the predictor, and ``create(name, **options)``.

Names: ``convlstm``, ``trajgru``, ``predrnn``, ``predrnn_pp``, ``mim``,
``motionrnn``, ``predrnn_v2``, ``cms_lstm``, ``modernn``, ``preciplstm``,
``mk_lstm`` (the families of ``cells.FAMILIES``), each also as
``ms_<name>`` (the multi-scale variant with the mirror pyramid and UNet
skips); ``cells.ALIASES`` adds the authors' other names (``ms_lstm`` =
``ms_mk_lstm``). Imports ``msrnn_jax.backend`` only (for the convolutions).
"""

import dataclasses
from typing import Any

from msrnn_jax.model.cells import ALIASES, FAMILIES
from msrnn_jax.model.config import ModelConfig
from msrnn_jax.model.predictor import Predictor, predict

__all__ = ["ALIASES", "MODEL_NAMES", "ModelConfig", "Predictor", "config_for", "create",
           "is_model_name", "model_options", "predict", "split_name"]

MODEL_NAMES: tuple[str, ...] = tuple(n for base in FAMILIES for n in (base, f"ms_{base}"))

# ModelConfig fields that come from the name, not from options.
_FROM_NAME = ("family", "multiscale", "options")


def _family_options() -> dict[str, Any]:
  """Every family's own options with their defaults."""
  return {k: v for f in FAMILIES.values() for k, v in f.cell.options.items()}


def model_options() -> tuple[str, ...]:
  """Keyword options ``create`` accepts: ``ModelConfig`` fields and family options."""
  fields = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _FROM_NAME)
  return fields + tuple(_family_options())


def is_model_name(name: str) -> bool:
  """Whether ``name`` is one of ``MODEL_NAMES`` or an alias of one."""
  return ALIASES.get(name, name) in MODEL_NAMES


def split_name(name: str) -> tuple[str, bool]:
  """``'ms_predrnn'`` -> ``('predrnn', True)``; validates the name (aliases resolved)."""
  name = ALIASES.get(name, name)
  multiscale = name.startswith("ms_")
  family = name[3:] if multiscale else name
  if family not in FAMILIES:
    raise ValueError(f"Unknown model {name!r}; valid: {', '.join(MODEL_NAMES + tuple(ALIASES))}.")
  return family, multiscale


def config_for(name: str, **options: Any) -> ModelConfig:
  """The ``ModelConfig`` of a model name and options (see :func:`create`)."""
  family, multiscale = split_name(name)
  unknown = sorted(set(options) - set(model_options()))
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown}; valid: {', '.join(model_options())}.")
  if options.get("levels") is not None:
    options["levels"] = tuple(int(v) for v in options["levels"])
  # Options of other families (a shared config file lists them all) are
  # not this model's: they are dropped.
  own = FAMILIES[family].cell.options
  cell_options = tuple(sorted((k, options.pop(k)) for k in list(options) if k in own))
  for k in _family_options():
    options.pop(k, None)
  config = ModelConfig(family=family, multiscale=multiscale, options=cell_options, **options)
  config.validate()
  return config


def create(name: str, **options: Any) -> Predictor:
  """Builds a model by name.

  Args:
    name: one of ``MODEL_NAMES`` or ``ALIASES``.
    **options: ``ModelConfig`` fields and family options (see
      ``model_options()``), e.g. ``hidden=64, num_layers=6, channels=1,
      remat='step', links=13``.

  Returns:
    A ``Predictor``. PredRNN-V2 models compute the decoupling loss term
    (``aux['decouple_loss']``) and use reverse scheduled sampling.
  """
  return Predictor(config_for(name, **options))
