"""A 16k-patch image compiles to a vision tower without any N x N buffer (XLA memory analysis)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from rewardmap_jax.model import vision_layout
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import abstract_model


def test_16k_patch_tower_temp_memory_is_linear():
    cfg = get_preset("tiny", attn_chunk=512)
    side = 128
    n = side * side
    graphdef, state = nnx.split(abstract_model(cfg))
    vi = vision_layout.pack_vision_inputs(
        np.zeros((n, cfg.vision.patch_dim), np.float32), np.array([[1, side, side]]), cfg.vision)
    vi = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), vi)
    fwd = jax.jit(lambda s, v: nnx.merge(graphdef, s).visual(v))
    temp = fwd.lower(state, vi).compile().memory_analysis().temp_size_in_bytes
    one_head_nxn = n * n * 4
    # measured 288 MiB (chunk 512); one dense head alone would be 1 GiB, all heads 4 GiB
    assert temp < one_head_nxn / 2, temp
