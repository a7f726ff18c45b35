"""Host-side (numpy) layout of images/videos into a fixed-size packed patch buffer.

The buffer is a sequence of attention windows of `W = window_patches` slots each (64 for the real
models). Each window holds the patches of one HF attention window (spec §1.5) in HF's window order
(4 consecutive slots = one merged token); unused slots are padding. Consequences:
  * windowed attention is a reshape to (P/W, W) plus a per-slot validity mask - no gather and never
    an N x N mask;
  * full attention uses `segment_ids` (one id per frame of each item, -1 for padding);
  * the merger sees the same 4-patch groups as HF; `token_index` gathers the merged outputs back
    into raster order (images in sequence), the order of the vision pad tokens.
Because P (number of slots) is fixed by a bucket, `jit` sees static shapes for any mix of image
sizes.
"""

from __future__ import annotations

import math

import numpy as np
from flax import struct

from rewardmap_jax.model.config import VisionConfig


@struct.dataclass
class VisionInputs:
    """Packed vision inputs (numpy on the host, jax arrays on device).

    pixels: (P, patch_dim) float, patch rows (C, T, ph, pw) as in HF `pixel_values`.
    valid: (P,) bool, slot holds a real patch.
    segment_ids: (P,) int32, frame id (unique over items and frames) or -1 for padding.
    rope_pos: (P, 2) int32, (row, col) of the patch in its patch grid.
    token_index: (M,) int32, merged-slot index (into P // merge_unit) of the i-th vision token in
      raster order, items in sequence; entries past the real token count point at slot 0.
    """

    pixels: np.ndarray
    valid: np.ndarray
    segment_ids: np.ndarray
    rope_pos: np.ndarray
    token_index: np.ndarray


