"""Tokenizer / processor loading: the built-in tiny tokenizer or a real local Qwen2.5-VL directory.

`load_tokenizer("tiny")` returns the committed tiny tokenizer (rewardmap_jax/assets/tiny_tokenizer,
built by scripts/build_tiny_tokenizer.py); `load_tokenizer(dir)` returns transformers' own tokenizer
for a local model directory. Nothing is ever fetched from the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

TINY = "tiny"
TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"
# Qwen2-VL special tokens whose ids every consumer needs (names as in the HF model config).
_SPECIAL_NAMES = {
    "pad": "<|endoftext|>",
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "vision_pad": "<|vision_pad|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
}


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the chat/vision special tokens of one tokenizer (real Qwen or tiny)."""

    pad: int
    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    vision_pad: int
    image_pad: int
    video_pad: int

    @property
    def eos(self) -> int:
        """The generation stop token (`<|im_end|>` for the chat models)."""
        return self.im_end

    @property
    def vision(self) -> tuple[int, ...]:
        """Tokens the sampler must never emit."""
        return (self.vision_start, self.vision_end, self.vision_pad, self.image_pad, self.video_pad)


def resolve_dir(path_or_builtin: str | os.PathLike) -> Path:
    """`"tiny"` -> the built-in asset directory; else an existing local directory."""
    if str(path_or_builtin) == TINY:
        return TINY_TOKENIZER_DIR
    path = Path(path_or_builtin)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} does not exist; pass 'tiny' or a local Hugging "
            "Face model directory (nothing is downloaded)"
        )
    return path


def tokenizer_source(config: Any) -> str:
    """The tokenizer a run uses, the one rule every entry point follows: `data.tokenizer`, else
    the weights' directory `model.hf_dir`, else the built-in `"tiny"`."""
    return str(config.data.get("tokenizer") or config.model.get("hf_dir") or TINY)


def load_tokenizer(path_or_builtin: str | os.PathLike = TINY) -> Any:
    """Returns a transformers tokenizer (`PreTrainedTokenizerBase`), left padding, offline."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_dir(path_or_builtin)), local_files_only=True)
    tok.padding_side = "left"
    if tok.chat_template is None:
        raise ValueError(f"tokenizer at {path_or_builtin!r} has no chat template")
    return tok


def load_processor(path: str | os.PathLike) -> Any:
    """transformers' own `Qwen2_5_VLProcessor` for a real local model directory (PIL backend).

    Used for reference checks and export; the training pipeline uses `image_processing` (numpy).
    transformers 5 builds the processor's video part with torchvision; without it this raises
    and `load_image_processor` still gives the image half.
    """
    from transformers import AutoProcessor

    if str(path) == TINY:
        raise ValueError("the tiny preset has a tokenizer only; use load_tokenizer('tiny')")
    try:
        return AutoProcessor.from_pretrained(
            str(resolve_dir(path)), local_files_only=True, backend="pil"
        )
    except (AttributeError, ImportError) as e:
        raise RuntimeError(
            f"cannot build the Qwen2.5-VL processor for {str(path)!r} ({type(e).__name__}: {e}); "
            "transformers needs torchvision for its video processor. Use load_tokenizer() and "
            "load_image_processor() instead."
        ) from e


def load_image_processor(path: str | os.PathLike) -> Any:
    """transformers' PIL-backend Qwen2-VL image processor from `preprocessor_config.json`."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(
        str(resolve_dir(path)), local_files_only=True, backend="pil"
    )


def special_token_ids(tokenizer: Any) -> SpecialTokenIds:
    """Looks up the special-token ids in `tokenizer`; raises if any is missing."""
    ids = {}
    for field, token in _SPECIAL_NAMES.items():
        idx = tokenizer.convert_tokens_to_ids(token)
        if idx is None or idx == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"tokenizer has no special token {token!r}")
        ids[field] = int(idx)
    if tokenizer.pad_token_id is not None:
        ids["pad"] = int(tokenizer.pad_token_id)
    return SpecialTokenIds(**ids)


def preprocessor_pixel_limits(path_or_builtin: str | os.PathLike) -> dict[str, int] | None:
    """min/max pixels from a model directory's `preprocessor_config.json` (None if absent).

    Handles both layouts: transformers 4.x (`min_pixels`/`max_pixels`) and 5.x
    (`size={"shortest_edge", "longest_edge"}`).
    """
    path = resolve_dir(path_or_builtin) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    size = cfg.get("size") or {}
    lo = cfg.get("min_pixels", size.get("shortest_edge"))
    hi = cfg.get("max_pixels", size.get("longest_edge"))
    if lo is None or hi is None:
        return None
    return {"min_pixels": int(lo), "max_pixels": int(hi)}
