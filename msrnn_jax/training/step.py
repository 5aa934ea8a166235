"""The training and evaluation steps, and the state they carry.

Public pieces that training, evaluation, prediction, the config checks and
the analyses (``msrnn_jax.analysis``) share: ``create_model``, the one
builder of a model from a config; Adam; the scheduled-sampling schedule; the
initial state; and the jitted train and eval steps.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from msrnn_jax import model as model_lib
from msrnn_jax.evaluation import metrics
from msrnn_jax.training import losses, sampling


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: number of optimizer steps taken.
    params: model parameters.
    opt_state: Adam state.
    rng: base PRNG key (raw uint32[2]); step s uses ``fold_in(rng, s)``.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def model_config(config: ml_collections.ConfigDict, remat: str | None = None,
                 scan_unroll: int | None = None) -> model_lib.ModelConfig:
  """The validated ``ModelConfig`` of ``config`` (pure Python: the checks run it before JAX starts).

  ``remat`` overrides ``config.model.remat``; its ``'auto'`` is settled by
  training (``memory_fit``) and means ``'none'`` here: without gradients,
  remat changes nothing. ``scan_unroll`` overrides ``config.model.scan_unroll``.
  """
  options = {k: v for k, v in config.model.items() if k != "name"}
  if remat is not None or options.get("remat") == "auto":
    options["remat"] = remat or "none"
  if scan_unroll is not None:
    options["scan_unroll"] = scan_unroll
  return model_lib.config_for(config.model.name, channels=config.data.channels,
                              in_len=config.data.in_len,
                              conv_impl=config.backend.conv_impl,
                              warp_impl=config.backend.warp_impl, **options)


def create_model(config: ml_collections.ConfigDict, remat: str | None = None,
                 scan_unroll: int | None = None) -> model_lib.Predictor:
  """The model of ``config.model`` for the frames of ``config.data``, on ``config.backend``'s kernel."""
  return model_lib.Predictor(model_config(config, remat, scan_unroll).resolved())


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the reference's constant learning rate (no clipping or decay)."""
  return optax.adam(config.train.learning_rate)


def sampling_mode(config: ml_collections.ConfigDict) -> str:
  """'linear', 'reverse' or 'none' ('auto': the model family's scheme)."""
  mode = config.train.scheduled_sampling
  if mode == "auto":
    return model_lib.family(config.model.name).scheduled_sampling
  return mode


def schedule(mode: str, step: int, total_steps: int, steps_per_epoch: int) -> tuple[float, float]:
  """``(eta, eta_context)``: truth probabilities of the prediction and context phases."""
  if mode == "linear":
    return float(sampling.linear_eta(step, total_steps)), 1.0
  if mode == "reverse":
    epochs = max(1, round(total_steps / steps_per_epoch))
    eta_r, eta = sampling.reverse_etas(step // steps_per_epoch, epochs)
    return eta, eta_r
  return 1.0, 1.0


def create_train_state(model: model_lib.Predictor, tx: optax.GradientTransformation,
                       frames_shape: tuple[int, ...], seed: int) -> TrainState:
  """Initialises parameters on a zero batch of ``frames_shape``."""
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros(frames_shape, jnp.float32))["params"]
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng)


def make_train_step(model: model_lib.Predictor, tx: optax.GradientTransformation, in_len: int,
                    decouple_weight: float) -> Callable:
  """A jitted ``(state, frames, eta, eta_context, rows=None) -> (state, TrainMetrics)``.

  ``rows`` (int32 ``[batch]``, sharded like ``frames``) gives each row's
  position in the step's global batch (``data.process_rows``); None means
  row order. The scheduled-sampling mask is drawn for the global batch in
  that order, so an example gets the same mask whichever process holds it.
  """

  def train_step(state: TrainState, frames: jax.Array, eta: jax.Array, eta_context: jax.Array,
                 rows: jax.Array | None = None):
    b, t = frames.shape[:2]
    mask = sampling.sample_mask(jax.random.fold_in(state.rng, state.step), b, t, in_len, eta,
                                eta_context)
    if rows is not None:
      mask = mask[rows]

    def loss_fn(params):
      preds, aux = model.apply({"params": params}, frames, mask)
      loss, terms = losses.training_loss(preds, frames, aux["decouple_loss"], decouple_weight)
      return loss, terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    batch_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=jnp.full((b,), loss), mse=terms["mse"], mae=terms["mae"])
    return new_state, batch_metrics

  return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model: model_lib.Predictor, radar: bool) -> Callable:
  """A jitted ``(params, frames, valid) -> (stats, baseline_stats, preds)``.

  ``baseline_stats`` maps each name of ``metrics.BASELINES`` to its stats.
  """
  stats_fn = functools.partial(metrics.frame_stats, with_radar=radar)

  def eval_step(params, frames, valid):
    preds, _ = model.apply({"params": params}, frames)
    truth = frames[:, 1:]
    baselines = {name: stats_fn(fn(frames, model.config.in_len), truth, valid)
                 for name, fn in metrics.BASELINES.items()}
    return stats_fn(preds, truth, valid), baselines, preds

  return jax.jit(eval_step)
