"""Record -> chat prompt token ids (official RL prompt), SFT targets, and length-bucket padding.

The official prompt ([RW:verl/utils/rl_dataset.py], rewardmap.md §8): a system turn "You are a
helpful assistant." and a user turn "<image>\\n{question}", i.e. the image item followed by the
text "\\n" + question, rendered with the Qwen2-VL chat template plus the generation prompt. The
single `<|image_pad|>` is then expanded to t*h*w / merge^2 copies (HF `replace_image_token`).
Expansion is done on ids (the pad is an atomic special token), which equals expanding the text and
re-tokenizing but avoids tokenizing tens of thousands of placeholders for real maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rewardmap_jax.data.chat_template import DEFAULT_SYSTEM_PROMPT
from rewardmap_jax.data.image_processing import num_image_tokens
from rewardmap_jax.data.tokenizer import SpecialTokenIds
from rewardmap_jax.mapworld.records import Record

TRUNCATION_MODES = ("error", "left")


class PromptTooLongError(ValueError):
    """A prompt does not fit the largest length bucket (or truncation would cut image tokens)."""


def build_messages(record: Record, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """Chat messages of the official RL prompt: system, then user = [image, "\\n" + question]."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "\n" + record.question}],
        },
    ]


def render_prompt(
    tokenizer: Any, record: Record, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> str:
    """The prompt text (one `<|image_pad|>` per image, generation prompt appended)."""
    return tokenizer.apply_chat_template(
        build_messages(record, system_prompt), tokenize=False, add_generation_prompt=True
    )


def expand_image_pads(ids: Sequence[int], image_pad_id: int, counts: Sequence[int]) -> np.ndarray:
    """Replaces the i-th `image_pad_id` in `ids` by `counts[i]` copies; returns int32 ids.

    Raises ValueError if the number of placeholders differs from the number of images.
    """
    ids = np.asarray(ids, dtype=np.int32)
    where = np.flatnonzero(ids == image_pad_id)
    if len(where) != len(counts):
        raise ValueError(f"prompt has {len(where)} image placeholders but {len(counts)} images")
    repeats = np.ones(len(ids), dtype=np.int64)
    repeats[where] = np.asarray(counts, dtype=np.int64)
    return np.repeat(ids, repeats)


def encode_prompt(
    tokenizer: Any,
    record: Record,
    grid_thw: np.ndarray | Sequence[int],
    special: SpecialTokenIds,
    merge_size: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> np.ndarray:
    """Prompt ids (int32, unpadded) with the image placeholder expanded for `grid_thw`."""
    text = render_prompt(tokenizer, record, system_prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return expand_image_pads(ids, special.image_pad, [num_image_tokens(grid_thw, merge_size)])


def target_text(record: Record) -> str:
    """Supervised warm-start target: the first reference plan in the record's template format
    for planning, `\\boxed{yes|no|A..D|n}` for the VQA types (mapworld `answer_text`)."""
    from rewardmap_jax.mapworld.questions import answer_text

    return answer_text(record)


def encode_target(tokenizer: Any, record: Record, special: SpecialTokenIds) -> np.ndarray:
    """Target ids (int32): the answer text followed by `<|im_end|>` (the stop token)."""
    ids = tokenizer(target_text(record), add_special_tokens=False)["input_ids"]
    return np.asarray([*ids, special.eos], dtype=np.int32)


def fit_prompt(
    ids: np.ndarray, max_len: int, special: SpecialTokenIds, mode: str = "error", uid: str = "?"
) -> np.ndarray:
    """Returns `ids` if it fits `max_len`; else truncates on the left (`mode="left"`) or raises.

    Truncation never cuts vision tokens: if the dropped prefix holds any, PromptTooLongError.
    """
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"unknown truncation mode {mode!r}; expected {TRUNCATION_MODES}")
    if len(ids) <= max_len:
        return ids
    n_vision = int(np.isin(ids, special.vision).sum())
    if mode == "error":
        raise PromptTooLongError(
            f"record {uid}: prompt has {len(ids)} tokens ({n_vision} image/vision tokens), above "
            f"the largest prompt bucket {max_len}; raise data.prompt_buckets or lower "
            "data.max_pixels"
        )
    dropped = ids[: len(ids) - max_len]
    if np.isin(dropped, special.vision).any():
        raise PromptTooLongError(
            f"record {uid}: truncating the {len(ids)}-token prompt to {max_len} would cut image "
            f"tokens ({n_vision} in the prompt); raise data.prompt_buckets or lower "
            "data.max_pixels"
        )
    return ids[len(ids) - max_len :]


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length; ValueError if none is large enough."""
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}")


def _pad(
    seqs: Sequence[np.ndarray], length: int, pad_id: int, left: bool
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=np.int32)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than {length}")
        cols = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, cols] = s
        mask[i, cols] = 1
    return ids, mask


def left_pad(
    seqs: Sequence[np.ndarray], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads int sequences to `length`: (ids (B, length) int32, mask (B, length) int32)."""
    return _pad(seqs, length, pad_id, left=True)


def right_pad(
    seqs: Sequence[np.ndarray], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads int sequences to `length`: (ids (B, length) int32, mask (B, length) int32)."""
    return _pad(seqs, length, pad_id, left=False)
