"""The shared layout `[prompt | c_1 | ... | c_G]` equals the repeated `[prompt | completion]`
layout (tiny Qwen2.5-VL with an image per prompt, fp32): per-token log-probs, the GRPO loss and
its gradient, with and without remat and micro-batches, on one device and on the 8-device mesh.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.curriculum import get_config
from rewardmap_jax.model import sharding as sh
from rewardmap_jax.model.attention import attend, attend_prompt_groups
from rewardmap_jax.model.config import tiny
from rewardmap_jax.model.layers import activation_sharding
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.model.rope_index import get_rope_index
from rewardmap_jax.model.vision_layout import pack_vision_inputs
from rewardmap_jax.rl import grpo, steps

B, L, T, SIDE = 4, 32, 5, 8  # prompts, prompt bucket, completion length, image side (patches)
LOSS = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.05, entropy_coef=1e-2)


def _cfg(remat="none"):
    # attn_chunk 8: several query chunks, the last one padded, in both layouts
    return dataclasses.replace(tiny(), remat=remat, attn_chunk=8)


def _inputs(cfg, g, seed=0):
    """B prompts [text, image (16 tokens), text], left-padded to L (prompt 0 by 5 slots);
    G right-padded completions per prompt (lengths 1..T, one holding the image pad id: a
    completion token is text in every layout); old/ref log-probs near the policy's."""
    rng = np.random.default_rng(seed)
    n_img = SIDE * SIDE // cfg.vision.merge_unit
    ids = np.full((B, L), cfg.pad_token_id, np.int32)
    mask = np.zeros((B, L), bool)
    for b in range(B):
        n = L - (5 if b == 0 else b)
        text = rng.integers(0, 1000, n - n_img - 2)
        row = np.concatenate([text[:3], [cfg.vision_start_token_id], [cfg.image_token_id] * n_img,
                              [cfg.vision_end_token_id], text[3:]])
        ids[b, L - n:], mask[b, L - n:] = row, True
    grids = np.tile([[1, SIDE, SIDE]], (B, 1))
    pos, deltas = get_rope_index(ids, cfg, mask, grids)
    pix = rng.normal(size=(B, SIDE * SIDE, cfg.vision.patch_dim)).astype(np.float32)
    per = [pack_vision_inputs(pix[b], grids[b:b + 1], cfg.vision) for b in range(B)]
    n = B * g
    comp = rng.integers(0, cfg.text.vocab_size, (n, T)).astype(np.int32)
    comp[-1, 0] = cfg.image_token_id
    lengths = np.resize([T, 1, 3, T - 1, 2], n)
    return {
        "prompt_ids": ids, "prompt_mask": mask, "positions": pos, "rope_deltas": deltas,
        "vision": jax.tree.map(lambda *x: np.stack(x), *per),
        "vis_offsets": np.zeros((B,), np.int32),
        "completion": comp, "completion_mask": np.arange(T)[None] < lengths[:, None],
        "advantages": rng.normal(size=n).astype(np.float32),
    }


def _model(cfg, seed=3):
    return Qwen2_5_VL(cfg, nnx.Rngs(params=seed))


def _sgd_step(graphdef, g, layout, grad_accum=1):
    """One GRPO update with SGD(lr=1): new params = params - grad."""
    sgd = optax.sgd(1.0)
    step = steps.make_grpo_step(graphdef, sgd, LOSS, g, chunk=3, grad_accum=grad_accum,
                                layout=layout)
    return lambda params, batch: step(params, sgd.init(params), batch)


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b), strict=True))


def _compare(out, ref, params):
    (p1, _, m1), (p0, _, m0) = out, ref
    assert _max_diff(p0, params) > 1e-3  # a real gradient
    assert _max_diff(p1, p0) <= 1e-5  # gradients (SGD lr 1)
    # relative to the loss's terms: pg + kl_coef kl - entropy_coef entropy nearly cancel here
    scale = (abs(float(m0["pg_loss"])) + LOSS.kl_coef * abs(float(m0["kl"]))
             + LOSS.entropy_coef * abs(float(m0["entropy"])))
    assert abs(float(m1["loss"]) - float(m0["loss"])) <= 1e-6 * scale
    for k in ("pg_loss", "kl", "entropy", "tokens", "logp_diff_max"):  # derived metrics
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------ attention rule


