"""Chunked log-probs / entropies vs hand values and a full-logits reference; memory shape check."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax.rl.logprobs import completion_logprobs, token_logprobs
from tests.rl.toy_model import ToyLM


def test_hand_values_with_temperature():
    # hidden one-hot over 3 dims, identity head: logits = (0, ln 2, ln 3) -> p = (1, 2, 3) / 6
    logits = jnp.log(jnp.array([1.0, 2.0, 3.0]))
    hidden = logits[None, None, :]
    lp, ent = token_logprobs(hidden, jnp.array([[2]]), lambda h: h)
    assert float(lp[0, 0]) == pytest.approx(math.log(0.5), rel=1e-6)
    h = -(1 / 6 * math.log(1 / 6) + 2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6))
    assert float(ent[0, 0]) == pytest.approx(h, rel=1e-6)
    # T = 2: p proportional to (1, sqrt 2, sqrt 3)
    lp2, _ = token_logprobs(hidden, jnp.array([[0]]), lambda h: h, temperature=2.0)
    z = 1 + math.sqrt(2) + math.sqrt(3)
    assert float(lp2[0, 0]) == pytest.approx(math.log(1 / z), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_matches_full_logits_reference(chunk):
    rng = np.random.default_rng(0)
    b, length, d, v = 2, 10, 5, 13
    hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    tgt = jnp.asarray(rng.integers(0, v, (b, length)))
    lp, ent = token_logprobs(hidden, tgt, lambda h: h @ w, chunk_size=chunk, temperature=0.7)
    logits = np.asarray(hidden @ w, np.float64) / 0.7
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref_lp = np.take_along_axis(logp_all, np.asarray(tgt)[..., None], -1)[..., 0]
    ref_ent = -(np.exp(logp_all) * logp_all).sum(-1)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)


def _all_shapes(jaxpr) -> list[tuple[int, ...]]:
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(getattr(o.aval, "shape", ())) for o in eqn.outvars]
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    shapes += _all_shapes(getattr(inner, "jaxpr", inner))
    return shapes


def test_backward_never_holds_full_logits():
    b, length, d, v, chunk = 2, 64, 8, 512, 8
    hidden = jnp.ones((b, length, d))
    tgt = jnp.zeros((b, length), jnp.int32)

    def loss(w, h):
        lp, ent = token_logprobs(h, tgt, lambda x: x @ w, chunk_size=chunk)
        return lp.sum() + ent.sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(jnp.ones((d, v)), hidden)
    biggest = max(math.prod(s) for s in _all_shapes(jaxpr.jaxpr))
    assert biggest <= b * chunk * v, biggest  # one (B, chunk, V) block, never B * L * V


def test_completion_slice_and_nnx_head_gradients():
    model = ToyLM(vocab=32, d=16, layers=1)
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 32, (3, 9)))
    p = 4

    def chunked(params):
        m = nnx.merge(graphdef, params)
        lp, _ = completion_logprobs(m(ids), ids[:, p:], p, m.lm_head, chunk_size=2)
        return lp.sum(), lp

    def naive(params):
        m = nnx.merge(graphdef, params)
        logits = m.lm_head(m(ids))[:, p - 1:-1]
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, p:, None], -1)[..., 0]
        return lp.sum(), lp

    (v1, lp1), g1 = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
    (v2, lp2), g2 = jax.value_and_grad(naive, has_aux=True)(params)
    assert lp1.shape == (3, 5)
    np.testing.assert_allclose(lp1, lp2, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prompt_len"):
        completion_logprobs(jnp.zeros((3, 8, 16)), ids[:, p:], p, lambda h: h)


def test_one_implementation_shared_with_the_model():
    """rl.logprobs.token_logprobs and Qwen2_5_VL.token_logprobs are the same code path
    (model/head.py); the model method equals it with the model's head at temperature 1."""
    from rewardmap_jax.model import head
    from rewardmap_jax.model.config import tiny
    from rewardmap_jax.model.qwen2_5_vl import init_model

    assert token_logprobs is head.token_logprobs
    model = init_model(tiny(), seed=1)
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(2, 7, tiny().text.hidden_size)), jnp.float32)
    tgt = jnp.asarray(rng.integers(0, tiny().text.vocab_size, (2, 7)))
    lp_m, ent_m = model.token_logprobs(hidden, tgt, chunk=3)
    lp_r, ent_r = token_logprobs(hidden, tgt, model.logits, chunk_size=5)
    np.testing.assert_allclose(lp_m, lp_r, atol=1e-6)
    np.testing.assert_allclose(ent_m, ent_r, atol=1e-6)
    assert lp_m.shape == ent_m.shape == (2, 7) and lp_m.dtype == jnp.float32
