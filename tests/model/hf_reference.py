"""Tiny random-weight transformers Qwen2.5-VL references (spec §6) and input builders."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

IMG, VID, VS, VE = 250, 251, 252, 253
PATCH_DIM = 3 * 2 * 14 * 14


def hf_config(tie: bool, window_size: int = 56, fullatt=(1, 3)) -> Qwen2_5_VLConfig:
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            max_position_embeddings=512, rope_theta=1e6,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=0, eos_token_id=1, pad_token_id=0,
        ),
        vision_config=dict(
            depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            window_size=window_size, fullatt_block_indexes=list(fullatt), tokens_per_second=2,
        ),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=tie,
    )
    cfg._attn_implementation = "eager"
    return cfg


def hf_model(tie: bool, seed: int = 0, **kw) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(tie, **kw)).eval()
    # Random (not unit) norm weights and biases so that a swapped/missed tensor shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def pixels(grids: np.ndarray, seed: int = 0) -> np.ndarray:
    n = int(np.prod(grids, axis=1).sum())
    return np.random.RandomState(seed).randn(n, PATCH_DIM).astype(np.float32)


def left_padded_batch(grids: np.ndarray, rows: list[list[int]], seed: int = 0):
    """rows[r] lists the image indices placed in row r (text between them).

    Returns input_ids (B, L) int64 and attention_mask (B, L) int64, left padded with id 0."""
    rs = np.random.RandomState(seed)
    ntok = (np.prod(grids, axis=1) // 4).tolist()
    seqs = []
    for r, items in enumerate(rows):
        seq = list(rs.randint(2, 240, size=2 + r))
        for i in items:
            seq += [VS] + [IMG] * ntok[i] + [VE] + list(rs.randint(2, 240, size=3))
        seqs.append(seq)
    n = max(map(len, seqs))
    ids = np.zeros((len(seqs), n), np.int64)
    mask = np.zeros((len(seqs), n), np.int64)
    for r, s in enumerate(seqs):
        ids[r, n - len(s):] = s
        mask[r, n - len(s):] = 1
    return ids, mask


def hf_logits(model, ids, mask, pv, grids, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grids),
            position_ids=torch.tensor(np.asarray(positions, np.int64)),
        )
    return out.logits.float().numpy()


def hf_vision(model, pv, grids) -> np.ndarray:
    with torch.no_grad():
        out = model.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grids))
    return out.pooler_output.numpy()
