"""Benchmark inputs shared by the rollout benchmarks: models and map-like prompt batches.

Uses only the sampler API that has not changed since the first benchmarked version
(`PromptBatch`, `pick_bucket`), so `benchmarks/decode_step.py` can import it against an older
checkout of the package (`--baseline`).
"""

from __future__ import annotations

import argparse

import numpy as np

from rewardmap_jax.model import config as model_config
from rewardmap_jax.model import rope_index
from rewardmap_jax.model.vision_layout import pack_vision_inputs
from rewardmap_jax.rl import sampler

GRID = (1, 6, 6)  # an 84x84 tiny map: 6x6 patches -> 9 image tokens
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


def model_cfg(name: str) -> model_config.ModelConfig:
    """`tiny` (hidden 128, 2 layers, vocab 1088) or `tiny-wide` (benchmarks/memory.py's model:
    hidden 768, 4 layers, head_dim 128, GQA 6/2, vocab 8192, vision hidden 192, depth 4)."""
    if name == "tiny":
        return model_config.tiny()
    if name == "tiny-wide":
        from benchmarks import memory
        wide = argparse.Namespace(hidden=768, vocab=8192, vision_hidden=192, vision_depth=4,
                                  dtype="float32", attn_chunk=512)
        return memory.tiny_wide(wide, layers=4, remat="none")
    raise ValueError(f"unknown model {name!r} (tiny, tiny-wide)")


def build_prompts(cfg, n: int, seed: int, buckets: tuple[int, ...] = BUCKETS, extra: int = 0):
    """n left-padded prompts (text, one 6x6-patch image, text): ids, mask (int64), grids, pixels."""
    rs = np.random.RandomState(seed)
    ntok = int(np.prod(GRID)) // cfg.vision.merge_unit
    seqs = []
    for i in range(n):
        head = list(rs.randint(0, 1024, size=12 + 3 * i + extra))
        tail = list(rs.randint(0, 1024, size=20))
        seqs.append([cfg.bos_token_id, *head, cfg.vision_start_token_id,
                     *[cfg.image_token_id] * ntok, cfg.vision_end_token_id, *tail])
    length = sampler.pick_bucket(max(map(len, seqs)), buckets)
    ids = np.full((n, length), cfg.pad_token_id, np.int64)
    mask = np.zeros((n, length), np.int64)
    for r, s in enumerate(seqs):
        ids[r, length - len(s):] = s
        mask[r, length - len(s):] = 1
    grids = np.array([GRID] * n)
    pv = rs.randn(int(np.prod(grids, 1).sum()), cfg.vision.patch_dim).astype(np.float32)
    return ids, mask, grids, pv


def prompt_batch(cfg, ids, mask, grids, pv) -> sampler.PromptBatch:
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, grids)
    return sampler.PromptBatch(ids.astype(np.int32), mask.astype(bool), pos, deltas,
                               pack_vision_inputs(pv, grids, cfg.vision))


