"""The training loss of the reference: L2 + L1, summed over pixels.

``loss = mean_{frames, batch} sum_{pixels} (y - p)^2 + mean_{frames, batch}
sum_{pixels} |y - p|`` over all T-1 next-frame predictions (the context
phase's one-step predictions included), plus ``weight * decouple`` for
PredRNN-V2.
"""

import jax
import jax.numpy as jnp


def per_example_losses(preds: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Per-example L2 and L1 terms.

  Args:
    preds: ``[batch, frames, height, width, channels]``.
    targets: same shape.

  Returns:
    dict with ``mse`` and ``mae``, each ``[batch]``: the pixel sum per frame,
    averaged over frames.
  """
  if preds.shape != targets.shape:
    raise ValueError(f"predictions {preds.shape} and targets {targets.shape} differ in shape.")
  d = preds.astype(jnp.float32) - targets.astype(jnp.float32)
  return {"mse": jnp.mean(jnp.sum(d * d, axis=(2, 3, 4)), axis=1),
          "mae": jnp.mean(jnp.sum(jnp.abs(d), axis=(2, 3, 4)), axis=1)}


def training_loss(preds: jax.Array, frames: jax.Array, decouple: jax.Array | float = 0.0,
                  decouple_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Scalar loss and per-example terms for ``preds`` of ``frames[:, 1:]``."""
  terms = per_example_losses(preds, frames[:, 1:])
  loss = jnp.mean(terms["mse"] + terms["mae"]) + decouple_weight * decouple
  return loss, terms