def num_windows(grid_thw: np.ndarray, cfg: VisionConfig) -> int:
    """Number of non-empty attention windows for the given (t, h, w) patch grids."""
    ws, m = cfg.window_tokens, cfg.spatial_merge_size
    g = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    return int(sum(t * -(-(h // m) // ws) * -(-(w // m) // ws) for t, h, w in g))


def required_patches(grid_thw: np.ndarray, cfg: VisionConfig) -> int:
    """Minimum buffer slots for the items: windows * window_patches (>= sum t*h*w, because edge
    windows are padded to full size)."""
    return num_windows(grid_thw, cfg) * cfg.window_patches


def max_frame_slots(max_pixels: int, cfg: VisionConfig, max_aspect_ratio: float = 200) -> int:
    """The most buffer slots one image frame can span after the HF Qwen2-VL resize rule.

    The processor (`smart_resize`, inputs of aspect ratio <= `max_aspect_ratio`) yields a grid
    of H x W merged tokens (a token is px = `patch_size * spatial_merge_size` pixels a side),
    H <= W, H * W <= T = max_pixels / px^2. For input sides a <= b (b <= r a, r the ratio):

    * kept size: H = round(a / px), W = round(b / px), so W <= r (H + 1/2) + 1/2;
    * shrunk by beta > 1: with x = a / (beta px), H = floor(x) and W <= T / x, where
      x >= sqrt(T / r) because b <= r a. (Enlarging to min_pixels gives W <= r H.)

    The frame's slots are its windows, ceil(H / ws) * ceil(W / ws) (ws = `window_tokens`),
    times `window_patches`; the bound is the largest over every H of its longest admissible
    W. Edge windows are padded to full size, so an elongated frame spans more slots than a
    square one of the same area: at the real models' 112-px windows and max_pixels
    12,845,056, a square 3,584-px map spans 65,536 slots and the bound is 87,360 (H = 9,
    W = 1,820 tokens, e.g. a 265 x 50,960 px input). A multiple of `window_patches`.
    """
    token_px = cfg.patch_size * cfg.spatial_merge_size
    tokens = int(max_pixels) // (token_px * token_px)
    if tokens < 1:
        raise ValueError(f"max_pixels={max_pixels} is smaller than one {token_px}x{token_px} "
                         "merged token")
    ws, x_min = cfg.window_tokens, math.sqrt(tokens / max_aspect_ratio)
    most = 0
    for h in range(1, math.isqrt(tokens) + 1):
        w = min(tokens // h, math.floor(max_aspect_ratio * (h + 0.5) + 0.5))  # kept size
        if x_min < h + 1:  # shrunk: x in [max(h, x_min), h + 1) (h = 1 also takes x < 1)
            w = max(w, math.floor(tokens / max(h if h > 1 else 0, x_min) + 1e-9))
        if w >= h:
            most = max(most, -(-h // ws) * -(-w // ws))
    return most * cfg.window_patches


def bucket_patches(n_windows: int, cfg: VisionConfig, min_windows: int = 1) -> int:
    """Slots for `n_windows` windows rounded up to a power-of-two window count (few buckets)."""
    n = max(n_windows, min_windows, 1)
    return int(2 ** int(np.ceil(np.log2(n)))) * cfg.window_patches


def _check_grid(grid_thw: np.ndarray, cfg: VisionConfig) -> np.ndarray:
    g = np.asarray(grid_thw)
    if g.ndim != 2 or g.shape[1] != 3:
        raise ValueError(f"grid_thw must have shape (num_items, 3), got {g.shape}")
    m = cfg.spatial_merge_size
    bad = [tuple(int(v) for v in row) for row in g if row.min() < 1 or row[1] % m or row[2] % m]
    if bad:
        raise ValueError(f"grid_thw rows {bad}: need t,h,w >= 1 and h, w divisible by {m}")
    return g.astype(np.int64)


def layout(grid_thw: np.ndarray, cfg: VisionConfig, num_patches: int | None = None):
    """Slot layout for items with patch grids `grid_thw` (num_items, 3).

    Returns (src_row (P,) int64: row of `pixel_values` in each slot or -1, valid, segment_ids,
    rope_pos, token_index (P // merge_unit,)). P = num_patches (a multiple of window_patches) or
    the default bucket.
    """
    g = _check_grid(grid_thw, cfg)
    m, ws, wp, mu = cfg.spatial_merge_size, cfg.window_tokens, cfg.window_patches, cfg.merge_unit
    nw = num_windows(g, cfg)
    p = bucket_patches(nw, cfg) if num_patches is None else int(num_patches)
    if p % wp or p < nw * wp:
        raise ValueError(
            f"num_patches={p} must be a multiple of {wp} (patches per window) and >= {nw * wp} "
            f"({nw} windows for grids {g.tolist()})"
        )
    src = np.full((p,), -1, np.int64)
    seg = np.full((p,), -1, np.int32)
    pos = np.zeros((p, 2), np.int32)
    tok = np.zeros((p // mu,), np.int32)
    k = np.arange(mu)
    kh, kw = k // m, k % m
    win = row0 = frame = ntok = 0
    for t, h, w in g:
        lh, lw = h // m, w // m
        # merged-slot index of each raster token of this item
        tok_slot = np.zeros((t, lh, lw), np.int64)
        for ti in range(t):
            for r0 in range(0, lh, ws):
                for c0 in range(0, lw, ws):
                    rr, cc = np.meshgrid(np.arange(r0, min(r0 + ws, lh)),
                                         np.arange(c0, min(c0 + ws, lw)), indexing="ij")
                    rr, cc = rr.ravel(), cc.ravel()
                    n = rr.size
                    base = win * wp
                    slots = base + np.arange(n * mu)
                    raster = ti * lh * lw + rr * lw + cc  # merged token index within the item
                    src[slots] = (row0 + raster[:, None] * mu + k[None, :]).ravel()
                    seg[slots] = frame
                    pos[slots, 0] = (rr[:, None] * m + kh[None, :]).ravel()
                    pos[slots, 1] = (cc[:, None] * m + kw[None, :]).ravel()
                    tok_slot[ti, rr, cc] = base // mu + np.arange(n)
                    win += 1
            frame += 1
        n_item = t * lh * lw
        tok[ntok:ntok + n_item] = tok_slot.ravel()
        ntok += n_item
        row0 += t * h * w
    return src, src >= 0, seg, pos, tok


def pack_vision_inputs(
    pixel_values: np.ndarray,
    grid_thw: np.ndarray,
    cfg: VisionConfig,
    num_patches: int | None = None,
) -> VisionInputs:
    """Packs HF-layout `pixel_values` (sum t*h*w, patch_dim) for items `grid_thw` (n, 3).

    Items must be listed in the order their vision pad tokens appear in the flattened (row-major)
    batch of input ids. Returns numpy `VisionInputs` with P = num_patches slots (default: the
    power-of-two window bucket, see `bucket_patches`).
    """
    pv = np.asarray(pixel_values)
    g = _check_grid(grid_thw, cfg)
    rows = int(np.sum(np.prod(g, axis=1)))
    if pv.ndim != 2 or pv.shape != (rows, cfg.patch_dim):
        raise ValueError(
            f"pixel_values shape {pv.shape} does not match grids {g.tolist()}: expected "
            f"({rows}, {cfg.patch_dim})"
        )
    src, valid, seg, pos, tok = layout(g, cfg, num_patches)
    pixels = np.where(valid[:, None], pv[np.maximum(src, 0)], 0).astype(pv.dtype)
    return VisionInputs(pixels=pixels, valid=valid, segment_ids=seg, rope_pos=pos,
                        token_index=tok)


def num_vision_tokens(grid_thw: np.ndarray, cfg: VisionConfig) -> int:
    """Number of LLM tokens (vision pads) the items produce: sum t*h*w / merge^2."""
    g = _check_grid(grid_thw, cfg)
    return int(np.sum(np.prod(g, axis=1)) // cfg.merge_unit)
