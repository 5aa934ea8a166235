"""Scheduled sampling: which inputs are ground truth and which are predictions.

The model takes a ``[batch, T-1]`` mask of ground-truth weights for the
inputs of steps 0..T-2 (1 = true frame, 0 = the model's previous prediction).

* Scheduled sampling (all models but PredRNN-V2, as the reference): the
  probability ``eta`` of feeding the truth in the prediction phase decays
  linearly per iteration from 1 to 0 over the whole run; the context phase
  always gets the truth.
* Reverse scheduled sampling (PredRNN-V2): per epoch, the context-phase
  probability ``eta_r`` rises from 0.5 to 1 and the prediction-phase ``eta``
  falls from 0.5 to 0 between epochs E/3 and 2E/3 (reference formulas).
"""

import math

import jax
import jax.numpy as jnp


def linear_eta(step: int | jax.Array, total_steps: int) -> jax.Array:
  """Truth probability after ``step`` iterations: ``max(0, 1 - step / total)``."""
  return jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)


def reverse_etas(epoch: float, epochs: int) -> tuple[float, float]:
  """PredRNN-V2's ``(eta_r, eta)`` at a (possibly fractional) epoch.

  Args:
    epoch: the current epoch (0-based).
    epochs: total epochs E.

  Returns:
    Context-phase and prediction-phase truth probabilities.
  """
  start, end = epochs / 3.0, 2.0 * epochs / 3.0
  scale = start / 5.0
  if epoch < start:
    return 0.5, 0.5
  if epoch < end:
    return 1.0 - 0.5 * math.exp(-(epoch - start) / scale), 0.5 - 0.5 * (epoch - start) / (end - start)
  return 1.0, 0.0


def sample_mask(rng: jax.Array, batch: int, total_len: int, in_len: int, eta: jax.Array,
                eta_context: jax.Array | float = 1.0) -> jax.Array:
  """Draws a ``[batch, total_len - 1]`` truth mask.

  Args:
    rng: PRNG key.
    batch: batch size.
    total_len: sequence length T.
    in_len: context length.
    eta: truth probability for steps >= in_len.
    eta_context: truth probability for steps 1..in_len-1 (1 for ordinary
      scheduled sampling); step 0 is always truth.

  Returns:
    float32 mask of 0s and 1s.
  """
  t = jnp.arange(total_len - 1)
  prob = jnp.where(t < in_len, eta_context, eta)
  prob = jnp.where(t == 0, 1.0, prob)
  u = jax.random.uniform(rng, (batch, total_len - 1))
  return (u < prob[None, :]).astype(jnp.float32)
