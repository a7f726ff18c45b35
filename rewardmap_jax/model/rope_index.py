"""3-D M-RoPE position ids (host numpy), transformers 4.x `get_rope_index` rules as trained.

Spec §3.4. Per row, over tokens with attention_mask == 1: text runs count up from (max so far)+1;
a vision item (t, h, w) placed after text start s gets (s + t_idx * second_per_grid_t *
tokens_per_second, s + row, s + col) on the merged grid; the next text resumes at max + 1.
Pad slots hold 1 (4.x fill). rope_delta = max + 1 - padded_row_length (4.x convention); decode
slot j then gets position j + rope_delta on all three axes (`decode_positions`).

Video temporal steps multiply in float (4.49 / 5.x); 4.50-4.57 truncated `second_per_grid_t` to
an int first (spec §3.4), which only differs for non-integer seconds per grid.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rewardmap_jax.model.config import ModelConfig


def _grid_list(grid, name):
    if grid is None:
        return np.zeros((0, 3), np.int64)
    g = np.asarray(grid, np.int64)
    if g.ndim != 2 or g.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {g.shape}")
    return g


def check_vision_tokens(input_ids, cfg: ModelConfig, image_grid_thw=None, video_grid_thw=None):
    """Raises ValueError unless the pad-token counts equal the grids' token counts."""
    ids = np.asarray(input_ids)
    mu = cfg.vision.merge_unit
    for tok, grid, name in ((cfg.image_token_id, image_grid_thw, "image"),
                            (cfg.video_token_id, video_grid_thw, "video")):
        g = _grid_list(grid, f"{name}_grid_thw")
        want = int(np.sum(np.prod(g, axis=1)) // mu)
        have = int(np.sum(ids == tok))
        if have != want:
            raise ValueError(
                f"{have} {name} pad tokens (id {tok}) in input_ids but the {name} grids "
                f"{g.tolist()} give {want} tokens"
            )


def _next_start(parts: list[np.ndarray]) -> int:
    """(max position so far) + 1, or 0 at the start of a row."""
    return int(parts[-1].max()) + 1 if parts else 0


def get_rope_index(
    input_ids: np.ndarray,
    cfg: ModelConfig,
    attention_mask: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions for a left-padded batch.

    Args:
      input_ids: (B, L) int. attention_mask: (B, L) 0/1 or bool (None = all ones).
      image_grid_thw / video_grid_thw: (n, 3) patch grids of all items in the batch, in order.
      second_per_grid_ts: (n_videos,) seconds per temporal grid step (default 1.0 each).
    Returns:
      positions (3, B, L) int32 and rope_deltas (B,) int32.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {ids.shape}")
    b, n = ids.shape
    mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask, bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    img = _grid_list(image_grid_thw, "image_grid_thw")
    vid = _grid_list(video_grid_thw, "video_grid_thw")
    if len(img) == 0 and len(vid) == 0:
        pos = np.cumsum(mask, axis=-1) - 1
        pos = np.where(mask, pos, 1)
        deltas = pos.max(axis=-1) + 1 - n
        return np.broadcast_to(pos, (3, b, n)).astype(np.int32), deltas.astype(np.int32)
    check_vision_tokens(ids, cfg, img if len(img) else None, vid if len(vid) else None)
    sec = np.ones(len(vid)) if second_per_grid_ts is None else np.asarray(second_per_grid_ts, float)
    if sec.shape != (len(vid),):
        raise ValueError(f"second_per_grid_ts has shape {sec.shape}, expected ({len(vid)},)")
    m, tps = cfg.vision.spatial_merge_size, cfg.vision.tokens_per_second
    positions = np.ones((3, b, n), np.int64)
    deltas = np.zeros((b,), np.int64)
    ii = vi = 0
    for r in range(b):
        toks = ids[r][mask[r]]
        parts: list[np.ndarray] = []
        st = 0
        while True:
            starts = np.flatnonzero(toks[st:] == cfg.vision_start_token_id)
            if len(starts) == 0 or st + starts[0] + 1 >= len(toks):
                break
            ed = st + int(starts[0]) + 1  # first token of the item
            kind = toks[ed]
            if kind == cfg.image_token_id:
                if ii >= len(img):
                    raise ValueError(f"row {r}: more images in input_ids than image grids")
                (t, h, w), spg = img[ii], 0.0
                ii += 1
            elif kind == cfg.video_token_id:
                if vi >= len(vid):
                    raise ValueError(f"row {r}: more videos in input_ids than video grids")
                (t, h, w), spg = vid[vi], sec[vi]
                vi += 1
            else:  # a vision_start not followed by a pad token: plain text
                text = np.arange(ed - st) + _next_start(parts)
                parts.append(np.broadcast_to(text, (3, text.size)))
                st = ed
                continue
            lh, lw = int(h) // m, int(w) // m
            s0 = _next_start(parts)
            text = np.arange(ed - st) + s0
            parts.append(np.broadcast_to(text, (3, text.size)))
            s = s0 + (ed - st)
            ti = np.floor(np.arange(t) * spg * tps).astype(np.int64)
            tt = np.repeat(ti, lh * lw)
            hh = np.tile(np.repeat(np.arange(lh), lw), t)
            ww = np.tile(np.arange(lw), t * lh)
            parts.append(np.stack([tt, hh, ww]) + s)
            st = ed + int(t) * lh * lw
        if st < len(toks):
            text = np.arange(len(toks) - st) + _next_start(parts)
            parts.append(np.broadcast_to(text, (3, text.size)))
        llm = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)
        positions[:, r, mask[r]] = llm
        deltas[r] = (llm.max() + 1 if llm.size else 0) - n
    return positions.astype(np.int32), deltas.astype(np.int32)


def decode_positions(index, rope_deltas, length: int = 1):
    """Positions of `length` new tokens written at slots [index, index + length).

    index: () int (cache write index = padded length so far); rope_deltas: (B,) int.
    Returns (3, B, length) int32 (jnp; usable inside jit).
    """
    slots = jnp.asarray(index, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
    pos = slots[None, :] + jnp.asarray(rope_deltas, jnp.int32)[:, None]
    return jnp.broadcast_to(pos[None], (3, *pos.shape))
