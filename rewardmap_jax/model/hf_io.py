"""Hugging Face Qwen2.5-VL directory <-> NNX model (safetensors only).

Import reads each tensor straight into its shards (`load_hf(..., shardings=...)`: a block per
device, read from the memory-mapped safetensors file; no whole-model copy anywhere), accepting
every key layout in the wild (spec §5): canonical 4.x/5.x saves (`visual.*`, `model.*`,
`lm_head.*`), the 5.x module tree (`model.visual.*`, `model.language_model.*`) and base-model saves
(`visual.*` + `language_model.*`). Export writes the canonical layout with safetensors metadata
`format: pt`, `config.json` and `generation_config.json`, and copies tokenizer/processor files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, NamedTuple

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


def _our_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Shape of a file tensor in our layout (torch `weight` (out, in) -> kernel (in, out))."""
    if kind == "linear":
        return tuple(reversed(shape))
    if kind == "patch":
        return (int(np.prod(shape[1:])), shape[0])
    return tuple(shape)


def _read_ours(sl: Any, kind: str, index: tuple[slice, ...]) -> np.ndarray:
    """`index` (slices of our layout) of a safetensors slice object, read in our layout: only
    the bytes of that block are read (transposed dims are sliced in the file's order)."""
    if kind == "linear":
        return sl[index[1], index[0]].T
    if kind == "patch":  # rows index[1] of the (hidden, C, T, P, P) weight, flattened, then cols
        rows = sl[index[1]]
        return rows.reshape(rows.shape[0], -1)[:, index[0]].T
    return sl[index]


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


class _Entry(NamedTuple):
    path: str  # safetensors file
    key: str  # key in that file
    shape: tuple[int, ...]  # as stored
    dtype: str  # safetensors dtype name as stored ("BF16", "F32", ...)


def checkpoint_index(hf_dir: str) -> tuple[dict[str, _Entry], list[str]]:
    """Canonical key -> where the tensor is, from the safetensors headers only (no tensor data
    is read); and the canonical keys found more than once (e.g. two layouts mixed)."""
    index: dict[str, _Entry] = {}
    dup: list[str] = []
    for path in _safetensor_files(hf_dir):
        with safe_open(path, framework="np") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                ckey = canonical_key(key)
                if ckey in index:
                    dup.append(ckey)
                index[ckey] = _Entry(path, key, tuple(sl.get_shape()), sl.get_dtype())
    return index, dup


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
    shardings: Any = None,
    **policy: Any,
) -> Qwen2_5_VL:
    """Loads an HF Qwen2.5-VL directory into a new model, each tensor streamed into its shards.

    Every key, shape and dtype is checked from the safetensors headers before any tensor data
    is read. Then, one tensor at a time, `jax.make_array_from_callback` asks for the block of
    each addressable shard; the block is read from the memory-mapped file in the torch layout
    (linear weights are transposed, the patch-embed Conv3d flattened, after slicing), cast to
    the param dtype, and placed on its device. No device or host ever holds the whole model or
    another device's shard; host memory peaks at the loaded shards plus one tensor's blocks,
    and on a multi-host mesh each host reads only its own devices' blocks.

    Args:
      hf_dir: directory with config.json and *.safetensors (sharded or not, any dtype).
      cfg: the ModelConfig to build (architecture and execution policy); default: the
        directory's config.json with `policy` (param_dtype, compute_dtype, remat, attn_impl,
        attn_chunk, vision_frame_span).
      shardings: target sharding per parameter: an `nnx.State` (or flat `{path: sharding}`)
        of the model's structure, e.g. `build.param_shardings` / `sharding.state_shardings`
        on the abstract model; default: every parameter on the first local device.
    Raises:
      ValueError listing missing, unexpected and duplicated keys and shape mismatches.
    """
    cfg = load_hf_config(hf_dir, **policy) if cfg is None else cfg
    model = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)))
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    mapping = hf_param_map(cfg)
    index, dup = checkpoint_index(hf_dir)
    unexpected = sorted(e.key for k, e in index.items() if k not in mapping
                        and not (cfg.tie_word_embeddings and k == "lm_head.weight"))
    missing = sorted(set(mapping) - set(index))
    bad_shape = []
    for ckey, (path, kind) in mapping.items():
        if ckey in index and _our_shape(index[ckey].shape, kind) != tuple(flat[path].shape):
            e = index[ckey]
            bad_shape.append(f"{e.key}: file {e.shape} -> {_our_shape(e.shape, kind)}, "
                             f"model expects {tuple(flat[path].shape)}")
    if missing or unexpected or bad_shape or dup:
        raise ValueError(
            f"cannot load {hf_dir}:\n  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(bad_shape)}): {bad_shape}\n"
            f"  keys stored more than once ({len(dup)}): {sorted(dup)}"
        )
    targets = _target_shardings(shardings, flat)
    # File order, so consecutive reads stay within one shard file.
    for ckey in sorted(mapping, key=lambda k: (index[k].path, index[k].key)):
        path, kind = mapping[ckey]
        flat[path].set_value(_load_tensor(index[ckey], kind, tuple(flat[path].shape),
                                          cfg.pdtype, targets[path]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _target_shardings(shardings: Any, flat: dict[Path, Any]) -> dict[Path, jax.sharding.Sharding]:
    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return dict.fromkeys(flat, one)
    items = shardings.items() if isinstance(shardings, dict) else nnx.to_flat_state(shardings)
    out = {tuple(p): (s.get_value() if isinstance(s, nnx.Variable) else s) for p, s in items}
    if set(out) != set(flat):
        raise ValueError(f"shardings do not match the model's parameters: missing "
                         f"{sorted(set(flat) - set(out))[:5]}, "
                         f"extra {sorted(set(out) - set(flat))[:5]}")
    return out


def _load_tensor(entry: _Entry, kind: str, shape: tuple[int, ...], dtype: jnp.dtype,
                 target: jax.sharding.Sharding) -> jax.Array:
    """One checkpoint tensor as a jax Array laid out by `target`; each distinct block is read
    once (replicas of a block reuse it). The file is opened for this tensor only, so its mapped
    pages leave the process with it."""
    blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
    with safe_open(entry.path, framework="np") as f:
        sl = f.get_slice(entry.key)

        def block(idx: tuple[slice, ...]) -> np.ndarray:
            idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
            bounds = tuple(s.indices(n)[:2] for s, n in zip(idx, shape, strict=True))
            if bounds not in blocks:
                sub = tuple(slice(a, b) for a, b in bounds)
                blocks[bounds] = np.ascontiguousarray(_read_ours(sl, kind, sub), dtype=dtype)
            return blocks[bounds]

        return jax.make_array_from_callback(shape, target, block, dtype=dtype)


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
