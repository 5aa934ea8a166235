"""The recurrent cells and the registry of model families.

One file per cell (``base.py`` states the interface). A family (a model name
without ``ms_``) is a cell plus family-wide switches. Adding a cell takes its
file and one entry in :data:`FAMILIES` (example in ``docs/model.md``).
"""

import dataclasses
from typing import Any

from msrnn_jax.model.cells.base import CellBase
from msrnn_jax.model.cells.causal_lstm import CausalLSTMCell
from msrnn_jax.model.cells.cms_lstm import CMSLSTMCell
from msrnn_jax.model.cells.convlstm import ConvLSTMCell
from msrnn_jax.model.cells.mim import MIMCell
from msrnn_jax.model.cells.mk_lstm import MKLSTMCell
from msrnn_jax.model.cells.modernn import MoDeRNNCell
from msrnn_jax.model.cells.motionrnn import MotionRNNCell
from msrnn_jax.model.cells.preciplstm import PrecipLSTMCell
from msrnn_jax.model.cells.st_lstm import STLSTMCell
from msrnn_jax.model.cells.trajgru import TrajGRUCell

__all__ = ["ALIASES", "FAMILIES", "CMSLSTMCell", "CausalLSTMCell", "CellBase", "ConvLSTMCell",
           "Family", "MIMCell", "MKLSTMCell", "MoDeRNNCell", "MotionRNNCell", "PrecipLSTMCell",
           "STLSTMCell", "TrajGRUCell"]


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: everything the rest of the code knows about it.

  Attributes:
    cell: the cell class every layer uses, with the family's ``options``.
    decouple: compute PredRNN-V2's decoupling loss term.
    reverse_scheduled_sampling: the sampling mask may also replace
      context frames (PredRNN-V2); step 0 is always truth.
    unroll: the model variants whose time loop ``scan_unroll='auto'``
      unrolls fully at large frames (``ModelConfig.time_unroll``): the
      compute dtype's name for the plain stack (``'float32'``), with
      ``'ms_'`` in front for the pyramid (``'ms_bfloat16'``); listed where
      unrolling measured faster with the training process still below
      PyTorch's peak memory (docs/performance.md, "Scan, remat and memory").
  """

  cell: type[CellBase]
  decouple: bool = False
  reverse_scheduled_sampling: bool = False
  unroll: tuple[str, ...] = ()

  @property
  def options(self) -> dict[str, Any]:
    """Its own options and their defaults; ``cell.state_options`` shape the parameters."""
    return self.cell.options

  @property
  def scheduled_sampling(self) -> str:
    """Its training schedule of truth inputs, ``'reverse'`` or ``'linear'`` (``training.sampling``)."""
    return "reverse" if self.reverse_scheduled_sampling else "linear"


FAMILIES: dict[str, Family] = {
    "convlstm": Family(ConvLSTMCell, unroll=("float32", "ms_float32", "bfloat16", "ms_bfloat16")),
    "trajgru": Family(TrajGRUCell),
    "predrnn": Family(STLSTMCell, unroll=("float32", "ms_float32", "bfloat16")),
    "predrnn_pp": Family(CausalLSTMCell, unroll=("float32", "ms_float32", "bfloat16")),
    "mim": Family(MIMCell, unroll=("float32", "ms_float32", "bfloat16", "ms_bfloat16")),
    "motionrnn": Family(MotionRNNCell),
    "predrnn_v2": Family(STLSTMCell, decouple=True, reverse_scheduled_sampling=True,
                         unroll=("float32", "ms_float32", "bfloat16", "ms_bfloat16")),
    "cms_lstm": Family(CMSLSTMCell),
    "modernn": Family(MoDeRNNCell),
    "preciplstm": Family(PrecipLSTMCell),
    "mk_lstm": Family(MKLSTMCell),
}

# Other names of models, as the authors call them: MS-LSTM (Ma et al. 2023,
# arXiv:2304.07724) is the mirror pyramid over MK-LSTM cells.
ALIASES: dict[str, str] = {"ms_lstm": "ms_mk_lstm"}
