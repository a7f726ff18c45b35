"""Packed window buffer (windows/order as in transformers, segments, errors); chunked attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from rewardmap_jax.model import vision_layout as VL
from rewardmap_jax.model.attention import attend
from rewardmap_jax.model.config import VisionConfig

GRIDS = np.array([[1, 6, 10], [1, 8, 8], [2, 4, 6], [1, 2, 2]])


@pytest.mark.parametrize("window", [28, 56, 112])
def test_windows_match_transformers(window):
    cfg = VisionConfig(window_size=window, hidden_size=32, num_heads=2)
    src, valid, seg, pos, tok = VL.layout(GRIDS, cfg)
    want_index, want_cu = get_vision_window_index(torch.tensor(GRIDS), 2, window, 14)
    want_cu = torch.unique_consecutive(want_cu).numpy()
    w = cfg.window_patches
    ours_index, ours_len = [], []
    for b in range(len(src) // w):
        rows = src[b * w:(b + 1) * w]
        rows = rows[rows >= 0]
        if rows.size:
            assert (rows[::4] % 4 == 0).all()  # whole merged tokens, 4 patches in order
            ours_index += list(rows[::4] // 4)
            ours_len.append(rows.size)
    np.testing.assert_array_equal(ours_index, want_index.numpy())
    np.testing.assert_array_equal(np.cumsum([0] + ours_len), want_cu)
    assert VL.num_windows(GRIDS, cfg) == len(ours_len)
    # token_index maps raster token i to the merged slot holding it
    n_tok = VL.num_vision_tokens(GRIDS, cfg)
    np.testing.assert_array_equal(src[tok[:n_tok] * 4] // 4, np.arange(n_tok))


def test_segments_positions_and_padding_hand_worked():
    cfg = VisionConfig(window_size=56, hidden_size=32, num_heads=2)  # 2x2-token windows
    # one image 4x6 patches -> merged 2x3 -> windows [2x2], [2x1]; one 2-frame video 2x2
    src, valid, seg, pos, tok = VL.layout(np.array([[1, 4, 6], [2, 2, 2]]), cfg, 64)
    assert valid.sum() == 24 + 8 and len(src) == 64
    # window 0: tokens (0,0),(0,1),(1,0),(1,1) -> rows 0..3, 4..7, 12..15, 16..19
    np.testing.assert_array_equal(src[:16], np.r_[0:8, 12:20])
    np.testing.assert_array_equal(src[16:24], np.r_[8:12, 20:24])
    assert (src[24:32] == -1).all()  # window 1 holds 2 tokens in a 4-token block
    np.testing.assert_array_equal(seg[:24], 0)
    np.testing.assert_array_equal(seg[32:36], 1)  # video frame 0
    np.testing.assert_array_equal(seg[48:52], 2)  # video frame 1, its own window
    assert (seg[~valid] == -1).all()
    np.testing.assert_array_equal(pos[16:24], [[0, 4], [0, 5], [1, 4], [1, 5],
                                               [2, 4], [2, 5], [3, 4], [3, 5]])
    np.testing.assert_array_equal(tok[:8], [0, 1, 4, 2, 3, 5, 8, 12])


def test_pack_and_bucket_errors():
    cfg = VisionConfig(window_size=56, hidden_size=32, num_heads=2)
    g = np.array([[1, 6, 10]])
    assert VL.required_patches(g, cfg) == 6 * 16
    assert VL.bucket_patches(6, cfg) == 8 * 16
    with pytest.raises(ValueError, match="multiple of 16"):
        VL.layout(g, cfg, 100)
    with pytest.raises(ValueError, match=">= 96"):
        VL.layout(g, cfg, 80)
    with pytest.raises(ValueError, match="divisible by 2"):
        VL.layout(np.array([[1, 5, 4]]), cfg)
    with pytest.raises(ValueError, match="does not match grids"):
        VL.pack_vision_inputs(np.zeros((10, 1176), np.float32), g, cfg)
    vi = VL.pack_vision_inputs(np.ones((60, 1176), np.float32), g, cfg)
    assert vi.pixels.shape == (128, 1176) and vi.pixels[~vi.valid].sum() == 0


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_attention_equals_dense(causal):
    rs = np.random.RandomState(0)
    b, t, n, k, h = 2, 37, 4, 2, 8
    q = jnp.asarray(rs.randn(b, t, n, h), jnp.float32)
    kv = jnp.asarray(rs.randn(2, b, t, k, h), jnp.float32)
    seg = jnp.asarray(rs.randint(-1, 3, size=(b, t)), jnp.int32)
    p = jnp.broadcast_to(jnp.arange(t), (b, t)) if causal else None
    ok = np.asarray(seg >= 0)

    @jax.jit
    def run(q):
        f = lambda q, c: (attend(q, kv[0], kv[1], seg, seg, p, p, chunk=c) * ok[..., None, None])
        out = [f(q, c) for c in (t, 8)]
        grads = [jax.grad(lambda q, c=c: f(q, c).sum())(q) for c in (t, 8)]
        return out, grads

    (dense, chunked), (g0, g) = run(q)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(dense), atol=1e-6)
    # grads flow through the rematerialised chunks
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), atol=1e-5)


def test_key_windows_equal_full_keys():
    """`attend(reach=R)` reads each query chunk's chunk + 2R neighbouring keys only; with
    contiguous segments of <= R slots (a packed vision buffer) it equals attending over all
    keys, outputs and gradients."""
    rs = np.random.RandomState(1)
    lengths = [5, 12, 3, 16, 9, 1, 14, 7, 16, 10]  # contiguous segments, padding between some
    seg = np.concatenate([np.r_[np.full(n, i), np.full(i % 3, -1)] for i, n in enumerate(lengths)])
    t, n, h = len(seg), 4, 8
    q = jnp.asarray(rs.randn(1, t, n, h), jnp.float32)
    kv = jnp.asarray(rs.randn(2, 1, t, n, h), jnp.float32)
    s = jnp.asarray(seg[None], jnp.int32)
    ok = np.asarray(seg >= 0)[None, :, None, None]

    @jax.jit
    def run(q):
        f = lambda q, r: attend(q, kv[0], kv[1], s, s, chunk=8, reach=r) * ok  # noqa: E731
        return [f(q, r) for r in (0, 16)], [jax.grad(lambda q, r=r: f(q, r).sum())(q)
                                            for r in (0, 16)]

    assert 8 + 2 * 16 < t  # the windowed path is taken
    (full, windowed), (g0, g1) = run(q)
    np.testing.assert_allclose(np.asarray(windowed), np.asarray(full), atol=1e-6)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), atol=1e-5)
