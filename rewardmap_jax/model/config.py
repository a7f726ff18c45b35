"""Qwen2.5-VL model configuration: frozen (hashable, jit-static) dataclasses and presets.

`from_hf_config` reads a Hugging Face `config.json` dict in either the transformers 4.x flat layout
(text fields at the top level, `rope_scaling`, `rope_theta`) or the 5.x nested layout
(`text_config` with `rope_parameters`); `to_hf_config` writes the 5.x nested layout, which both
4.57 and 5.x parse (docs/model.md, "HF interop").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

RematPolicy = Literal["none", "full", "dots"]
AttnImpl = Literal["xla", "cudnn"]
_DTYPES = ("float32", "bfloat16", "float16")
_REMAT = ("none", "full", "dots")
_ATTN = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower (`visual.*`). Widths in channels, `window_size` in pixels."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 2048
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    in_channels: int = 3
    tokens_per_second: int = 2
    rope_theta: float = 10000.0
    # HF hard-codes 1e-6 for every vision norm (spec §1.6), independent of the text eps.
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per patch row of `pixel_values`: C * T * P * P (1176 for the real models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_tokens(self) -> int:
        """Side of an attention window in merged tokens (4 for the real models)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def window_patches(self) -> int:
        """Patch slots per (padded) window: window_tokens^2 * merge^2 (64 for the real models)."""
        return self.window_tokens**2 * self.merge_unit

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} / num_heads {self.num_heads} must give a "
                "head_dim divisible by 4 (2-D rotary embedding)"
            )
        if self.window_tokens < 1:
            raise ValueError(f"vision window_size {self.window_size} is smaller than one token")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} outside [0, depth={self.depth})")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder with M-RoPE (`model.language_model.*`)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text hidden_size {self.hidden_size} not divisible by heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"sum(mrope_section)={sum(self.mrope_section)} must equal head_dim/2="
                f"{self.head_dim // 2}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Top-level Qwen2.5-VL config plus the JAX execution policy.

    Execution policy (not part of the HF config):
      param_dtype / compute_dtype: "float32" | "bfloat16". Params are stored in param_dtype and
        cast to compute_dtype at use; RMSNorm statistics, softmax and vision RoPE run in fp32.
      remat: "none" | "full" | "dots" (`jax.checkpoint` per vision block and decoder layer).
      attn_impl: "xla" (CPU/TPU/any) | "cudnn" (GPU flash kernel) for full and LM attention.
      attn_chunk: query-chunk length of full/LM attention; memory is O(chunk * keys), never
        O(keys^2) (the chunk body is rematerialised in the backward pass too).
      vision_frame_span: 0, or a bound on the buffer slots one image frame spans (a multiple of
        `vision.window_patches`). With a bound, the vision full-attention blocks of a packed
        buffer of many images read only each query chunk's `attn_chunk + 2 * span` neighbouring
        keys instead of all of them (work sum(P) * that, not sum(P)^2); `rl.rollout.
        prepare_prompts` refuses a batch with a larger frame. Same result either way.
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    tie_word_embeddings: bool = True
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: RematPolicy = "none"
    attn_impl: AttnImpl = "xla"
    attn_chunk: int = 512
    vision_frame_span: int = 0

    def __post_init__(self) -> None:
        self.vision.validate()
        self.text.validate()
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size "
                f"{self.text.hidden_size}"
            )
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {_DTYPES}")
        if self.remat not in _REMAT:
            raise ValueError(f"remat={self.remat!r}; choose one of {_REMAT}")
        if self.attn_impl not in _ATTN:
            raise ValueError(f"attn_impl={self.attn_impl!r}; choose one of {_ATTN}")
        if self.attn_chunk < 1:
            raise ValueError(f"attn_chunk must be positive, got {self.attn_chunk}")
        span, wp = self.vision_frame_span, self.vision.window_patches
        if span < 0 or span % wp:
            raise ValueError(f"vision_frame_span={span} must be 0 or a positive multiple of "
                             f"vision.window_patches ({wp})")

    @property
    def dtype(self) -> jnp.dtype:
        """Compute (activation) dtype."""
        return jnp.dtype(self.compute_dtype)

    @property
    def pdtype(self) -> jnp.dtype:
        """Parameter storage dtype."""
        return jnp.dtype(self.param_dtype)

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_REAL_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    window_size=112,
    fullatt_block_indexes=(7, 15, 23, 31),
    tokens_per_second=2,
)


def tiny() -> ModelConfig:
    """The training preset for the built-in map world (token ids: helpers/tokens.md)."""
    return ModelConfig(
        vision=VisionConfig(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=128,
            window_size=56,
            fullatt_block_indexes=(1,),
        ),
        text=TextConfig(
            vocab_size=1088,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(4, 6, 6),
            max_position_embeddings=32768,
        ),
        tie_word_embeddings=True,
        image_token_id=1036,
        video_token_id=1037,
        vision_start_token_id=1033,
        vision_end_token_id=1034,
        vision_token_id=1035,
        bos_token_id=1024,
        eos_token_id=1026,
        pad_token_id=1024,
    )


