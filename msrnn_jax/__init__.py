"""msrnn_jax: MS-RNN multi-scale recurrent networks for spatiotemporal prediction in JAX/Flax.

Packages, lowest layer first (a package imports only from those above it
in this list):

* ``backend``: the platform seam: which convolution kernels run (a CPU
  library, portable gradients, XLA's own) and host-allocator tuning.
* ``model``: cells, pyramid, predictor and ``create(name, **options)``.
* ``data``: tensorflow-datasets builders and grain input pipelines.
* ``evaluation``: metrics and pictures.
* ``training``: the train/eval steps, the loop, checkpoints, prediction.
* ``analysis``: compile-only memory and FLOP footprints.
* ``main`` / ``commands``: the command line.

The model API is re-exported here: ``msrnn_jax.create``,
``msrnn_jax.predict``, ``msrnn_jax.MODEL_NAMES``, ``msrnn_jax.Predictor``,
``msrnn_jax.ModelConfig`` (imported on first use, so ``import msrnn_jax``
stays cheap).
"""

__version__ = "0.1.0"

_MODEL_API = ("MODEL_NAMES", "ModelConfig", "Predictor", "create", "predict")
__all__ = list(_MODEL_API)


def __getattr__(name: str):
  if name in _MODEL_API:
    from msrnn_jax import model
    return getattr(model, name)
  raise AttributeError(f"module 'msrnn_jax' has no attribute {name!r}")
