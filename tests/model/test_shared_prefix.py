"""Group-shared prompt cache: `attend_shared_prefix` and `SharedKVCache` through the decoder equal
attention over the concatenated (prefix repeated G times + own slots) cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax.model import kv_cache as kvc
from rewardmap_jax.model.attention import attend, attend_decode, attend_shared_prefix
from rewardmap_jax.model.config import tiny
from rewardmap_jax.model.qwen2_5_vl import init_model
from rewardmap_jax.model.rope_index import decode_positions, get_rope_index


@pytest.mark.parametrize("t, chunk", [(1, 512), (5, 512), (5, 2)],
                         ids=["decode", "multi", "chunked"])
def test_shared_prefix_attention_equals_attention_over_concatenation(t, chunk):
    b, g, p, s, nh, nkv, hd = 2, 3, 7, 6, 4, 2, 8
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (b * g, t, nh, hd))
    pk, pv = jax.random.normal(ks[1], (2, b, p, nkv, hd))
    k, v = jax.random.normal(ks[2], (2, b * g, s, nkv, hd))
    # prompt 0 left-padded by 2 slots, prompt 1 by none; own slots: first 3 written before this
    # call, this call's t queries sit at own slots 3.. (causal among them)
    prefix_valid = jnp.array([[False, False] + [True] * (p - 2), [True] * p])
    own_valid = jnp.broadcast_to(jnp.arange(s) < 3 + t, (b * g, s))
    kv_seg = jnp.where(own_valid, 0, -1).astype(jnp.int32)
    kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b * g, s))
    q_pos = jnp.broadcast_to(3 + jnp.arange(t, dtype=jnp.int32), (b * g, t))
    out = attend_shared_prefix(q, k, v, kv_seg, q_pos, kv_pos, pk, pv, prefix_valid, chunk=chunk)

    # reference: G copies of each prompt in front of the own slots, absolute slot = P + own slot
    rep = lambda x: jnp.repeat(x, g, axis=0)
    full_k = jnp.concatenate([rep(pk), k], axis=1)
    full_v = jnp.concatenate([rep(pv), v], axis=1)
    full_seg = jnp.concatenate([jnp.where(rep(prefix_valid), 0, -1), kv_seg], axis=1)
    full_pos = jnp.broadcast_to(jnp.arange(p + s, dtype=jnp.int32), (b * g, p + s))
    ref = attend(q, full_k, full_v, jnp.zeros((b * g, t), jnp.int32), full_seg, q_pos + p,
                 full_pos)
    assert out.shape == (b * g, t, nh, hd) and out.dtype == q.dtype
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-6)
    # a query really reads its own prompt: moving prompt 1's keys changes only rows of prompt 1
    moved = attend_shared_prefix(q, k, v, kv_seg, q_pos, kv_pos, pk.at[1].add(1.0), pv,
                                 prefix_valid, chunk=chunk)
    np.testing.assert_array_equal(moved[:g], out[:g])
    assert float(jnp.max(jnp.abs(moved[g:] - out[g:]))) > 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_decode_attention_equals_attention(dtype):
    """`attend_decode` (one query, cache read in place) against `attend_shared_prefix` and
    `attend` for the same query, with a row whose own slots are all hidden."""
    b, g, p, s, nh, nkv, hd = 2, 3, 7, 6, 4, 2, 8
    ks = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(ks[0], (b * g, 1, nh, hd)).astype(dtype)
    pk, pv = jax.random.normal(ks[1], (2, b, p, nkv, hd)).astype(dtype)
    k, v = jax.random.normal(ks[2], (2, b * g, s, nkv, hd)).astype(dtype)
    prefix_valid = jnp.array([[False, False] + [True] * (p - 2), [True] * p])
    visible = jnp.broadcast_to(jnp.arange(s) < 4, (b * g, s)).at[1].set(False)
    kv_seg = jnp.where(visible, 0, -1).astype(jnp.int32)
    kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b * g, s))
    q_pos = jnp.full((b * g, 1), 3, jnp.int32)
    tol = dict(atol=2e-6, rtol=1e-6) if dtype == jnp.float32 else dict(atol=2e-2, rtol=2e-2)
    hm = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  (the cache's head-major layout)
    got = attend_decode(q, hm(k), hm(v), visible, hm(pk), hm(pv), prefix_valid)
    want = attend_shared_prefix(q, k, v, kv_seg, q_pos, kv_pos, pk, pv, prefix_valid)
    assert got.shape == want.shape and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
    # plain cache: no prefix
    got = attend_decode(q, hm(k), hm(v), visible)
    want = attend(q, k, v, jnp.zeros((b * g, 1), jnp.int32), kv_seg, q_pos, kv_pos)
    live = np.asarray(visible.any(-1))  # a row with nothing visible: meaningless, finite
    np.testing.assert_allclose(np.asarray(got, np.float32)[live],
                               np.asarray(want, np.float32)[live], **tol)
    assert np.isfinite(np.asarray(got, np.float32)).all()


def _decode_attention_temp_bytes(attention, k, pk) -> int:
    q = jnp.zeros((6, 1, 4, 64))
    compiled = jax.jit(attention).lower(q, k, k, jnp.ones((6, 16), bool), pk, pk,
                                        jnp.ones((2, 32), bool)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_decode_attention_reads_the_cache_in_place():
    """The decode step's attention copies nothing as large as the cache: its compiled temporaries
    (scores, weights) stay under half the smallest cache operand (the (2, 2, 32, 64) prefix,
    32 KiB). Reading a slot-major cache instead (the layout before the cache became head-major)
    makes XLA relayout it, which the same bound catches."""
    k = jnp.zeros((6, 2, 16, 64))  # (rows, kv_heads, slots, head_dim)
    pk = jnp.zeros((2, 2, 32, 64))
    bound = pk.size * pk.dtype.itemsize // 2
    assert _decode_attention_temp_bytes(attend_decode, k, pk) < bound

    def slot_major(q, k, v, visible, pk, pv, prefix_valid):  # the same maths, dots on (N,C,K,H)
        sm = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
        return attend_decode(q, sm(k), sm(v), visible, sm(pk), sm(pv), prefix_valid)

    assert _decode_attention_temp_bytes(
        slot_major, jnp.swapaxes(k, 1, 2), jnp.swapaxes(pk, 1, 2)) >= bound


def test_shared_prefix_attention_rejects_mismatched_rows():
    q = jnp.zeros((5, 1, 4, 8))
    pk = jnp.zeros((2, 3, 2, 8))
    with pytest.raises(ValueError, match="multiple of prefix rows"):
        attend_shared_prefix(q, jnp.zeros((5, 2, 2, 8)), jnp.zeros((5, 2, 2, 8)),
                             jnp.zeros((5, 2), jnp.int32), jnp.zeros((5, 1), jnp.int32),
                             jnp.zeros((5, 2), jnp.int32), pk, pk, jnp.ones((2, 3), bool))


def _prompts(cfg):
    """Two left-padded text prompts (lengths 5 and 8 in a bucket of 8)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (2, 8)).astype(np.int32)
    mask = np.ones((2, 8), bool)
    mask[0, :3] = False
    ids[0, :3] = cfg.pad_token_id
    pos, deltas = get_rope_index(ids, cfg, mask)
    return jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), jnp.asarray(deltas)


