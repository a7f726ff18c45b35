"""Update steps: gradient accumulation gives the full-batch update, frozen vision tower."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.model import sequence
from rewardmap_jax.model.build import model_config
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.rl import grpo, optim, steps
from rewardmap_jax.rl import rollout as ro
from tests.rl.small_config import get_config

G = 2


@pytest.fixture(scope="module")
def setup():
    return make_setup()


def make_setup():
    c = get_config()
    c.optim.lr = 1e-3
    model = Qwen2_5_VL(model_config(c), nnx.Rngs(params=3))
    graphdef, params = nnx.split(model, nnx.Param)
    pipe = DataPipeline.from_config(c, batch_size=4, with_targets=True)
    batch = next(pipe.iterator())
    prompts = ro.prepare_prompts(batch, model.cfg)
    rng = np.random.default_rng(0)
    t = 6
    comp = rng.integers(0, model.cfg.text.vocab_size, (4 * G, t)).astype(np.int32)
    lengths = np.array([6, 1, 3, 5, 2, 6, 4, 1])  # unequal: token-mean needs the global denom
    mask = np.arange(t)[None] < lengths[:, None]
    rl_batch = ro.seq_batch(prompts, comp, mask,
                            advantages=rng.normal(size=4 * G).astype(np.float32))
    logp = steps.make_logprob_fn(graphdef, G)(params, rl_batch)
    rl_batch["old_logps"] = logp
    rl_batch["ref_logps"] = logp - 0.1
    sft_batch = ro.seq_batch(prompts, batch["target_ids"], batch["target_mask"].astype(bool))
    return c, graphdef, params, rl_batch, sft_batch


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b), strict=True))


def _grpo(c, graphdef, tx=None, **kw):
    tx = tx or optim.make_optimizer(c.optim, 10)
    cfg = grpo.GRPOLossConfig.from_config(c.rl)
    assert cfg.kl_coef != 0  # the KL term goes through the global denominator as well
    return tx, steps.make_grpo_step(graphdef, tx, cfg, G, **kw)


def test_grpo_grad_accum_equals_full_batch(setup):
    """Micro-batches of whole prompt groups over the global token denominator give the
    full-batch gradient: params after one SGD(lr=1) step (= params - grad) agree to 1e-6.
    The project's Adam chain is compared on its moments: its first update is ~lr * sign(g),
    which turns 1e-7 rounding differences of near-zero gradient entries into ~lr-sized ones."""
    c, graphdef, params, batch, _ = setup
    sgd = optax.sgd(1.0)
    out, adam = {}, {}
    for acc in (1, 2):
        _, step = _grpo(c, graphdef, sgd, grad_accum=acc)
        out[acc] = step(params, sgd.init(params), batch)
        tx, step = _grpo(c, graphdef, grad_accum=acc)
        adam[acc] = step(params, tx.init(params), batch)
    assert _max_diff(out[1][0], params) > 1e-2  # the update is not trivially zero
    assert _max_diff(adam[1][0], params) > 1e-4
    for acc in (2,):
        assert _max_diff(out[acc][0], out[1][0]) <= 1e-6, acc
        assert _max_diff(adam[acc][1], adam[1][1]) <= 1e-6, acc  # Adam mu, nu, counters
        for k in ("loss", "pg_loss", "kl", "tokens", "logp_diff_max", "grad_norm"):
            np.testing.assert_allclose(out[acc][2][k], out[1][2][k], rtol=1e-5, atol=1e-6)


def test_sft_grad_accum_equals_full_batch(setup):
    c, graphdef, params, _, batch = setup
    sgd = optax.sgd(1.0)
    a = steps.make_sft_step(graphdef, sgd, grad_accum=1)(params, sgd.init(params), batch)
    b = steps.make_sft_step(graphdef, sgd, grad_accum=2)(params, sgd.init(params), batch)
    assert _max_diff(a[0], params) > 1e-2
    assert _max_diff(a[0], b[0]) <= 1e-6
    np.testing.assert_allclose(a[2]["loss"], b[2]["loss"], rtol=1e-6)
    np.testing.assert_allclose(a[2]["grad_norm"], b[2]["grad_norm"], rtol=1e-5)


def test_grad_accum_not_dividing_prompts_is_an_error(setup):
    c, graphdef, params, batch, _ = setup
    tx, step = _grpo(c, graphdef, grad_accum=3)
    with pytest.raises(ValueError, match="not divisible by grad_accum 3"):
        step(params, tx.init(params), batch)


def _split_vision(params):
    flat = nnx.to_flat_state(params)
    vis = {k: v[...] for k, v in flat if k[0] == "visual"}
    text = {k: v[...] for k, v in flat if k[0] != "visual"}
    return vis, text


def test_freeze_vision_stops_gradient_and_updates(setup):
    c, graphdef, params, batch, _ = setup
    c = c.copy_and_resolve_references()
    c.optim.freeze_vision = True
    tx = optim.make_optimizer(c.optim, 10)
    cfg = grpo.GRPOLossConfig.from_config(c.rl)
    step = steps.make_grpo_step(graphdef, tx, cfg, G, freeze_vision=True)
    new, _, m = step(params, tx.init(params), batch)
    vis0, text0 = _split_vision(params)
    vis1, text1 = _split_vision(new)
    assert vis0 and text0
    for k in vis0:
        np.testing.assert_array_equal(vis1[k], vis0[k])
    assert max(float(jnp.max(jnp.abs(text1[k] - text0[k]))) for k in text0) > 1e-4
    # The gradient itself stops at the vision features (not only the optimizer's zero update).

    def loss(p):
        model = nnx.merge(graphdef, p)
        logps, _ = sequence.sequence_logprobs(model, batch, G, with_entropy=False,
                                              freeze_vision=True)
        return (logps * batch["completion_mask"]).sum()

    grads = jax.grad(loss)(params)
    gvis, gtext = _split_vision(grads)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in gvis.values())
    assert max(float(jnp.max(jnp.abs(g))) for g in gtext.values()) > 0
    unfrozen = jax.grad(lambda p: (sequence.sequence_logprobs(
        nnx.merge(graphdef, p), batch, G, with_entropy=False)[0]
        * batch["completion_mask"]).sum())(params)
    assert max(float(jnp.max(jnp.abs(g))) for g in _split_vision(unfrozen)[0].values()) > 0


def test_donated_steps_update_in_place_and_match(setup):
    """`donate=True` (what the trainer uses) gives bit-identical results, and the caller's
    params and optimizer state are consumed (XLA reused their buffers)."""
    c, graphdef, params, rl_batch, sft_batch = setup
    tx = optim.make_optimizer(c.optim, 10)
    for make, batch in ((lambda **kw: _grpo(c, graphdef, tx, **kw)[1], rl_batch),
                        (lambda **kw: steps.make_sft_step(graphdef, tx, **kw), sft_batch)):
        want = make()(params, tx.init(params), batch)
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        got = make(donate=True)(p, s, batch)
        assert _max_diff(got[0], want[0]) == 0.0 and _max_diff(got[1], want[1]) == 0.0
        assert all(x.is_deleted() for x in jax.tree.leaves(p))
        assert all(x.is_deleted() for x in jax.tree.leaves(s))


def test_truncated_importance_sampling_switch(setup):
    """rl.tis_cap in the update step: sampler log-probs ln 3 below the learner's old ones give
    w = min(e^(ln 3), 2) = 2 on every token, so the policy term doubles while KL and entropy
    do not move; sampler = old gives w = 1, the same update as tis_cap = 0. Without
    `sampler_logps` in the batch the step refuses to trace."""
    c, graphdef, params, batch, _ = setup
    sgd = optax.sgd(1.0)
    cfg = grpo.GRPOLossConfig.from_config(c.rl)
    assert cfg.tis_cap == 0

    def run(tis_cap, shift):
        b = dict(batch, sampler_logps=batch["old_logps"] - shift)
        step = steps.make_grpo_step(graphdef, sgd, dataclasses.replace(cfg, tis_cap=tis_cap), G)
        return step(params, sgd.init(params), b)

    off, same, doubled = run(0.0, 0.0), run(2.0, 0.0), run(2.0, np.log(3.0))
    assert float(same[2]["tis_weight_mean"]) == pytest.approx(1.0)
    assert float(doubled[2]["tis_weight_mean"]) == pytest.approx(2.0, rel=1e-6)
    assert _max_diff(same[0], off[0]) <= 1e-7
    np.testing.assert_allclose(doubled[2]["pg_loss"], 2 * off[2]["pg_loss"], rtol=1e-5)
    for k in ("kl", "entropy"):
        np.testing.assert_allclose(doubled[2][k], off[2][k], rtol=1e-6)
    # the logged mismatch is sampler vs learner: ln 3 on every token
    assert float(doubled[2]["logp_diff_mean"]) == pytest.approx(np.log(3.0), rel=1e-4)
    step = steps.make_grpo_step(graphdef, sgd, dataclasses.replace(cfg, tis_cap=2.0), G)
    with pytest.raises(ValueError, match="needs the sampler's log-probs"):
        step(params, sgd.init(params), batch)
