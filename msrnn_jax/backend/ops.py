"""Model operations with hand-written gradients: precision and memory below the maths.

Each is the plain expression its docstring names, with a ``custom_vjp`` that
keeps fewer or narrower residuals than autodiff, or that stops XLA:CPU from
moving low-precision values through float32 (``packing``). Each is tested
against autodiff of its plain expression (tests/test_backend_ops.py).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp

from msrnn_jax.backend.packing import concatenate, pack, packs, unpack


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """``y + bias`` in ``y``'s dtype, the bias gradient summed in float32.

  Autodiff would sum a bfloat16 model's bias gradient in bfloat16 (over
  every pixel of the batch), and XLA:CPU rewrites that sum into a
  single-threaded windowed reduction (a fifth of a bfloat16 PredRNN step).

  Args:
    y: ``[..., features]``.
    bias: ``[features]``, float32.
  """
  return y + bias.astype(y.dtype)


add_bias.defvjp(lambda y, bias: (add_bias(y, bias), jnp.zeros((0,), bias.dtype)),
                lambda marker, dy: (dy, jnp.sum(dy.astype(jnp.float32), axis=tuple(
                    range(dy.ndim - 1))).astype(marker.dtype)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split(y: jax.Array, sections: int) -> tuple[jax.Array, ...]:
  """``jnp.split(y, sections, axis=-1)``.

  The gradient reassembles the chunks' gradients in their precision
  (:func:`concatenate`); XLA:CPU would run autodiff's concatenation of
  bfloat16 chunks in float32.
  """
  return tuple(jnp.split(y, sections, axis=-1))


# A custom_vjp's cotangents come in its outputs' dtype.
split.defvjp(lambda y, sections: (split(y, sections), None),
             lambda _, __, cts: (concatenate(cts, cts[0].dtype),))


def stored_carry_scan(step: Callable, params: Any, carry: Any, xs: Any, dtype: Any,
                      unroll: int = 1) -> tuple[Any, Any]:
  """``jax.lax.scan(lambda c, x: step(params, c, x), carry, xs)``, carries checkpointed in ``dtype``.

  ``jax.checkpoint`` of each step would keep every input carry as it is
  (float32 in a low-precision model: the bulk of its training memory). The
  forward pass here carries full values and stores each step's input carry
  rounded to ``dtype`` (:func:`pack`ed); the backward pass recomputes the
  steps in reverse from those copies (step 0 from the initial carry, so T
  steps store T-1). The error stays one rounding and never compounds; the
  carry's cotangent flows in full precision.

  ``step(params, carry, x) -> (carry, y)``; ``xs`` and the returned ``ys``
  have time on axis 0.
  """
  steps = jax.tree.leaves(xs)[0].shape[0]

  def rounded(c):
    return pack(jax.tree.map(lambda v: v.astype(dtype), c), dtype)

  @jax.custom_vjp
  def loop(p, c, x_seq):
    return jax.lax.scan(lambda c, x: step(p, c, x), c, x_seq, unroll=unroll)

  def fwd(p, c, x_seq):
    def body(state, x):
      c, stack, t = state
      # Step t's input goes to slot t - 1; step 0's write is overwritten.
      stack = jax.tree.map(
          lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, jnp.maximum(t - 1, 0), 0),
          stack, rounded(c))
      c, y = step(p, c, x)
      return (c, stack, t + 1), y

    stack = jax.tree.map(lambda v: jnp.zeros((max(steps - 1, 1),) + v.shape, v.dtype),
                         jax.eval_shape(rounded, c))
    (c_last, stack, _), ys = jax.lax.scan(body, (c, stack, 0), x_seq, unroll=unroll)
    return (c_last, ys), (p, c, stack, x_seq)

  def bwd(res, cotangents):
    p, c0, stack, x_seq = res
    d_carry, d_ys = cotangents

    def body(state, inp):
      d_c, d_p = state
      t, x, d_y = inp
      stored = jax.tree.map(
          lambda s: jax.lax.dynamic_index_in_dim(s, jnp.maximum(t - 1, 0), 0, keepdims=False),
          stack)
      c = jax.tree.map(lambda first, v: jnp.where(t == 0, first, v.astype(first.dtype)),
                       c0, unpack(stored, dtype))
      _, vjp = jax.vjp(step, p, c, x)
      dp, d_c, dx = vjp((d_c, d_y))
      return (d_c, jax.tree.map(jnp.add, d_p, dp)), dx

    init = (d_carry, jax.tree.map(jnp.zeros_like, p))
    (d_c0, d_p), d_x = jax.lax.scan(body, init, (jnp.arange(steps), x_seq, d_ys), reverse=True,
                                    unroll=unroll)
    return d_p, d_c0, d_x

  loop.defvjp(fwd, bwd)
  return loop(params, carry, xs)


def _residual_layout(fn: Callable, invariant: Any,
                     *varying: Any) -> tuple[list[bool], list[int], Any]:
  """How to store the output leaves of ``fn(invariant, *varying)``, read from its program.

  * Which depend on ``varying`` (an equation's outputs do when any of its
    inputs does; nested programs count as a whole).
  * Which repeat another: the same value, or the same conversion or
    :func:`pack` of the same value (several convolutions of a step each
    round, and pack, an input they share: one copy is kept).

  Returns:
    ``(per leaf: whether it depends on varying, per leaf: the index of the
    first leaf it equals, the outputs' shape tree)``.
  """
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(invariant, *varying)
  jaxpr = closed.jaxpr
  depends = set(jaxpr.invars[len(jax.tree.leaves(invariant)):])
  repeat_keys = {}
  for eqn in jaxpr.eqns:
    if any(isinstance(v, jex_core.Var) and v in depends for v in eqn.invars):
      depends.update(eqn.outvars)
    if len(eqn.invars) == 1 and len(eqn.outvars) == 1 and isinstance(eqn.invars[0], jex_core.Var):
      if eqn.primitive.name == "convert_element_type":
        repeat_keys[eqn.outvars[0]] = (eqn.invars[0], eqn.outvars[0].aval.dtype)
      elif eqn.primitive.name == "custom_vjp_call":  # e.g. pack: the same function, same input
        bwd = getattr(eqn.params["bwd"], "f", eqn.params["bwd"])
        repeat_keys[eqn.outvars[0]] = (eqn.invars[0], id(bwd), str(eqn.params["call_jaxpr"]))
  first, same_as = {}, []
  for i, v in enumerate(jaxpr.outvars):
    key = repeat_keys.get(v, v) if isinstance(v, jex_core.Var) else i
    same_as.append(first.setdefault(key, i))
  per_step = [isinstance(v, jex_core.Var) and v in depends for v in jaxpr.outvars]
  return per_step, same_as, shapes


def packed_residual_scan(step: Callable, params: Any, carry: Any, xs: Any, dtype: Any,
                         unroll: int = 1) -> tuple[Any, Any]:
  """``jax.lax.scan(lambda c, x: step(params, c, x), carry, xs)``, residuals kept packed.

  Autodiff of a scan stacks each step's residuals (the values its backward
  pass reads) one slice per step. XLA:CPU has no bfloat16
  dynamic-update-slice: it writes a bfloat16 stack through float32 and,
  because of the conversions around the write, rewrites the whole stack at
  every step instead of one slice (time quadratic in the sequence length).
  Here the forward pass takes each step's ``jax.vjp`` and stacks its
  residuals itself, the ``dtype`` ones :func:`pack`ed (written in place),
  each distinct value once; the backward pass runs the same VJPs in
  reverse. Residuals that depend on the parameters alone (a fused
  convolution's kernel) are computed once, outside the loop, as autodiff's
  scan does. Same values, same gradients (to float32 rounding: the loop
  sums the parameter gradients in its own order).
  A step without a residual to pack or to share (all kept once, by
  ``custom_vjp``s that pack their own) takes autodiff's scan, which is then
  as lean, and at small shapes faster.

  ``step(params, carry, x) -> (carry, y)``; ``xs`` and the returned ``ys``
  have time on axis 0.
  """
  def residuals(p, c, x):
    return jax.vjp(step, p, c, x)[1]

  def plain(p, c, x_seq):
    return jax.lax.scan(lambda c, x: step(p, c, x), c, x_seq, unroll=unroll)

  x0 = jax.tree.map(lambda v: v[0], xs)
  # Per residual leaf: stacked per step (once per distinct value), or
  # computed once from the parameters.
  per_step, same_as, shapes = _residual_layout(residuals, params, carry, x0)
  treedef = jax.tree.structure(shapes)
  stored = [i for i, s in enumerate(per_step) if s and same_as[i] == i]
  to_pack = any(s and v.size and v.dtype == jnp.bfloat16
                for v, s in zip(jax.tree.leaves(shapes), per_step, strict=True))
  if not (packs(dtype) and (to_pack or len(stored) < sum(per_step))):
    return plain(params, carry, xs)  # nothing to pack or share: autodiff's scan is as good

  def split(leaves):
    return ([leaves[i] for i in stored],
            [v for v, s in zip(leaves, per_step, strict=True) if not s])

  def merge(stepwise, fixed):
    by_index, fixed = dict(zip(stored, stepwise, strict=True)), iter(fixed)
    return jax.tree.unflatten(treedef, [by_index[same_as[i]] if s else next(fixed)
                                        for i, s in enumerate(per_step)])

  loop = jax.custom_vjp(plain)

  def fwd(p, c, x_seq):
    # Only the parameter-only values of this extra trace are used (XLA drops the rest).
    fixed = split(jax.tree.leaves(residuals(p, c, jax.tree.map(lambda v: v[0], x_seq))))[1]

    def body(c, x):
      (c, y), vjp = jax.vjp(step, p, c, x)
      return c, (y, pack(split(jax.tree.leaves(vjp))[0], dtype))

    c_last, (ys, stacked) = jax.lax.scan(body, c, x_seq, unroll=unroll)
    return (c_last, ys), (p, fixed, stacked)

  def bwd(saved, cotangents):
    p, fixed, stacked = saved
    d_carry, d_ys = cotangents

    def body(state, inp):
      d_c, d_p = state
      stepwise, d_y = inp
      dp, d_c, dx = merge(unpack(stepwise, dtype), fixed)((d_c, d_y))
      return (d_c, jax.tree.map(jnp.add, d_p, dp)), dx

    init = (d_carry, jax.tree.map(jnp.zeros_like, p))
    (d_c0, d_p), d_x = jax.lax.scan(body, init, (stacked, d_ys), reverse=True, unroll=unroll)
    return d_p, d_c0, d_x

  loop.defvjp(fwd, bwd)
  return loop(params, carry, xs)
