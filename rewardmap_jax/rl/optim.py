"""Optimizer from config: AdamW + schedule + global-norm clipping + frozen towers + NaN guard.

`make_optimizer(cfg.optim, total_steps)` returns one `optax.GradientTransformation` usable on any
parameter pytree (an `nnx.State` of params, a dict). Order of the chain:

    skip_nonfinite( multi_transform({train: clip_by_global_norm -> adamw(schedule), frozen: 0}) )

* A step whose gradients (or loss, via `poison_if_nonfinite`) are not finite leaves params and
  optimizer state untouched and increments a counter (`skipped_steps(opt_state)`).
* Frozen parameters (the vision tower when `freeze_vision`) get zero updates and no Adam moments.
* Gradient accumulation: `accumulate_gradients` runs the micro-batches in a `lax.scan` inside the
  caller's jit and sums gradients; with losses normalised by the *global* denominator
  (`grpo.aggregate_parts`) the sum equals the full-batch gradient exactly, which averaging
  per-micro-batch means (optax.MultiSteps) does not for token-mean losses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardmap_jax.model.sharding import path_str

Array = jax.Array
PyTree = Any

SCHEDULES = ("constant", "warmup_cosine")


def make_schedule(ocfg: Any, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule from `cfg.optim` (`lr`, `schedule`, `warmup_steps`, `min_lr_ratio`).

    constant: `lr` after a linear warmup of `warmup_steps` (0 = none; official RewardMap).
    warmup_cosine: linear 0 -> lr over `warmup_steps`, cosine to `lr * min_lr_ratio` at
    `total_steps`.
    """
    lr, warm = float(ocfg.lr), int(ocfg.warmup_steps)
    if ocfg.schedule == "constant":
        if warm <= 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm]
        )
    if ocfg.schedule == "warmup_cosine":
        if total_steps <= warm:
            raise ValueError(
                f"warmup_cosine needs total_steps ({total_steps}) > warmup_steps ({warm})"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warm,
            decay_steps=total_steps,
            end_value=lr * float(ocfg.min_lr_ratio),
        )
    raise ValueError(f"unknown optim.schedule {ocfg.schedule!r}; choose one of {SCHEDULES}")


def param_labels(params: PyTree, frozen_regex: str) -> PyTree:
    """'frozen' for params whose path matches `frozen_regex` (re.search), else 'train'.

    `nnx.Variable`s are labelled as a whole (a prefix of the params tree), so paths read
    'visual/kernel', not 'visual/kernel/value'.
    """
    pat = re.compile(frozen_regex) if frozen_regex else None

    def label(path: tuple, _: Any) -> str:
        return "frozen" if pat is not None and pat.search(path_str(path)) else "train"

    return jax.tree_util.tree_map_with_path(
        label, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


class SkipNonFiniteState(NamedTuple):
    inner: Any
    skipped: Array  # int32, total steps skipped for non-finite gradients or loss
    consecutive: Array  # int32, current run of skipped steps


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wraps `inner`: when any gradient is NaN/inf, zero updates and keep `inner`'s state.

    Unlike `optax.apply_if_finite` it never gives up and applies a poisoned update.
    """

    def init(params: PyTree) -> SkipNonFiniteState:
        # Two buffers, not one shared zero: the update step donates the state.
        return SkipNonFiniteState(inner.init(params), jnp.zeros((), jnp.int32),
                                  jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        finite = jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True])
        )
        safe = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_inner = inner.update(safe, state.inner, params, **extra)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), new_inner, state.inner
        )
        bad = (~finite).astype(jnp.int32)
        return updates, SkipNonFiniteState(
            new_inner, state.skipped + bad, (state.consecutive + bad) * bad
        )

    return optax.GradientTransformationExtraArgs(init, update)


def poison_if_nonfinite(grads: PyTree, loss: Array) -> PyTree:
    """NaN gradients when `loss` is not finite, so `skip_nonfinite` skips that step too."""
    ok = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan).astype(g.dtype), grads)


def skipped_steps(opt_state: SkipNonFiniteState) -> Array:
    """Total optimizer steps skipped for non-finite values (int32 scalar)."""
    return opt_state.skipped


def make_optimizer(ocfg: Any, total_steps: int = 0) -> optax.GradientTransformation:
    """AdamW chain from `cfg.optim`.

    Keys: lr, schedule, warmup_steps, min_lr_ratio, weight_decay, b1, b2, eps, grad_clip
    (0 = off), freeze_vision, frozen_regex (param paths frozen when freeze_vision).
    """
    sched = make_schedule(ocfg, total_steps)
    parts = []
    if float(ocfg.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(ocfg.grad_clip)))
    parts.append(
        optax.adamw(
            sched,
            b1=float(ocfg.b1),
            b2=float(ocfg.b2),
            eps=float(ocfg.get("eps", 1e-8)),
            weight_decay=float(ocfg.weight_decay),
        )
    )
    train = optax.chain(*parts)
    if ocfg.freeze_vision:
        regex = ocfg.get("frozen_regex", "")
        if not regex:
            raise ValueError("optim.freeze_vision needs optim.frozen_regex (param path regex)")
        train = optax.multi_transform(
            {"train": train, "frozen": optax.set_to_zero()},
            lambda p: param_labels(p, regex),
        )
    return skip_nonfinite(train)


def accumulate_gradients(
    loss_fn: Callable[[PyTree, PyTree], tuple[Array, Any]],
    params: PyTree,
    batch: PyTree,
    num_micro: int,
) -> tuple[tuple[Array, Any], PyTree]:
    """Sum of `value_and_grad(loss_fn)` over `num_micro` strided row-slices of `batch`.

    Args:
      loss_fn: `(params, micro_batch) -> (loss, aux)`; each micro-batch loss must already be
        normalised by the global denominator so that the sum is the full-batch loss.
      params: differentiable pytree.
      batch: pytree of arrays with a leading row dim divisible by `num_micro`.
      num_micro: static number of micro-batches (1 = plain value_and_grad).
    Returns:
      ((summed loss, aux stacked with a leading `num_micro` axis), summed grads; with
      num_micro > 1 the grads are at least fp32 (optax.apply_updates casts back to the
      param dtype)).
    """
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
        (loss, aux), grads = vg(params, batch)
        return (loss, jax.tree.map(lambda a: a[None], aux)), grads
    for x in jax.tree.leaves(batch):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch rows {x.shape[0]} not divisible by grad_accum {num_micro}")
    # Micro-batch k = rows k, k + num_micro, k + 2 num_micro, ...: with the rows sharded over
    # the data-parallel axes (contiguous blocks), every shard holds its share of every
    # micro-batch, so no device idles and nothing moves between devices.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(-1, num_micro, *x.shape[1:]), 0, 1), batch)
    # accumulate in >= fp32 so bf16 params do not lose the small micro-batch contributions
    zeros = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params
    )

    def body(carry, mb):
        loss_acc, g_acc = carry
        (loss, aux), g = vg(params, mb)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
        return (loss_acc + loss, g_acc), aux

    (loss, grads), aux = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
    return (loss, aux), grads
