"""Trainer pieces: vision layouts, learner/sampler log-prob agreement, batch surgery, eval SEs,
and the bandit sanity check (issue 6): GRPO raises the reward it is given."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.model import sequence
from rewardmap_jax.model.build import model_config
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.model.vision_layout import pack_vision_inputs
from rewardmap_jax.rl import rollout as ro
from rewardmap_jax.rl import sampler, steps, trainer
from rewardmap_jax.run.metrics_writer import read_metrics
from tests.rl.small_config import get_config

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup():
    c = get_config()
    mcfg = model_config(c)
    model = nnx.merge(*nnx.split(Qwen2_5_VL(mcfg, nnx.Rngs(params=3))))
    pipe = DataPipeline.from_config(c, batch_size=4)
    batch = next(pipe.iterator())
    return c, model, batch


def test_per_image_vision_equals_packed_buffer(setup):
    """The trainer's per-image tower (vmap) gives the model's packed-buffer embeddings."""
    _, model, batch = setup
    prompts = ro.prepare_prompts(batch, model.cfg)
    assert prompts["vision"].pixels.ndim == 3  # same grid everywhere: stacked layout
    ids = jnp.asarray(prompts["prompt_ids"])
    rows = np.concatenate([ro._example_rows(batch, i) for i in range(len(ids))])
    packed = pack_vision_inputs(rows, batch["image_grid_thw"], model.cfg.vision)
    want = model.embed(ids, jax.tree.map(jnp.asarray, packed))
    got = sequence.embed(model, ids, jax.tree.map(jnp.asarray, prompts["vision"]),
                         jnp.asarray(prompts["vis_offsets"]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_packed = sequence.embed(model, ids, jax.tree.map(jnp.asarray, packed),
                                jnp.asarray(prompts["vis_offsets"]))
    np.testing.assert_allclose(got_packed, want, atol=1e-6)


def test_learner_logps_match_sampler(setup):
    """Positions, image reuse over G rows and masks agree between sampler and update step."""
    c, model, batch = setup
    g = 3
    prompts = ro.prepare_prompts(batch, model.cfg)
    sp = sampler.params_from_config(c.rl, model.cfg, num_generations=g, max_new_tokens=6)
    out = ro.sample(model, prompts, sp, jax.random.key(0))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    dev = ro.seq_batch(prompts, tokens, mask)
    fn = steps.make_logprob_fn(nnx.split(model, nnx.Param)[0], g)
    got = np.asarray(fn(nnx.split(model, nnx.Param)[1], dev))
    want = np.asarray(out.logp_policy)
    assert mask.sum() > len(mask)  # more than one token per row is compared
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5)


def test_select_examples_repacks_prompts(setup):
    _, model, batch = setup
    full = ro.prepare_prompts(batch, model.cfg)
    sub = ro.prepare_prompts(ro.select_examples([batch], [(0, 2), (0, 0)]), model.cfg)
    np.testing.assert_array_equal(sub["prompt_ids"], full["prompt_ids"][[2, 0]])
    np.testing.assert_array_equal(sub["positions"], full["positions"][:, [2, 0]])
    np.testing.assert_array_equal(sub["vision"].pixels, full["vision"].pixels[[2, 0]])


def test_bandit_reward_rises(tmp_path):
    """Issue 6: with a reward that prefers completions starting with a space, 50 GRPO steps
    raise the mean reward. A flipped gradient sign (or advantage) would lower it instead."""
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 50
    c.curriculum.stages = ({"name": "bandit", "steps": 50, "weights": {"TorF1": 1.0}},)
    c.data.batch_size = 4
    c.rl.num_generations = 4
    c.rl.mini_batch_size = 4
    c.rl.max_new_tokens = 1
    c.rl.kl_coef = 0.0
    c.rl.entropy_coef = 0.0
    c.optim.lr = 3e-3
    c.reward.fn = f"{HERE / 'bandit_reward.py'}:prefer_space"
    c.checkpoint.every_steps = 0
    before = dict(steps.TRACE_COUNTS), dict(sampler.TRACE_COUNTS)
    trainer.run(c, str(tmp_path))
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path) if "reward/mean" in r]
    assert len(rewards) == 50
    first, last = np.mean(rewards[:10]), np.mean(rewards[-10:])
    assert 0.1 < first < 0.7  # a random policy: neither never nor always rewarded
    assert last > first + 0.2, (first, last)
    # One compilation of the update and of the sampler for 50 steps of fixed shapes.
    assert steps.TRACE_COUNTS["grpo_step"] - before[0].get("grpo_step", 0) == 1
    assert sampler.TRACE_COUNTS["rollout"] - before[1].get("rollout", 0) == 1


@pytest.mark.slow
def test_minibatches_epochs_and_dynamic_sampling(tmp_path):
    """ppo_epochs x mini-batches (learner-recomputed behaviour log-probs), DAPO dynamic
    sampling and overlong shaping, truncated IS and GSPO run end to end; before the first
    update the learner's log-probs equal the sampler's up to float32 rounding (separate XLA
    programs, not bit-identical on every CPU), so the TIS weights are 1."""
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 2
    c.curriculum.stages = ({"name": "s", "steps": 8, "weights": {"TorF1": 1.0}},)
    c.data.batch_size = 2
    c.rl.num_generations = 2
    c.rl.mini_batch_size = 1  # 2 updates per epoch, one prompt group each
    c.rl.ppo_epochs = 2
    c.rl.max_new_tokens = 1
    c.rl.dynamic_sampling = True
    c.rl.dynamic_sampling_max_rounds = 3
    c.rl.tis_cap = 2.0
    c.rl.policy_loss = "gspo"
    c.rl.overlong_buffer = 1  # every 1-token completion sits at the end of the ramp: -1
    c.reward.fn = f"{HERE / 'bandit_reward.py'}:prefer_space"
    trainer.run(c, str(tmp_path))
    rows = [r for r in read_metrics(tmp_path) if "reward/mean" in r]
    assert len(rows) == 2
    for r in rows:
        assert 1 <= r["dynamic_sampling/rounds"] <= 3
        # Curves come from the drawn batch, the update batch's reward is logged apart.
        assert 0.0 <= r["reward/mean"] <= 1.0 and 0.0 <= r["dynamic_sampling/update_reward"] <= 1.0
        assert r["logp_diff_max"] < 1e-4  # sampler vs learner, same params, fp32
        assert r["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert r["reward/overlong_penalty"] == -1.0
        assert np.isfinite(r["loss"]) and r["grad_norm"] >= 0
