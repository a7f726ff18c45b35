"""Hugging Face Qwen2.5-VL directory <-> NNX model (safetensors only).

Import streams tensors one at a time into a shape-only model (peak memory ~ model + one tensor),
accepting every key layout in the wild (spec §5): canonical 4.x/5.x saves (`visual.*`, `model.*`,
`lm_head.*`), the 5.x module tree (`model.visual.*`, `model.language_model.*`) and base-model saves
(`visual.*` + `language_model.*`). Export writes the canonical layout with safetensors metadata
`format: pt`, `config.json` and `generation_config.json`, and copies tokenizer/processor files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from rewardmap_jax.model.config import ModelConfig, from_hf_config, to_hf_config
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL

Path = tuple[Any, ...]
# Conversion kinds: "copy", "linear" (weight.T), "patch" (5-D conv weight -> (in, out)).
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
)


def hf_param_map(cfg: ModelConfig) -> dict[str, tuple[Path, str]]:
    """Canonical HF key -> (our nnx state path, conversion kind)."""
    m: dict[str, tuple[Path, str]] = {
        "visual.patch_embed.proj.weight": (("visual", "patch_embed", "kernel"), "patch"),
        "visual.merger.ln_q.weight": (("visual", "merger", "ln_q", "weight"), "copy"),
        "model.embed_tokens.weight": (("language_model", "embed_tokens"), "copy"),
        "model.norm.weight": (("language_model", "norm", "weight"), "copy"),
    }

    def linear(hf: str, ours: Path, bias: bool) -> None:
        m[f"{hf}.weight"] = ((*ours, "kernel"), "linear")
        if bias:
            m[f"{hf}.bias"] = ((*ours, "bias"), "copy")

    for i in (0, 2):
        linear(f"visual.merger.mlp.{i}", ("visual", "merger", f"mlp_{i}"), True)
    for n in range(cfg.vision.depth):
        hp, op = f"visual.blocks.{n}", ("visual", "blocks", n)
        for norm in ("norm1", "norm2"):
            m[f"{hp}.{norm}.weight"] = ((*op, norm, "weight"), "copy")
        linear(f"{hp}.attn.qkv", (*op, "attn", "qkv"), True)
        linear(f"{hp}.attn.proj", (*op, "attn", "proj"), True)
        for p in ("gate_proj", "up_proj", "down_proj"):
            linear(f"{hp}.mlp.{p}", (*op, "mlp", p), True)
    for n in range(cfg.text.num_hidden_layers):
        hp, op = f"model.layers.{n}", ("language_model", "layers", n)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            linear(f"{hp}.self_attn.{p}", (*op, "self_attn", p), p != "o_proj")
        for p in ("gate_proj", "up_proj", "down_proj"):
            linear(f"{hp}.mlp.{p}", (*op, "mlp", p), False)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            m[f"{hp}.{norm}.weight"] = ((*op, norm, "weight"), "copy")
    if not cfg.tie_word_embeddings:
        linear("lm_head", ("lm_head",), False)
    return m


_RENAMES = (
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^language_model\.model\."), "model."),  # some community re-saves
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\."), "model."),
)


def canonical_key(key: str) -> str:
    """Any known layout's key -> the canonical on-disk key (`visual.*`, `model.*`, `lm_head.*`)."""
    for pat, rep in _RENAMES:
        if pat.match(key):
            return pat.sub(rep, key, count=1)
    return key


def _to_ours(x: jax.Array, kind: str) -> jax.Array:
    if kind == "linear":
        return x.T
    if kind == "patch":
        return x.reshape(x.shape[0], -1).T
    return x


def _to_torch_layout(x: np.ndarray, kind: str, cfg: ModelConfig) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "patch":
        v = cfg.vision
        return x.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size,
                           v.patch_size)
    return x


def _safetensor_files(hf_dir: str) -> list[str]:
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"HF model directory not found: {hf_dir}")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    if not files:
        pickles = sorted(f for f in os.listdir(hf_dir) if f.endswith(_PICKLE_SUFFIXES))
        if pickles:
            raise ValueError(
                f"{hf_dir} holds only pickle checkpoints {pickles}; they can execute arbitrary "
                "code and are refused. Convert them to safetensors (e.g. load in transformers and "
                "save_pretrained(safe_serialization=True))."
            )
        raise FileNotFoundError(f"no *.safetensors files in {hf_dir}")
    missing = [f for f in files if not os.path.exists(os.path.join(hf_dir, f))]
    if missing:
        raise FileNotFoundError(f"{hf_dir}: shards named in the index are missing: {missing}")
    return [os.path.join(hf_dir, f) for f in files]


