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

from msrnn_jax.model.cells import ALIASES, FAMILIES, Family
from msrnn_jax.model.config import ConfigValueError, ModelConfig
from msrnn_jax.model.predictor import Predictor, predict

__all__ = ["ALIASES", "MODEL_NAMES", "ConfigValueError", "ModelConfig", "Predictor", "config_for",
           "create", "family", "family_options", "is_model_name", "model_names", "model_options",
           "predict", "split_name"]

# ModelConfig fields that come from the name, not from options.
_FROM_NAME = ("family", "multiscale", "options")


def model_names() -> tuple[str, ...]:
  """Every model name: each family of ``cells.FAMILIES``, plain and ``ms_``."""
  return tuple(n for base in FAMILIES for n in (base, f"ms_{base}"))


# The built-in models (cells registered later are in model_names()).
MODEL_NAMES: tuple[str, ...] = model_names()


def family_options() -> dict[str, Any]:
  """Every family's own options with their defaults."""
  return {k: v for f in FAMILIES.values() for k, v in f.options.items()}


def model_options() -> tuple[str, ...]:
  """Keyword options ``create`` accepts: ``ModelConfig`` fields and family options."""
  fields = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _FROM_NAME)
  return fields + tuple(family_options())


def is_model_name(name: str) -> bool:
  """Whether ``name`` is one of ``MODEL_NAMES`` or an alias of one."""
  return ALIASES.get(name, name) in model_names()


def split_name(name: str) -> tuple[str, bool]:
  """``'ms_predrnn'`` -> ``('predrnn', True)``; validates the name (aliases resolved)."""
  name = ALIASES.get(name, name)
  multiscale = name.startswith("ms_")
  family_name = name[3:] if multiscale else name
  if family_name not in FAMILIES:
    raise ConfigValueError("name", name,
                           f"use one of {', '.join(model_names() + tuple(ALIASES))}")
  return family_name, multiscale


def family(name: str) -> Family:
  """The :class:`~msrnn_jax.model.cells.Family` of a model name."""
  return FAMILIES[split_name(name)[0]]


def config_for(name: str, **options: Any) -> ModelConfig:
  """The validated ``ModelConfig`` of a name and options (:func:`create`), ``'auto'`` unresolved."""
  family_name, multiscale = split_name(name)
  options.setdefault("conv_impl", "auto")
  options.setdefault("warp_impl", "auto")
  for key in sorted(set(options) - set(model_options())):
    raise ConfigValueError(key, options[key], f"no such model option; the options: "
                           f"{', '.join(model_options())}")
  if options.get("levels") is not None:
    options["levels"] = tuple(int(v) for v in options["levels"])
  if str(options.get("scan_unroll")).isdigit():
    # A config file's field holds 'auto' or a number given on the command line as text.
    options["scan_unroll"] = int(options["scan_unroll"])
  # Options of other families (a shared config file lists them all) are
  # not this model's: they are dropped.
  own = FAMILIES[family_name].options
  cell_options = tuple(sorted((k, v) for k, v in options.items() if k in own))
  options = {k: v for k, v in options.items() if k not in family_options()}
  return ModelConfig(family=family_name, multiscale=multiscale, options=cell_options, **options)


def create(name: str, **options: Any) -> Predictor:
  """Builds a model by name.

  Args:
    name: one of ``model_names()`` or ``ALIASES``.
    **options: ``ModelConfig`` fields and family options (see
      ``model_options()``), e.g. ``hidden=64, num_layers=6, channels=1,
      remat='step', links=13``; ``conv_impl`` and ``warp_impl`` default to ``'auto'``.

  Returns:
    A ``Predictor`` whose ``conv_impl``, ``warp_impl`` and ``dtype`` are concrete (``'auto'``
    decided here, for this platform).
  """
  return Predictor(config_for(name, **options).resolved())
