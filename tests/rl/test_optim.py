"""Optimizer from config: schedules, AdamW arithmetic, clipping, NaN skipping, frozen tower."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.curriculum import get_config
from rewardmap_jax.rl import optim


def _ocfg(**kw):
    o = get_config().optim
    for k, v in kw.items():
        o[k] = v
    return o


def test_schedules_hand_values():
    const = optim.make_schedule(_ocfg(lr=0.3), total_steps=10)
    assert float(const(0)) == pytest.approx(0.3) and float(const(9)) == pytest.approx(0.3)
    warm = optim.make_schedule(_ocfg(lr=1.0, warmup_steps=4), 10)
    assert [float(warm(s)) for s in (0, 2, 4, 9)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    cos = optim.make_schedule(
        _ocfg(lr=1.0, schedule="warmup_cosine", warmup_steps=2, min_lr_ratio=0.1), 6)
    # warmup 0 -> 1 over 2 steps; cosine over the 4 remaining: 0.1 + 0.9 * (1 + cos(pi k/4)) / 2
    expected = [0.0, 0.5, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55, 0.1]
    assert [float(cos(s)) for s in (0, 1, 2, 3, 4, 6)] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        optim.make_schedule(_ocfg(schedule="linear"), 10)
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_schedule(_ocfg(schedule="warmup_cosine", warmup_steps=5), 5)


def test_adamw_step_and_clipping_hand_values():
    tx = optim.make_optimizer(_ocfg(lr=0.1, weight_decay=0.01, grad_clip=1.0))
    params = {"w": jnp.array([1.0, 1.0])}
    state = tx.init(params)
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to (0.6, 0.8)
    upd, state = tx.update(grads, state, params)
    # nu = (1 - b2) g^2 with the clipped g
    nu = state.inner[1][0].nu["w"]
    np.testing.assert_allclose(nu, 0.001 * np.array([0.36, 0.64]), rtol=1e-5)
    # first Adam step: m_hat / sqrt(v_hat) = sign(g) = 1; update = -lr (1 + wd * param)
    np.testing.assert_allclose(upd["w"], [-0.1 * 1.01] * 2, rtol=1e-5)


def test_nonfinite_gradient_skips_update_and_counts():
    tx = optim.make_optimizer(_ocfg(lr=0.1))
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    state = tx.init(params)
    good = {"a": jnp.array([0.5, -0.5]), "b": jnp.array(1.0)}
    bad = {"a": jnp.array([0.5, jnp.nan]), "b": jnp.array(1.0)}

    step = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(
        *tx.update(g, s, p)))
    p1, s1 = step(params, state, bad)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), p1, params))
    assert int(optim.skipped_steps(s1)) == 1
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), s1.inner, state.inner))
    # an inf loss with finite grads is skipped too
    p2, s2 = step(p1, s1, optim.poison_if_nonfinite(good, jnp.array(jnp.inf)))
    assert int(optim.skipped_steps(s2)) == 2 and int(s2.consecutive) == 2
    # the next finite step equals the first step of a run that never saw NaN
    p3, s3 = step(p2, s2, good)
    ref, _ = step(params, state, good)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.allclose(x, y)), p3, ref))
    assert int(optim.skipped_steps(s3)) == 2 and int(s3.consecutive) == 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p3))


class _VLM(nnx.Module):
    def __init__(self):
        r = nnx.Rngs(0)
        self.visual = nnx.Linear(3, 3, rngs=r)
        self.lm = nnx.Linear(3, 2, rngs=r)


def test_frozen_vision_tower_on_nnx_state():
    model = _VLM()
    _, params = nnx.split(model, nnx.Param)
    tx = optim.make_optimizer(_ocfg(lr=0.1, freeze_vision=True))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, upd)
    np.testing.assert_array_equal(new["visual"]["kernel"][...], params["visual"]["kernel"][...])
    assert not np.allclose(new["lm"]["kernel"][...], params["lm"]["kernel"][...])
    labels = optim.param_labels(params, get_config().optim.frozen_regex)
    flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert flat == {"visual/bias": "frozen", "visual/kernel": "frozen",
                    "lm/bias": "train", "lm/kernel": "train"}
    # no Adam moments are kept for frozen params
    n_moment = sum(x.size for x in jax.tree.leaves(state.inner))
    n_lm = sum(x.size for x in jax.tree.leaves(params["lm"]))
    assert n_moment <= 2 * n_lm + 8


def test_accumulate_gradients_sums_micro_batches():
    w = jnp.array([0.5, -1.0])
    batch = {"x": jnp.arange(12.0).reshape(6, 2), "y": jnp.arange(6.0)}

    def loss_fn(w, b):  # sum of squared errors over rows: additive over row slices
        err = b["x"] @ w - b["y"]
        return jnp.sum(err**2) / 6.0, {"rows": jnp.array(b["y"].shape[0])}

    (l1, aux1), g1 = optim.accumulate_gradients(loss_fn, w, batch, 1)
    (l3, aux3), g3 = jax.jit(lambda w: optim.accumulate_gradients(loss_fn, w, batch, 3))(w)
    assert float(l3) == pytest.approx(float(l1), rel=1e-6)
    np.testing.assert_allclose(g3, g1, rtol=1e-6)
    assert aux3["rows"].tolist() == [2, 2, 2] and aux1["rows"].tolist() == [6]
    with pytest.raises(ValueError, match="not divisible"):
        optim.accumulate_gradients(loss_fn, w, batch, 4)


def test_accumulation_of_bf16_params_is_fp32():
    w = jnp.array([0.5, -1.0], jnp.bfloat16)
    batch = {"x": jnp.ones((4, 2), jnp.bfloat16)}

    def loss_fn(w, b):
        return jnp.sum((b["x"] @ w).astype(jnp.float32) ** 2), ()

    _, g = optim.accumulate_gradients(loss_fn, w, batch, 2)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, [-4.0, -4.0])  # d/dw sum_rows (w0 + w1)^2 = 2 * 4 * (-0.5)


def test_bf16_params_lose_small_adamw_updates():
    """Why trainer.check_config refuses training bf16 params: one AdamW step at the official
    lr 1e-6 changes every fp32 weight but only the few bf16 weights near zero (~2%)."""
    w = jax.random.normal(jax.random.key(0), (100_000,)) * 0.02
    g = jax.random.normal(jax.random.key(1), w.shape)
    changed = {}
    for dt in (jnp.float32, jnp.bfloat16):
        p = w.astype(dt)
        tx = optax.adamw(1e-6, weight_decay=0.01)
        u, _ = tx.update(g.astype(dt), tx.init(p), p)
        changed[dt] = float(jnp.mean(optax.apply_updates(p, u) != p))
    assert changed[jnp.float32] == 1.0
    assert changed[jnp.bfloat16] < 0.05