def test_prompt_groups_attention_is_the_segment_rule():
    """`attend_prompt_groups` (split in prompt / completion queries) equals one `attend` over
    the whole row with the shared-segment rule, and that rule is the one stated: slot i sees
    j <= i in the prompt or in i's own completion (checked against an explicit numpy mask)."""
    b, lp, g, t, nh, nkv, hd = 2, 6, 3, 4, 4, 2, 8
    s = lp + g * t
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (b, s, nh, hd))
    k, v = jax.random.normal(ks[1], (2, b, s, nkv, hd))
    q_seg = np.concatenate([np.zeros(lp), np.repeat(np.arange(1, g + 1), t)]).astype(np.int32)
    q_seg = np.tile(q_seg, (b, 1))
    seg = q_seg.copy()
    seg[0, :2] = -1  # left padding
    seg[1, lp + t - 2:lp + t] = -1  # right padding of c_1
    out = attend_prompt_groups(q, k, v, jnp.asarray(q_seg), jnp.asarray(seg), lp, chunk=4)
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    whole = attend(q, k, v, jnp.asarray(q_seg), jnp.asarray(seg), idx, idx, chunk=5,
                   shared_seg=0)
    # explicit mask, dense softmax in numpy
    i, j = np.arange(s)[:, None], np.arange(s)[None]
    vis = (j <= i) & (seg[:, None, :] >= 0) & ((seg[:, None, :] == 0)
                                                | (seg[:, None, :] == q_seg[:, :, None]))
    live = vis.any(-1)  # rows with a visible key (left-pad queries have none: undefined)
    assert live.sum() == 2 * s - 2
    np.testing.assert_allclose(np.asarray(out)[live], np.asarray(whole)[live], atol=2e-6,
                               rtol=1e-6)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    kn, vn = np.repeat(kn, nh // nkv, axis=2), np.repeat(vn, nh // nkv, axis=2)
    logits = np.einsum("bqnh,bknh->bnqk", qn, kn) / np.sqrt(hd)
    logits = np.where(vis[:, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True, where=vis[:, None], initial=-1e30))
    p = np.where(vis[:, None], p, 0) / np.maximum(p.sum(-1, keepdims=True), 1e-30)
    want = np.einsum("bnqk,bknh->bqnh", p, vn)
    np.testing.assert_allclose(np.asarray(out)[live], want[live], atol=2e-6)
    # c_2's queries do not read c_1's keys: changing them leaves c_2 (and the prompt) alone
    moved = attend_prompt_groups(q, k.at[:, lp:lp + t].add(1.0), v, jnp.asarray(q_seg),
                                 jnp.asarray(seg), lp, chunk=4)
    np.testing.assert_array_equal(moved[:, :lp], out[:, :lp])
    np.testing.assert_array_equal(moved[:, lp + t:], out[:, lp + t:])
    assert float(jnp.max(jnp.abs(moved[:, lp:lp + t] - out[:, lp:lp + t]))) > 1e-3


# ------------------------------------------------------------------ model layouts


class _Runs:
    """The tiny model (remat none), one batch per G and the single-device results, computed
    once per module: every test compares against the same `repeated` reference."""

    def __init__(self):
        self.graphdef, self.params = nnx.split(_model(_cfg()), nnx.Param)
        self._logp, self._batch, self._update = {}, {}, {}

    def logps(self, g, layout):
        if (g, layout) not in self._logp:
            fn = steps.make_logprob_fn(self.graphdef, g, layout=layout)
            self._logp[g, layout] = fn(self.params, self.batch(g, with_logps=False))
        return self._logp[g, layout]

    def batch(self, g, with_logps=True):
        if g not in self._batch:
            self._batch[g] = jax.tree.map(jnp.asarray, _inputs(tiny(), g))
        b = self._batch[g]
        if with_logps and "old_logps" not in b:
            lp = self.logps(g, "repeated")
            noise = np.random.default_rng(g).normal(0, 0.1, (2, *lp.shape)).astype(np.float32)
            b["old_logps"] = lp + noise[0]  # some tokens clipped, some not
            b["ref_logps"] = lp + noise[1]
        return b

    def update(self, g, layout):
        if (g, layout) not in self._update:
            self._update[g, layout] = _sgd_step(self.graphdef, g, layout)(self.params,
                                                                          self.batch(g))
        return self._update[g, layout]


@pytest.fixture(scope="module")
def runs():
    return _Runs()


@pytest.mark.parametrize("g", [1, 2, 4])
def test_shared_layout_equals_repeated(runs, g):
    """Per-token log-probs (<= 1e-5), loss (<= 1e-6 relative) and gradients (<= 1e-5)."""
    shared, repeated = runs.logps(g, "shared"), runs.logps(g, "repeated")
    # every position, padding included: the masks and positions are the same in both layouts
    np.testing.assert_allclose(shared, repeated, atol=1e-5, rtol=0)
    assert float(jnp.abs(shared).max()) > 1.0
    _compare(runs.update(g, "shared"), runs.update(g, "repeated"), runs.params)


def test_shared_layout_equals_repeated_remat_and_micro_batches(runs):
    """remat full (G = 4) and grad_accum 2 (micro-batches of whole groups, G = 2) against the
    repeated layout without either."""
    graphdef_r, params_r = nnx.split(_model(_cfg("full")), nnx.Param)
    assert _max_diff(params_r, runs.params) == 0.0
    out = _sgd_step(graphdef_r, 4, "shared")(runs.params, runs.batch(4))
    _compare(out, runs.update(4, "repeated"), runs.params)
    out = _sgd_step(runs.graphdef, 2, "shared", grad_accum=2)(runs.params, runs.batch(2))
    _compare(out, runs.update(2, "repeated"), runs.params)


def test_shared_layout_equals_repeated_on_the_mesh(runs):
    """8 CPU devices, mesh (2, 2, 2), params sharded, residual stream constrained to the batch
    axes (4 shards: one group per shard in the shared layout): the same update as the
    single-device repeated layout."""
    c = get_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    mesh = sh.make_mesh(c.mesh)
    rules = sh.rules_from_config(c.mesh)
    sharded = jax.device_put(runs.params, sh.state_shardings(runs.params, mesh, rules))
    with activation_sharding(mesh, rules):
        out = _sgd_step(runs.graphdef, 4, "shared")(sharded, runs.batch(4))
    assert out[0]["language_model"]["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec == \
        jax.sharding.PartitionSpec("fsdp", "tensor")
    _compare(out, runs.update(4, "repeated"), runs.params)


def test_unknown_layout_is_an_error(runs):
    with pytest.raises(ValueError, match="unknown sequence layout 'packed'"):
        steps.make_logprob_fn(runs.graphdef, 2, layout="packed")
