"""The shared layout `[prompt | c_1 | ... | c_G]` equals the repeated `[prompt | completion]`
layout (tiny Qwen2.5-VL with an image per prompt, fp32): per-token log-probs, the GRPO loss and
its gradient, with and without remat and micro-batches, on one device and on the 8-device mesh.
"""

from __future__ import annotations

import dataclasses
import functools

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
G_MAX = 4  # the largest num_generations tested; smaller G take the first G completions of each
LOSS = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.05, entropy_coef=1e-2)
# A compile-time option only (no effect on what is computed beyond fp32 rounding): XLA:CPU's
# LLVM backend at -O0 compiles these steps ~3x faster, and compiling is what these tests cost.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compiled(jitted, *args):
    return jitted.lower(*args).compile(FAST_COMPILE)


def _cfg(remat="none"):
    # attn_chunk 8: several query chunks, the last one padded, in both layouts
    return dataclasses.replace(tiny(), remat=remat, attn_chunk=8)


def _inputs(cfg, seed=0):
    """B prompts [text, image (16 tokens), text], left-padded to L (prompt 0 by 5 slots);
    G_MAX right-padded completions per prompt (rows b * G_MAX + h; lengths 1..T; row 4 starts
    with the image pad id: a completion token is text in every layout)."""
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
    n = B * G_MAX
    comp = rng.integers(0, cfg.text.vocab_size, (n, T)).astype(np.int32)
    comp[4, 0] = cfg.image_token_id
    lengths = np.resize([T, 1, 3, T - 1, 2], n)
    return {
        "prompt_ids": ids, "prompt_mask": mask, "positions": pos, "rope_deltas": deltas,
        "vision": jax.tree.map(lambda *x: np.stack(x), *per),
        "vis_offsets": np.zeros((B,), np.int32),
        "completion": comp, "completion_mask": np.arange(T)[None] < lengths[:, None],
        "advantages": rng.normal(size=n).astype(np.float32),
    }


def _first_rows(x, g):
    """Rows b * g + h (h < g) of an array with rows b * G_MAX + h."""
    return x.reshape(B, G_MAX, *x.shape[1:])[:, :g].reshape(B * g, *x.shape[1:])


def _model(cfg, seed=3):
    return Qwen2_5_VL(cfg, nnx.Rngs(params=seed))


def _sgd_update(graphdef, g, layout, params, batch, grad_accum=1):
    """One GRPO update with SGD(lr=1) (new params = params - grad), compiled for this batch."""
    sgd = optax.sgd(1.0)
    step = steps.make_grpo_step(graphdef, sgd, LOSS, g, chunk=3, grad_accum=grad_accum,
                                layout=layout)
    opt_state = sgd.init(params)
    return _compiled(step, params, opt_state, batch)(params, opt_state, batch)


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
    rng = np.random.default_rng(0)  # numpy: compiling jax.random's threefry costs seconds
    q = jnp.asarray(rng.normal(size=(b, s, nh, hd)), jnp.float32)
    k, v = jnp.asarray(rng.normal(size=(2, b, s, nkv, hd)), jnp.float32)
    q_seg = np.concatenate([np.zeros(lp), np.repeat(np.arange(1, g + 1), t)]).astype(np.int32)
    q_seg = np.tile(q_seg, (b, 1))
    seg = q_seg.copy()
    seg[0, :2] = -1  # left padding
    seg[1, lp + t - 2:lp + t] = -1  # right padding of c_1
    # jitted: op by op, the chunk loops would compile every primitive on its own
    groups = jax.jit(functools.partial(attend_prompt_groups, prompt_len=lp, chunk=4))
    out = groups(q, k, v, jnp.asarray(q_seg), jnp.asarray(seg))
    idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    whole = jax.jit(functools.partial(attend, chunk=5, shared_seg=0))(
        q, k, v, jnp.asarray(q_seg), jnp.asarray(seg), idx, idx)
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
    moved = groups(q, k.at[:, lp:lp + t].add(1.0), v, jnp.asarray(q_seg), jnp.asarray(seg))
    np.testing.assert_array_equal(moved[:, :lp], out[:, :lp])
    np.testing.assert_array_equal(moved[:, lp + t:], out[:, lp + t:])
    assert float(jnp.max(jnp.abs(moved[:, lp:lp + t] - out[:, lp:lp + t]))) > 1e-3


