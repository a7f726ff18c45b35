"""Full-model parity with transformers (fp32), KV-cache decode, jit compile counts, bf16 path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from rewardmap_jax.model import hf_io, rope_index, vision_layout
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.kv_cache import KVCache
from rewardmap_jax.model.qwen2_5_vl import init_model
from tests.model import hf_reference as ref

# Grids (t, h, w): merged 3x5 (does not divide a 2- or 4-token window) and merged 4x4 (divides:
# HF adds a full padding window), plus a second frame-pair item in the batch for window 28.
GRIDS = np.array([[1, 6, 10], [1, 8, 8], [1, 4, 6]])
ROWS = [[0, 1], [2]]  # row 0: two images of different sizes; row 1: left padded, one image


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(p_logits, q_logits):
    """KL(p || q) per position, in float64."""
    lp, lq = _log_softmax64(p_logits), _log_softmax64(q_logits)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def _inputs(cfg):
    ids, mask = ref.left_padded_batch(GRIDS, ROWS)
    pv = ref.pixels(GRIDS)
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, image_grid_thw=GRIDS)
    vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(pv, GRIDS, cfg.vision))
    return ids, mask, pv, pos, deltas, vi


@pytest.mark.parametrize("window,fullatt", [(56, (1, 3)), (112, (0,)), (28, (2,))])
def test_logits_match_transformers(tmp_path, window, fullatt):
    hf = ref.hf_model(tie=False, seed=window, window_size=window, fullatt=fullatt)
    hf.save_pretrained(tmp_path)
    model = hf_io.load_hf(str(tmp_path))
    ids, mask, pv, pos, _, vi = _inputs(model.cfg)
    want = ref.hf_logits(hf, ids, mask, pv, GRIDS, pos)
    run = nnx.jit(lambda m, *a: (m(*a)[0], m.visual(a[3])))
    got, feats = run(model, jnp.asarray(ids, jnp.int32), jnp.asarray(pos),
                     jnp.asarray(mask, bool), vi)
    got = np.asarray(got)
    m = mask.astype(bool)
    err = np.abs(got - want)[m].max()
    kl = _kl(want, got)[m].mean()
    print(f"window {window}: max|dlogit| {err:.2e}, mean KL {kl:.2e}")
    assert err <= 1e-4
    assert kl < 1e-6
    # the vision tower alone
    feats = np.asarray(feats)[: int(np.prod(GRIDS, 1).sum() // 4)]
    verr = np.abs(feats - ref.hf_vision(hf, pv, GRIDS)).max()
    print(f"window {window}: vision tower max err {verr:.2e}")
    assert verr <= 1e-5


def _jitted(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, pos, mask, vi, cache):
        return nnx.merge(graphdef, state)(ids, pos, mask, vi, cache)

    return state, fwd


def test_kv_cache_decode_matches_full_forward(hf_untied):
    _, d = hf_untied
    model = hf_io.load_hf(d)
    ids, mask, _, pos, deltas, vi = _inputs(model.cfg)
    state, fwd = _jitted(model)
    b, n = ids.shape
    full, _ = fwd(state, jnp.asarray(ids, jnp.int32), jnp.asarray(pos), jnp.asarray(mask, bool),
                  vi, None)
    full = np.asarray(full)
    steps = 4
    prompt = n - steps
    cache = KVCache.init(model.cfg, b, n + 3)
    logits, cache = fwd(state, jnp.asarray(ids[:, :prompt], jnp.int32),
                        jnp.asarray(pos[:, :, :prompt]), jnp.asarray(mask[:, :prompt], bool),
                        vi, cache)
    m = mask.astype(bool)
    assert np.abs(np.asarray(logits) - full[:, :prompt])[m[:, :prompt]].max() <= 1e-5
    for j in range(prompt, n):
        p = rope_index.decode_positions(cache.index, deltas, 1)
        np.testing.assert_array_equal(np.asarray(p), pos[:, :, j:j + 1])
        logits, cache = fwd(state, jnp.asarray(ids[:, j:j + 1], jnp.int32), p,
                            jnp.ones((b, 1), bool), None, cache)
        assert np.abs(np.asarray(logits)[:, 0] - full[:, j]).max() <= 1e-5
    assert int(cache.index) == n
    # prefill (with vision), full forward, one decode shape: 3 compilations, reused per step
    assert fwd._cache_size() == 3


def test_same_bucket_different_images_compile_once(hf_untied):
    _, d = hf_untied
    model = hf_io.load_hf(d)
    state, fwd = _jitted(model)
    cfg = model.cfg
    p = vision_layout.bucket_patches(8, cfg.vision)
    outs = []
    for grids in (np.array([[1, 6, 10]]), np.array([[1, 4, 4], [1, 4, 6]])):
        ntok = int(np.prod(grids, 1).sum() // 4)
        ids = np.full((1, 32), 5, np.int64)
        ids[0, 1] = ref.VS
        ids[0, 2:2 + ntok] = ref.IMG
        ids[0, 2 + ntok] = ref.VE
        pos, _ = rope_index.get_rope_index(ids, cfg, None, image_grid_thw=grids)
        vi = vision_layout.pack_vision_inputs(ref.pixels(grids), grids, cfg.vision, p)
        out, _ = fwd(state, jnp.asarray(ids, jnp.int32), jnp.asarray(pos),
                     jnp.ones((1, 32), bool), jax.tree.map(jnp.asarray, vi), None)
        outs.append(np.asarray(out))
    assert fwd._cache_size() == 1
    assert np.isfinite(outs[0]).all() and np.isfinite(outs[1]).all()


def test_bf16_compute_close_to_fp32(hf_untied):
    _, d = hf_untied
    f32 = hf_io.load_hf(d)
    bf16 = hf_io.load_hf(d, compute_dtype="bfloat16")
    ids, mask, _, pos, _, vi = _inputs(f32.cfg)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(pos), jnp.asarray(mask, bool), vi)
    run = nnx.jit(lambda m, *a: m(*a)[0])
    a = np.asarray(run(f32, *args))
    b = np.asarray(run(bf16, *args))
    m = mask.astype(bool)
    err = np.abs(a - b)[m].max()
    kl = _kl(a, b)[m].mean()
    print(f"bf16 vs fp32: max|dlogit| {err:.2e} (logit scale {np.abs(a).max():.2f}), KL {kl:.2e}")
    assert err <= 2e-2
    assert kl < 1e-4


def test_token_logprobs_and_hidden_head_split(hf_tied):
    _, d = hf_tied
    model = hf_io.load_hf(d)
    ids, mask, _, pos, _, vi = _inputs(model.cfg)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(pos), jnp.asarray(mask, bool), vi)
    targets = jnp.roll(args[0], -1, axis=1)

    @nnx.jit
    def run(model, ids, pos, mask, vi):
        logits, _ = model(ids, pos, mask, vi)
        hidden, _ = model(ids, pos, mask, vi, return_hidden=True)
        return logits, model.logits(hidden), model.token_logprobs(hidden, targets, chunk=16)

    logits, split_logits, (logp, ent) = run(model, *args)
    np.testing.assert_allclose(np.asarray(split_logits), np.asarray(logits), atol=1e-6)
    ls = jax.nn.log_softmax(logits, -1)
    want = np.take_along_axis(np.asarray(ls), np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(logp), want, atol=1e-5)
    want_ent = -np.sum(np.exp(np.asarray(ls)) * np.asarray(ls), -1)
    np.testing.assert_allclose(np.asarray(ent), want_ent, atol=1e-4)


def test_remat_policies_same_loss_and_grads():
    grids = np.array([[1, 6, 6]])
    results = []
    for remat in ("none", "full"):  # "dots" checked the same way by hand (max grad diff 3e-7)
        cfg = get_preset("tiny", remat=remat)
        ids = np.full((1, 20), 5)
        ids[0, 1], ids[0, 11] = cfg.vision_start_token_id, cfg.vision_end_token_id
        ids[0, 2:11] = cfg.image_token_id
        pos, _ = rope_index.get_rope_index(ids, cfg, None, image_grid_thw=grids)
        vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(
            ref.pixels(grids), grids, cfg.vision))
        graphdef, state = nnx.split(init_model(cfg))

        def loss(state, graphdef=graphdef, ids=ids, pos=pos, vi=vi):
            m = nnx.merge(graphdef, state)
            ids = jnp.asarray(ids, jnp.int32)
            h, _ = m(ids, jnp.asarray(pos), jnp.ones(ids.shape, bool), vi, return_hidden=True)
            return -m.token_logprobs(h, jnp.roll(ids, -1, 1), 8)[0].mean()

        results.append(jax.jit(jax.value_and_grad(loss))(state))
    for val, grads in results[1:]:
        np.testing.assert_allclose(float(val), float(results[0][0]), rtol=1e-6)
        for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(results[0][1]), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g0), atol=1e-6)


def test_image_and_video_batch_matches_transformers(hf_untied):
    hf, d = hf_untied
    model = hf_io.load_hf(d)
    img, vids = np.array([[1, 6, 10]]), np.array([[2, 4, 6], [4, 4, 4]])
    spg = np.array([1.0, 0.5])
    rs = np.random.RandomState(3)
    text = lambda k: list(rs.randint(2, 240, size=k))
    r0 = (text(2) + [ref.VS] + [ref.IMG] * 15 + [ref.VE] + text(2) + [ref.VS] + [ref.VID] * 12
          + [ref.VE] + text(3))
    r1 = text(1) + [ref.VS] + [ref.VID] * 16 + [ref.VE] + text(2)
    n = len(r0)
    ids = np.zeros((2, n), np.int64)
    mask = np.zeros((2, n), np.int64)
    for r, seq in enumerate((r0, r1)):
        ids[r, n - len(seq):], mask[r, n - len(seq):] = seq, 1
    pv_img, pv_vid = ref.pixels(img, 1), ref.pixels(vids, 2)
    pos, _ = rope_index.get_rope_index(ids, model.cfg, mask, image_grid_thw=img,
                                       video_grid_thw=vids, second_per_grid_ts=spg)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  pixel_values=torch.tensor(pv_img), image_grid_thw=torch.tensor(img),
                  pixel_values_videos=torch.tensor(pv_vid), video_grid_thw=torch.tensor(vids),
                  second_per_grid_ts=torch.tensor(spg),
                  position_ids=torch.tensor(pos.astype(np.int64))).logits.numpy()
    # items in the order their pad tokens appear in the flattened batch: image, video, video
    vi = vision_layout.pack_vision_inputs(np.concatenate([pv_img, pv_vid]),
                                          np.concatenate([img, vids]), model.cfg.vision)
    run = nnx.jit(lambda m, *a: m(*a)[0])
    got = np.asarray(run(model, jnp.asarray(ids, jnp.int32), jnp.asarray(pos),
                         jnp.asarray(mask, bool), jax.tree.map(jnp.asarray, vi)))
    m = mask.astype(bool)
    err, kl = np.abs(got - want)[m].max(), _kl(want, got)[m].mean()
    print(f"image+video: max|dlogit| {err:.2e}, mean KL {kl:.2e}")
    assert err <= 1e-4
    assert kl < 1e-6


def test_stacked_per_image_buffers_equal_one_packed_buffer():
    """vmap over per-image buffers (one full-attention problem per image) == one shared buffer."""
    cfg = get_preset("tiny")
    model = init_model(cfg)
    grids = [np.array([[1, 6, 6]]), np.array([[1, 4, 8]])]
    pvs = [ref.pixels(g, seed=i) for i, g in enumerate(grids)]
    slots = 128
    per = [vision_layout.pack_vision_inputs(p, g, cfg.vision, slots)
           for p, g in zip(pvs, grids, strict=True)]
    stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *per)
    packed = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(
        np.concatenate(pvs), np.concatenate(grids), cfg.vision, slots))
    run = nnx.jit(lambda m, s, p: (jax.vmap(m.visual)(s), m.visual(p)))
    a, b = run(model, stacked, packed)
    n0, n1 = 9, 8
    np.testing.assert_allclose(np.asarray(a[0, :n0]), np.asarray(b[:n0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a[1, :n1]), np.asarray(b[n0:n0 + n1]), atol=1e-6)


def test_vision_key_windows_match_transformers(hf_untied):
    """`vision_frame_span` (each full-attention query chunk reads only its neighbouring keys)
    on a packed buffer of three different-size images: the tower's features equal the
    all-keys run and transformers; `prepare_prompts` refuses a batch with a larger image."""
    from rewardmap_jax.rl import rollout as ro

    hf, d = hf_untied
    pv = ref.pixels(GRIDS)
    base = hf_io.load_hf(d, attn_chunk=16)
    span = max(vision_layout.required_patches(g[None], base.cfg.vision) for g in GRIDS)
    model = hf_io.load_hf(d, attn_chunk=16, vision_frame_span=span)
    vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(pv, GRIDS, model.cfg.vision))
    assert 16 + 2 * span < vi.pixels.shape[0]  # the key-window path is taken
    run = nnx.jit(lambda m, v: m.visual(v))
    n = int(np.prod(GRIDS, 1).sum() // 4)
    got, want = np.asarray(run(model, vi))[:n], np.asarray(run(base, vi))[:n]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - ref.hf_vision(hf, pv, GRIDS)).max() <= 1e-5
    # A frame larger than the bound is refused before anything runs.
    ids, mask = ref.left_padded_batch(GRIDS, [[0], [1], [2]])
    rows = np.prod(GRIDS, 1)
    batch = {"input_ids": ids, "attention_mask": mask, "image_grid_thw": GRIDS,
             "pixel_values": pv, "num_patches": rows,
             "patch_offsets": np.concatenate([[0], np.cumsum(rows)[:-1]])}
    assert ro.prepare_prompts(batch, model.cfg)["vision"].pixels.ndim == 2
    small = model.cfg.replace(vision_frame_span=span // 2 // 16 * 16)
    with pytest.raises(ValueError, match="model.vision_frame_span"):
        ro.prepare_prompts(batch, small)
