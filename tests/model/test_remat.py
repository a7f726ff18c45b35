"""Remat under outer transforms: the real presets use remat "full", and the model then runs
inside `jax.vmap` (the vision tower, one window buffer per image, `model.sequence.embed`) and inside
the sampler's decode loop (`lax.while_loop`); both must match remat "none" exactly."""

from __future__ import annotations

from functools import partial

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


def _mlp_layer(static, params, x):
    """A stand-in layer with a static argument, as `remat_layer` receives an nnx graphdef."""
    del static
    return x + jnp.tanh(x @ params["w1"]) @ params["w2"], x.sum()


def _stack_loss(layer, params, x):
    aux = 0.0
    for p in params:
        x, a = layer("graphdef", p, x)
        aux = aux + a
    return jnp.sum(x**2) + aux


def test_remat_layer_matches_checkpoint_and_fences_each_layers_backward():
    """Same value and gradients as `jax.checkpoint` for both policies; the backward pass has one
    optimization barrier per layer that carries the layer's parameter cotangents together with
    its input's (so no layer's weight gradients can be deferred past the next layer's backward:
    the TPU memory failure `remat_layer` exists to prevent, docs/memory.md §5.2)."""
    from rewardmap_jax.model.layers import remat_layer, remat_policy

    k = jax.random.split(jax.random.key(0), 7)
    params = [{"w1": jax.random.normal(k[2 * i], (8, 16)) / 4,
               "w2": jax.random.normal(k[2 * i + 1], (16, 8)) / 4} for i in range(3)]
    x = jax.random.normal(k[6], (5, 8))
    for name in ("full", "dots"):
        plain = jax.checkpoint(_mlp_layer, policy=remat_policy(name), static_argnums=(0,))
        fenced = remat_layer(_mlp_layer, name)
        want = jax.jit(jax.value_and_grad(partial(_stack_loss, plain), argnums=(0, 1)))(params, x)
        got = jax.jit(jax.value_and_grad(partial(_stack_loss, fenced), argnums=(0, 1)))(params, x)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        jaxpr = jax.make_jaxpr(jax.grad(partial(_stack_loss, fenced)))(params, x)
        fences = [e for e in _walk(jaxpr.jaxpr) if e.primitive.name == "optimization_barrier"
                  and {(8, 16), (16, 8), (5, 8)} <= {v.aval.shape for v in e.outvars}]
        assert len(fences) == 3, name
        # Forward-only use (the sampler) is the checkpointed function itself: no fence.
        fwd = jax.make_jaxpr(partial(_stack_loss, fenced))(params, x)
        assert not [e for e in _walk(fwd.jaxpr) if e.primitive.name == "optimization_barrier"]


def _walk(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for j in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _walk(inner)