# ------------------------------------------------------------------ model layouts


class _Runs:
    """The tiny model (remat none), the batches and the `repeated` reference, computed once
    per module and shared by the tests.

    The reference is the repeated layout at G_MAX, compiled once: its rows `[prompt b | c]`
    never see each other, so the rows of a smaller G are a subset of its rows (log-probs), and
    its update with the other rows' completion masks zeroed is the update of that subset (the
    token-mean loss, its gradient and the metrics only read masked tokens)."""

    def __init__(self):
        self.graphdef, self.params = nnx.split(_model(_cfg()), nnx.Param)
        self.full = jax.tree.map(jnp.asarray, _inputs(tiny()))
        fn = steps.make_logprob_fn(self.graphdef, G_MAX, layout="repeated")
        self.repeated_logps = _compiled(fn, self.params, self.full)(self.params, self.full)
        noise = np.random.default_rng(1).normal(0, 0.1, (2, B * G_MAX, T)).astype(np.float32)
        self.full["old_logps"] = self.repeated_logps + noise[0]  # some tokens clipped, some not
        self.full["ref_logps"] = self.repeated_logps + noise[1]
        sgd = optax.sgd(1.0)
        self.opt_state = sgd.init(self.params)
        step = steps.make_grpo_step(self.graphdef, sgd, LOSS, G_MAX, chunk=3, layout="repeated")
        self._ref_step = _compiled(step, self.params, self.opt_state, self.full)
        self._update = {}

    def batch(self, g):
        out = dict(self.full)
        for k in ("completion", "completion_mask", "advantages", "old_logps", "ref_logps"):
            out[k] = _first_rows(self.full[k], g)
        return out

    def update(self, g):
        """The reference update of `batch(g)`: repeated layout, remat none, no micro-batches,
        one device."""
        if g not in self._update:
            keep = np.arange(G_MAX) < g
            b = dict(self.full, completion_mask=self.full["completion_mask"]
                     & jnp.asarray(np.tile(keep, B))[:, None])
            self._update[g] = self._ref_step(self.params, self.opt_state, b)
        return self._update[g]


@pytest.fixture(scope="module")
def runs():
    return _Runs()


@pytest.mark.parametrize("g", [1, 2, 4])
def test_shared_layout_equals_repeated(runs, g):
    """Per-token log-probs (<= 1e-5), loss (<= 1e-6 relative) and gradients (<= 1e-5)."""
    batch = runs.batch(g)
    fn = steps.make_logprob_fn(runs.graphdef, g, layout="shared")
    shared = _compiled(fn, runs.params, batch)(runs.params, batch)
    repeated = _first_rows(runs.repeated_logps, g)
    # every position, padding included: the masks and positions are the same in both layouts
    np.testing.assert_allclose(shared, repeated, atol=1e-5, rtol=0)
    assert float(jnp.abs(shared).max()) > 1.0
    _compare(_sgd_update(runs.graphdef, g, "shared", runs.params, batch), runs.update(g),
             runs.params)


@pytest.mark.parametrize("g", [1, 2, 4])
def test_shared_layout_equals_repeated_remat_micro_batches_mesh(runs, g):
    """remat full, grad_accum 2 (micro-batches of 2 whole groups) and the 8-device CPU mesh
    (2, 2, 2: params sharded over fsdp and tensor, the residual stream constrained to the
    batch axes) together, against the single-device repeated layout with none of them."""
    graphdef_r, params_r = nnx.split(_model(_cfg("full")), nnx.Param)
    assert _max_diff(params_r, runs.params) == 0.0
    c = get_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    mesh = sh.make_mesh(c.mesh)
    rules = sh.rules_from_config(c.mesh)
    sharded = jax.device_put(runs.params, sh.state_shardings(runs.params, mesh, rules))
    with activation_sharding(mesh, rules):
        out = _sgd_update(graphdef_r, g, "shared", sharded, runs.batch(g), grad_accum=2)
    assert out[0]["language_model"]["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec == \
        jax.sharding.PartitionSpec("fsdp", "tensor")
    _compare(out, runs.update(g), runs.params)


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="unknown sequence layout 'packed'"):
        steps.make_logprob_fn(None, 2, layout="packed")
