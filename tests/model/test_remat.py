"""Remat under outer transforms: the real presets use remat "full", and the model then runs
inside `jax.vmap` (the vision tower, one window buffer per image, `model.sequence.embed`) and inside
the sampler's decode loop (`lax.while_loop`); both must match remat "none" exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import shapes
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import init_model
from rewardmap_jax.rl import rollout, sampler


def test_vmapped_tower_with_remat_matches_no_remat():
    vision = jax.tree.map(jnp.asarray, shapes.seq_batch(get_preset("tiny"), 2, 1, 64, 4, 6)[
        "vision"])
    results = {}
    for remat in ("none", "full"):
        graphdef, state = nnx.split(init_model(get_preset("tiny", remat=remat)))

        def loss(state, v, graphdef=graphdef):
            return jnp.sum(jax.vmap(nnx.merge(graphdef, state).visual)(v) ** 2)

        results[remat] = jax.jit(jax.value_and_grad(loss))(state, vision)
    np.testing.assert_allclose(results["full"][0], results["none"][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results["full"][1]), jax.tree.leaves(results["none"][1]),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sampler_with_remat_matches_no_remat():
    b = shapes.seq_batch(get_preset("tiny"), 2, 2, 64, 4, 6)
    pb = sampler.PromptBatch(b["prompt_ids"], b["prompt_mask"], b["positions"], None,
                             (b["vision"], b["vis_offsets"]))
    out = {}
    for remat in ("none", "full"):
        cfg = get_preset("tiny", remat=remat)
        sp = sampler.SamplingParams(max_new_tokens=6, num_generations=2, stop_ids=(),
                                    pad_id=cfg.pad_token_id)
        out[remat] = sampler.generate(init_model(cfg), rollout.ADAPTER, pb, sp,
                                      jax.random.key(0))
    np.testing.assert_array_equal(out["full"].tokens, out["none"].tokens)
    np.testing.assert_allclose(out["full"].logp_policy, out["none"].logp_policy, atol=1e-5)