def iter_tensors(hf_dir: str) -> Iterator[tuple[str, str, jax.Array]]:
    """Yields (file key, canonical key, array) one tensor at a time (dtype as stored)."""
    for path in _safetensor_files(hf_dir):
        with safe_open(path, framework="flax") as f:
            for key in f.keys():
                yield key, canonical_key(key), f.get_tensor(key)


def load_hf_config(hf_dir: str, **policy: Any) -> ModelConfig:
    """ModelConfig from `hf_dir/config.json`; `policy` sets param/compute dtype, remat, ..."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in {hf_dir}")
    with open(path) as f:
        return from_hf_config(json.load(f), **policy)


def load_hf(
    hf_dir: str,
    cfg: ModelConfig | None = None,
    *,
    put: Callable[[Path, jax.Array], jax.Array] | None = None,
    **policy: Any,
) -> Qwen2_5_VL:
    """Loads an HF Qwen2.5-VL directory into a new model.

    Args:
      hf_dir: directory with config.json and *.safetensors (sharded or not, any dtype).
      cfg: overrides the directory's config.json (its dtype policy decides the param dtype).
      put: optional hook (our state path, array in param dtype) -> placed array, e.g. a
        `jax.device_put` to a sharding; default keeps the array on the default device.
      policy: ModelConfig fields (param_dtype, compute_dtype, remat, attn_impl, attn_chunk) used
        when cfg is None.
    Raises:
      ValueError listing missing and unexpected keys, or shape mismatches.
    """
    cfg = load_hf_config(hf_dir, **policy) if cfg is None else cfg
    model = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)))
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    mapping = hf_param_map(cfg)
    seen: set[str] = set()
    unexpected, bad_shape = [], []
    for key, ckey, arr in iter_tensors(hf_dir):
        if ckey not in mapping:
            if not (cfg.tie_word_embeddings and ckey == "lm_head.weight"):
                unexpected.append(key)
            continue
        path, kind = mapping[ckey]
        var = flat[path]
        x = _to_ours(arr, kind)
        if x.shape != var.shape:
            bad_shape.append(f"{key}: file {tuple(arr.shape)} -> {tuple(x.shape)}, "
                             f"model expects {tuple(var.shape)}")
            continue
        x = x.astype(cfg.pdtype)
        var.set_value(put(path, x) if put else x)
        seen.add(ckey)
    missing = sorted(set(mapping) - seen)
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"cannot load {hf_dir}:\n  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {sorted(unexpected)}\n"
            f"  shape mismatches ({len(bad_shape)}): {bad_shape}"
        )
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _generation_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }


def save_hf(
    model: Qwen2_5_VL,
    out_dir: str,
    *,
    dtype: str | None = None,
    source_dir: str | None = None,
    max_shard_bytes: int = 4 << 30,
) -> list[str]:
    """Writes `model` as an HF directory that `Qwen2_5_VLForConditionalGeneration` loads.

    Args:
      dtype: on-disk dtype ("float32" | "bfloat16"); default the model's param dtype.
      source_dir: if given, tokenizer/processor files (and generation_config.json) are copied.
      max_shard_bytes: shard size; more than one shard writes model.safetensors.index.json.
    Returns:
      The safetensors file names written. Tied heads write no `lm_head.weight`.
    """
    cfg = model.cfg
    dtype = jnp.dtype(dtype or cfg.param_dtype)
    os.makedirs(out_dir, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    mapping = hf_param_map(cfg)
    # Plan shards from shapes first, then convert and write one shard at a time (host memory:
    # one shard, never a second copy of the model).
    plan: list[list[str]] = [[]]
    size = total = 0
    for key, (path, _) in mapping.items():
        nbytes = int(np.prod(flat[path].shape)) * dtype.itemsize
        if size and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(key)
        size += nbytes
        total += nbytes
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    weight_map = {}
    for name, keys in zip(names, plan, strict=True):
        shard = {}
        for key in keys:
            path, kind = mapping[key]
            x = np.asarray(jax.device_get(flat[path].get_value()))
            shard[key] = jnp.asarray(np.ascontiguousarray(_to_torch_layout(x, kind, cfg)), dtype)
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
        del shard
    if len(names) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_cfg = to_hf_config(cfg)
    hf_cfg["torch_dtype"] = hf_cfg["dtype"] = dtype.name
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(_generation_config(cfg), f, indent=2)
    if source_dir:
        for fname in (*TOKENIZER_FILES, "generation_config.json"):
            src = os.path.join(source_dir, fname)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(out_dir, fname))
    return names