def test_model_with_shared_cache_equals_repeated_cache():
    """Prefill B prompts once, then feed G different continuations per prompt (a 3-token chunk,
    then a 1-token step) through a SharedKVCache and through the same cache repeated G times."""
    cfg = tiny()
    model = init_model(cfg, seed=3)
    g, s = 3, 6
    ids, pos, mask, deltas = _prompts(cfg)
    b, length = ids.shape
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, pos, mask, cache):
        return nnx.merge(graphdef, state)(ids, pos, mask, cache=cache)

    _, prefix = fwd(state, ids, pos, mask, kvc.KVCache.init(cfg, b, length))
    shared = kvc.SharedKVCache.share(prefix, g, s)
    repeated = kvc.KVCache.init(cfg, b, length + s)
    _, repeated = fwd(state, ids, pos, mask, repeated)
    repeated = repeated.repeat(g)
    assert shared.num_generations == g and int(shared.index) == int(repeated.index) == length

    d = jnp.repeat(deltas, g)
    new = jnp.asarray(np.random.default_rng(1).integers(0, 1000, (b * g, 4)), jnp.int32)
    for chunk in (new[:, :3], new[:, 3:]):
        n = chunk.shape[1]
        ones = jnp.ones((b * g, n), bool)
        p_sh = decode_positions(shared.index, d, n)
        p_rep = decode_positions(repeated.index, d, n)
        np.testing.assert_array_equal(p_sh, p_rep)
        out_sh, shared = fwd(state, chunk, p_sh, ones, shared)
        out_rep, repeated = fwd(state, chunk, p_rep, ones, repeated)
        assert out_sh.shape == (b * g, n, cfg.text.vocab_size)
        np.testing.assert_allclose(out_sh, out_rep, atol=1e-5, rtol=1e-5)
    # the G samples of a prompt got different tokens, so their logits differ
    assert float(jnp.max(jnp.abs(out_sh[0] - out_sh[1]))) > 1e-3
    assert shared.prefix.k[0].shape[0] == b and int(shared.suffix.index) == 4
    flat = shared.unshare()
    np.testing.assert_array_equal(flat.valid, repeated.valid)
    assert int(flat.index) == int(repeated.index)
    # (left-pad slots hold meaningless keys from rows with nothing to attend to: skip them)
    live = np.asarray(flat.valid)
    np.testing.assert_allclose(np.asarray(kvc.slot_major(flat.k[1]))[live],
                               np.asarray(kvc.slot_major(repeated.k[1]))[live], atol=1e-5)
    # the full no-cache forward over [prompt | continuation] gives the same last logits
    full_ids = jnp.concatenate([jnp.repeat(ids, g, 0), new], axis=1)
    full_mask = jnp.concatenate([jnp.repeat(mask, g, 0), jnp.ones((b * g, 4), bool)], axis=1)
    full_pos = jnp.concatenate([jnp.repeat(pos, g, 1), decode_positions(
        jnp.int32(length), d, 4)], axis=2)
    full, _ = fwd(state, full_ids, full_pos, full_mask, None)
    np.testing.assert_allclose(out_sh[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_shared_cache_rejects_wrong_row_count():
    cfg = tiny()
    model = init_model(cfg, seed=3)
    shared = kvc.SharedKVCache.share(kvc.KVCache.init(cfg, 2, 4), 3, 2)
    ids = jnp.zeros((4, 1), jnp.int32)
    with pytest.raises(ValueError, match="6 sample rows .2 prompts x 3. but the input has 4"):
        model(ids, jnp.zeros((3, 4, 1), jnp.int32), jnp.ones((4, 1), bool), cache=shared)
    with pytest.raises(ValueError, match="num_generations 0"):
        kvc.SharedKVCache.share(kvc.KVCache.init(cfg, 2, 4), 0, 2)
