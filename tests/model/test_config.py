"""Config presets (exact parameter counts), HF config round trips, validation, axis names."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import Qwen2_5_VLConfig

from rewardmap_jax.model import config as C
from rewardmap_jax.model import vision_layout
from rewardmap_jax.model.kv_cache import KVCache
from rewardmap_jax.model.qwen2_5_vl import abstract_model, param_count

# Logical axis names documented in docs/model.md for the sharding rules.
AXIS_NAMES = {"embed", "heads", "kv_heads", "mlp", "vocab", "norm", "vision_patch",
              "vision_embed", "vision_heads", "vision_mlp"}

# Hub config.json of Qwen/Qwen2.5-VL-7B-Instruct (transformers 4.x flat layout; spec §1.1/§3.1).
HUB_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064, "tie_word_embeddings": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
}


@pytest.mark.parametrize("name,total,vision", [
    ("qwen2_5_vl_3b", 3_754_622_976, 668_684_288),
    ("qwen2_5_vl_7b", 8_292_166_656, 676_550_144),
])
def test_preset_parameter_counts_exact(name, total, vision):
    model = abstract_model(C.get_preset(name))
    assert param_count(model) == total
    assert param_count(model.visual) == vision


def test_hub_flat_config_parses_to_7b_preset():
    assert C.from_hf_config(HUB_7B) == C.qwen2_5_vl_7b()


@pytest.mark.parametrize("name", sorted(C.PRESETS))
def test_to_hf_config_round_trips_through_transformers(name):
    cfg = C.get_preset(name)
    hf_dict = C.to_hf_config(cfg)
    assert C.from_hf_config(hf_dict) == cfg
    hf = Qwen2_5_VLConfig(**hf_dict)
    # transformers 5.x serialises the nested layout (text_config.rope_parameters)
    again = C.from_hf_config(hf.to_dict())
    assert again == cfg
    assert hf.text_config.num_key_value_heads == cfg.text.num_key_value_heads
    assert hf.vision_config.fullatt_block_indexes == list(cfg.vision.fullatt_block_indexes)
    assert hf.tie_word_embeddings == cfg.tie_word_embeddings


def test_tiny_preset_uses_shared_token_ids():
    cfg = C.tiny()
    assert cfg.text.vocab_size == 1088 and cfg.tie_word_embeddings
    assert (cfg.image_token_id, cfg.video_token_id) == (1036, 1037)
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == (1033, 1034)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1024, 1026, 1024)
    assert cfg.vision.window_tokens == 2 and cfg.vision.window_patches == 16


@pytest.mark.parametrize("bad,match", [
    (dict(compute_dtype="float64"), "compute_dtype"),
    (dict(remat="some"), "remat"),
    (dict(attn_impl="flash"), "attn_impl"),
])
def test_bad_policy_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        C.tiny().replace(**bad)


def test_bad_shapes_are_rejected():
    t = C.tiny().text
    with pytest.raises(ValueError, match="mrope_section"):
        C.tiny().replace(text=dataclasses.replace(t, mrope_section=(4, 4, 4)))
    with pytest.raises(ValueError, match="out_hidden_size"):
        C.tiny().replace(text=dataclasses.replace(t, hidden_size=256, num_attention_heads=8))
    with pytest.raises(ValueError, match="not a Qwen2.5-VL config"):
        C.from_hf_config({"hidden_size": 8})


def test_every_param_has_logical_axes():
    state = nnx.state(abstract_model(C.tiny()), nnx.Param)
    seen = set()
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata()["out_sharding"]
        assert len(axes) == len(var.shape), path
        seen |= set(axes)
    assert seen == AXIS_NAMES
    # and they resolve to PartitionSpecs under logical-axis rules
    with nnx.logical_axis_rules([(n, None) for n in AXIS_NAMES]):
        specs = nnx.get_partition_spec(state)
    assert all(isinstance(s, jax.sharding.PartitionSpec) for s in jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_real_presets_trace_prefill_with_image_and_cache(name):
    """Shape-only prefill of a real-size model (no allocation): 64-patch windows, head_dim 80."""
    cfg = C.get_preset(name, compute_dtype="bfloat16", param_dtype="bfloat16")
    graphdef, state = nnx.split(abstract_model(cfg))
    grids = np.array([[1, 20, 28]])  # 560 patches, 140 tokens, 3x4 windows of 4x4 tokens
    ids = np.full((2, 160), 5)
    ids[0, 1], ids[0, 2:142], ids[0, 142] = (cfg.vision_start_token_id, cfg.image_token_id,
                                             cfg.vision_end_token_id)
    vi = vision_layout.pack_vision_inputs(np.zeros((560, 1176), np.float32), grids, cfg.vision)
    assert vi.pixels.shape == (16 * 64, 1176)  # 12 windows -> bucket of 16
    cache = jax.eval_shape(lambda: KVCache.init(cfg, 2, 200))
    logits, new = jax.eval_shape(
        lambda s, c: nnx.merge(graphdef, s)(
            jnp.asarray(ids, jnp.int32), jnp.zeros((3, 2, 160), jnp.int32),
            jnp.ones((2, 160), bool), jax.tree.map(jnp.asarray, vi), c),
        state, cache)
    assert logits.shape == (2, 160, cfg.text.vocab_size) and logits.dtype == jnp.float32
    assert new.k[0].shape == (2, cfg.text.num_key_value_heads, 200, 128)
    assert new.k[0].dtype == jnp.bfloat16 and len(new.k) == cfg.text.num_hidden_layers
