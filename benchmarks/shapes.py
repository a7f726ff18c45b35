"""Shared by the benchmarks: update-step batches (concrete or shape-only) and model FLOPs.

Imports only the model and JAX (no ml_collections, no grain), so `benchmarks/accelerator.py`
runs on a machine that has neither.

A batch is the `rl.steps` SeqBatch (B prompts, each with one image of `side` x `side` patches
in its own window buffer, stacked (B, P_1, ...), N = B * reps completion rows):

| key | shape | dtype |
| --- | --- | --- |
| prompt_ids, prompt_mask | (B, L) | int32, bool |
| positions | (3, B, L) | int32 |
| rope_deltas, vis_offsets | (B,) | int32 |
| vision.pixels | (B, P_1, 1176) | float32 |
| vision.valid, vision.segment_ids | (B, P_1) | bool, int32 |
| vision.rope_pos, vision.token_index | (B, P_1, 2), (B, P_1 / 4) | int32 |
| completion, completion_mask | (N, T) | int32, bool |
| old_logps, ref_logps | (N, T) | float32 |
| advantages | (N,) | float32 |
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from rewardmap_jax.model import rope_index, vision_layout
from rewardmap_jax.model.config import ModelConfig, TextConfig, VisionConfig

PROMPT_AXIS = {"positions": 1}  # every other key has its prompt / row axis first
ROW_KEYS = ("completion", "completion_mask", "old_logps", "ref_logps", "advantages")


def one_prompt(cfg: ModelConfig, side: int, prompt_len: int, seed: int = 0):
    """(ids (1, L) int32, positions (3, 1, L), rope_deltas (1,), grid (1, 3)): text, an image of
    side x side patches, text; exactly `prompt_len` tokens."""
    rs = np.random.RandomState(seed)
    grid = np.array([[1, side, side]])
    n_img = vision_layout.num_vision_tokens(grid, cfg.vision)
    n_text = prompt_len - n_img - 2
    if n_text < 2:
        raise ValueError(f"prompt_len {prompt_len} too short for {n_img} image tokens + text")
    text = rs.randint(0, min(1000, cfg.image_token_id, cfg.vision_start_token_id), size=n_text)
    head = n_text // 8
    ids = np.concatenate([text[:head], [cfg.vision_start_token_id], [cfg.image_token_id] * n_img,
                          [cfg.vision_end_token_id], text[head:]]).astype(np.int32)[None]
    pos, deltas = rope_index.get_rope_index(ids, cfg, np.ones_like(ids, bool), grid)
    return ids, pos, deltas, grid


def seq_batch(cfg: ModelConfig, prompts: int, reps: int, prompt_len: int, completion_len: int,
              side: int, seed: int = 0, stacked: bool = True) -> dict[str, Any]:
    """Concrete numpy SeqBatch of `prompts` copies of `one_prompt` (random pixels) with `reps`
    random completions each. `stacked=False` packs the images into one buffer instead."""
    rs = np.random.RandomState(seed)
    ids, pos, deltas, grid = one_prompt(cfg, side, prompt_len, seed)
    pv = rs.randn(prompts, side * side, cfg.vision.patch_dim).astype(np.float32)
    if stacked:
        per = [vision_layout.pack_vision_inputs(p, grid, cfg.vision) for p in pv]
        vision = jax.tree.map(lambda *x: np.stack(x), *per)
    else:
        vision = vision_layout.pack_vision_inputs(pv.reshape(-1, pv.shape[-1]),
                                                  np.repeat(grid, prompts, 0), cfg.vision)
    n = prompts * reps
    n_img = vision_layout.num_vision_tokens(grid, cfg.vision)
    return {
        "prompt_ids": np.repeat(ids, prompts, 0), "prompt_mask": np.ones((prompts, prompt_len),
                                                                          bool),
        "positions": np.repeat(pos, prompts, 1), "rope_deltas": np.repeat(deltas, prompts),
        "vision": vision, "vis_offsets": np.arange(prompts, dtype=np.int32) * n_img,
        "completion": rs.randint(0, 1000, size=(n, completion_len)).astype(np.int32),
        "completion_mask": np.ones((n, completion_len), bool),
        "old_logps": np.full((n, completion_len), -7.0, np.float32),
        "ref_logps": np.full((n, completion_len), -7.0, np.float32),
        "advantages": (np.linspace(-1.0, 1.0, n) if n > 1 else np.ones(1)).astype(np.float32),
    }


def abstract_batch(cfg: ModelConfig, prompts: int, reps: int, prompt_len: int,
                   completion_len: int, side: int, sharding_fn=None) -> dict[str, Any]:
    """`seq_batch`'s shapes and dtypes as `jax.ShapeDtypeStruct`s (nothing allocated, any size).

    sharding_fn(key, shape) -> Sharding | None places each leaf (`key` is the top-level key;
    vision leaves pass "vision")."""
    p1 = vision_layout.required_patches(np.array([[1, side, side]]), cfg.vision)
    n, b, t, length = prompts * reps, prompts, completion_len, prompt_len
    vis = vision_layout.VisionInputs(
        pixels=((b, p1, cfg.vision.patch_dim), np.float32), valid=((b, p1), bool),
        segment_ids=((b, p1), np.int32), rope_pos=((b, p1, 2), np.int32),
        token_index=((b, p1 // cfg.vision.merge_unit), np.int32))
    spec = {"prompt_ids": ((b, length), np.int32), "prompt_mask": ((b, length), bool),
            "positions": ((3, b, length), np.int32), "rope_deltas": ((b,), np.int32),
            "vision": vis, "vis_offsets": ((b,), np.int32),
            "completion": ((n, t), np.int32), "completion_mask": ((n, t), bool),
            "old_logps": ((n, t), np.float32), "ref_logps": ((n, t), np.float32),
            "advantages": ((n,), np.float32)}

    def leaf(key, sd):
        shape, dtype = sd
        s = sharding_fn(key, shape) if sharding_fn else None
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    is_spec = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)  # noqa
    return {k: jax.tree.map(lambda sd, k=k: leaf(k, sd), v, is_leaf=is_spec)
            for k, v in spec.items()}


def with_depth(cfg: ModelConfig, text_layers: int, windowed: int, full: int) -> ModelConfig:
    """`cfg` with `text_layers` decoder layers and a vision tower of `windowed` window-attention
    blocks followed by `full` full-attention blocks (for per-layer fits)."""
    depth = windowed + full
    return cfg.replace(
        text=dataclasses.replace(cfg.text, num_hidden_layers=text_layers),
        vision=dataclasses.replace(cfg.vision, depth=depth,
                                   fullatt_block_indexes=tuple(range(windowed, depth))))


def forward_flops(cfg: ModelConfig, *, rows: int, new: int, keys: float, head_rows: int,
                  images: int = 0, patches: int = 0) -> float:
    """Model FLOPs of one forward pass (matmuls only, 2 per multiply-add; the standard MFU
    count: no rematerialisation, no masked-out attention).

    rows x new decoder tokens, each attending to `keys` keys on average; `head_rows` tokens
    through the LM head; `images` images of `patches` patches through the vision tower.
    """
    t: TextConfig = cfg.text
    v: VisionConfig = cfg.vision
    d, hd = t.hidden_size, t.head_dim
    kv = t.num_key_value_heads * hd
    layer = d * (t.num_attention_heads * hd) * 2 + 2 * d * kv + 3 * d * t.intermediate_size
    text = 2 * rows * new * (t.num_hidden_layers * layer)
    attn = 2 * 2 * rows * new * keys * t.num_attention_heads * hd * t.num_hidden_layers
    head = 2 * head_rows * d * t.vocab_size
    vis = 0.0
    if images:
        dv = v.hidden_size
        block = 4 * dv * dv + 3 * dv * v.intermediate_size  # qkv + proj, MLP
        n_full = len(v.fullatt_block_indexes)
        per_patch = (2 * (v.patch_dim * dv + v.depth * block)
                     + 2 * 2 * dv * (v.window_patches * (v.depth - n_full) + patches * n_full))
        merger = 2 * (patches // v.merge_unit) * ((dv * v.merge_unit) ** 2
                                                   + dv * v.merge_unit * v.out_hidden_size)
        vis = images * (patches * per_patch + merger)
    return float(text + attn + head + vis)


def learner_forward_flops(cfg: ModelConfig, *, layout: str, prompts: int, g: int,
                          prompt_len: int, completion_len: int, patches: int = 0) -> float:
    """Model FLOPs (`forward_flops`) of one log-prob forward over `prompts` prompt groups of G
    completions in a `model.sequence` layout (the work each layout needs, not the masked-out
    attention its chunks also compute):

    * repeated: G rows of L + T tokens, causal: (L + T) / 2 keys per token on average;
    * shared: one row of L + G T tokens; a prompt token attends within the prompt (L / 2 keys on
      average), a completion token to the prompt and causally to its own completion (L + T / 2).

    One image of `patches` patches per prompt in both (the tower runs once per prompt).
    """
    big_l, t = prompt_len, completion_len
    if layout == "repeated":
        return forward_flops(cfg, rows=prompts * g, new=big_l + t, keys=(big_l + t) / 2,
                             head_rows=prompts * g * t, images=prompts if patches else 0,
                             patches=patches)
    if layout != "shared":
        raise ValueError(f"unknown layout {layout!r}")
    new = big_l + g * t
    keys = (big_l * big_l / 2 + g * t * (big_l + t / 2)) / new
    return forward_flops(cfg, rows=prompts, new=new, keys=keys, head_rows=prompts * g * t,
                         images=prompts if patches else 0, patches=patches)
