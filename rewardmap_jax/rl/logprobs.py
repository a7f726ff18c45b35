"""Per-token log-probs and entropies for RL losses (thin layer over `model/head.py`).

`token_logprobs` is `rewardmap_jax.model.head.token_logprobs` (chunked LM head, rematerialised
chunks, fp32 softmax statistics, optional temperature and entropy); `completion_logprobs` picks the
completion part of `[prompt | completion]` sequences.
"""

from __future__ import annotations

import jax

from rewardmap_jax.model.head import LMHead, token_logprobs

__all__ = ["LMHead", "completion_logprobs", "token_logprobs"]

Array = jax.Array


def completion_logprobs(
    hidden: Array,
    completion_ids: Array,
    prompt_len: int,
    lm_head: LMHead,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Array, Array | None]:
    """Log-probs of the completion tokens of `[prompt | completion]` sequences.

    Args:
      hidden: `(B, P + T, D)` hidden states of the full sequence (prompt left-padded to the
        static length P, then the T completion tokens).
      completion_ids: `(B, T)` int; hidden position `P - 1 + t` predicts `completion_ids[:, t]`.
      prompt_len: P (static).
    Returns:
      logps `(B, T)` fp32 and entropy `(B, T)` fp32 (or None); mask them with the completion mask.
    """
    t = completion_ids.shape[1]
    if hidden.shape[1] != prompt_len + t:
        raise ValueError(
            f"hidden length {hidden.shape[1]} != prompt_len {prompt_len} + completion length {t}"
        )
    h = jax.lax.slice_in_dim(hidden, prompt_len - 1, prompt_len - 1 + t, axis=1)
    return token_logprobs(
        h,
        completion_ids,
        lm_head,
        chunk_size=chunk_size,
        temperature=temperature,
        with_entropy=with_entropy,
    )