def qwen2_5_vl_3b() -> ModelConfig:
    """Qwen/Qwen2.5-VL-3B-Instruct hub config (spec §1.1, §3.1)."""
    return ModelConfig(
        vision=VisionConfig(**_REAL_VISION, out_hidden_size=2048),
        text=TextConfig(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
        ),
        tie_word_embeddings=True,
    )


def qwen2_5_vl_7b() -> ModelConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct hub config (spec §1.1, §3.1)."""
    return ModelConfig(
        vision=VisionConfig(**_REAL_VISION, out_hidden_size=3584),
        text=TextConfig(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        ),
        tie_word_embeddings=False,
    )


PRESETS = {"tiny": tiny, "qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Preset by name; `overrides` replace top-level fields (e.g. compute_dtype="bfloat16")."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]().replace(**overrides)


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json <-> ModelConfig
# ---------------------------------------------------------------------------------------------

_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "max_position_embeddings",
)
_VISION_KEYS = (
    "depth",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "out_hidden_size",
    "patch_size",
    "temporal_patch_size",
    "spatial_merge_size",
    "window_size",
    "in_channels",
    "tokens_per_second",
)
_TOKEN_KEYS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "vision_token_id",
)


def _first_int(v: Any) -> Any:
    return v[0] if isinstance(v, list | tuple) else v


def from_hf_config(hf: dict[str, Any], **policy: Any) -> ModelConfig:
    """ModelConfig from a `config.json` dict (4.x flat or 5.x nested); `policy` sets dtypes etc."""
    if not isinstance(hf, dict):
        raise TypeError(f"expected a config.json dict, got {type(hf).__name__}")
    text_src = dict(hf)  # 4.x flat: text fields live at the top level
    if isinstance(hf.get("text_config"), dict):
        text_src.update(hf["text_config"])
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in text_src]
    if missing or "vision_config" not in hf:
        raise ValueError(
            f"config.json is not a Qwen2.5-VL config: missing {missing or ['vision_config']}"
        )
    text_kw = {k: text_src[k] for k in _TEXT_KEYS if k in text_src}
    text_kw.setdefault("num_key_value_heads", text_kw["num_attention_heads"])
    rope = text_src.get("rope_parameters") or text_src.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text_src.get("rope_theta"))
    if theta is not None:
        text_kw["rope_theta"] = float(theta)
    if "mrope_section" in rope:
        text_kw["mrope_section"] = tuple(int(x) for x in rope["mrope_section"])
    text = TextConfig(**text_kw)

    vsrc = dict(hf["vision_config"])
    # attribute_map aliases (spec §1.1); `in_chans` is ignored by HF and therefore here too.
    if "num_attention_heads" in vsrc and "num_heads" not in vsrc:
        vsrc["num_heads"] = vsrc["num_attention_heads"]
    if "num_hidden_layers" in vsrc and "depth" not in vsrc:
        vsrc["depth"] = vsrc["num_hidden_layers"]
    vis_kw = {k: vsrc[k] for k in _VISION_KEYS if k in vsrc}
    vis_kw["fullatt_block_indexes"] = tuple(vsrc.get("fullatt_block_indexes", (7, 15, 23, 31)))
    vrope = vsrc.get("rope_parameters") or {}
    if "rope_theta" in vrope:
        vis_kw["rope_theta"] = float(vrope["rope_theta"])
    if "tokens_per_second" in vis_kw:
        vis_kw["tokens_per_second"] = int(vis_kw["tokens_per_second"])
    else:
        vis_kw["tokens_per_second"] = 4  # the HF class default when the key is absent
    vision = VisionConfig(**vis_kw)

    tie = hf.get("tie_word_embeddings")
    if tie is None:
        tie = text_src.get("tie_word_embeddings", True)
    top: dict[str, Any] = {"tie_word_embeddings": bool(tie)}
    for k in _TOKEN_KEYS:
        if k in hf and hf[k] is not None:
            top[k] = int(hf[k])
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = _first_int(text_src.get(k, hf.get(k)))
        if v is not None:
            top[k] = int(v)
    if "pad_token_id" not in top and "bos_token_id" in top:
        top["pad_token_id"] = top["bos_token_id"]
    return ModelConfig(vision=vision, text=text, **top, **policy)


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """`config.json` dict (5.x nested layout; loads in transformers 4.57 and 5.x)."""
    t, v = cfg.text, cfg.vision
    text_config = {
        "model_type": "qwen2_5_vl_text",
        **{k: getattr(t, k) for k in _TEXT_KEYS},
        "hidden_act": "silu",
        "rope_parameters": {
            "mrope_section": list(t.mrope_section),
            "rope_theta": t.rope_theta,
            "rope_type": "default",
            "type": "mrope",
        },
        "rope_theta": t.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
        "use_sliding_window": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    vision_config = {
        "model_type": "qwen2_5_vl_vision",
        **{k: getattr(v, k) for k in _VISION_KEYS},
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "hidden_act": "silu",
        "rope_parameters": {"rope_theta": v.rope_theta, "rope_type": "axial"},
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "text_config": text_config,
        "vision_config": vision_config,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        **{k: getattr(cfg, k) for k in _TOKEN_KEYS},
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.param_dtype,
    }
