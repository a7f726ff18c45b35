"""Supervised cross-entropy on answer tokens only (the warm start and the SFT baselines).

Shares `grpo.aggregate_parts` so SFT and GRPO normalise the same way, including the exact
micro-batch form (`denom` = the global denominator).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rewardmap_jax.rl import grpo
from rewardmap_jax.rl.logprobs import LMHead, token_logprobs

Array = jax.Array


def sft_loss(
    logps: Array,
    loss_mask: Array,
    *,
    loss_agg: str = "token-mean",
    norm_len: int = 0,
    denom: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Negative log-likelihood of the masked (answer) tokens.

    Args:
      logps: `(B, T)` fp32 log-prob of each target token.
      loss_mask: `(B, T)` 1 on answer tokens (not prompt, image or padding tokens).
      loss_agg: a `grpo.AGGREGATORS` name; denom: global denominator for micro-batches.
    Returns:
      scalar fp32 loss and metrics `nll` (token-mean, whatever `loss_agg`), `ppl`, `tokens`.
    """
    if logps.shape != loss_mask.shape:
        raise ValueError(f"logps {logps.shape} and loss_mask {loss_mask.shape} must match")
    nll = -logps.astype(jnp.float32)
    loss = grpo.aggregate(nll, loss_mask, loss_agg, norm_len, denom)
    m = loss_mask.astype(jnp.float32)
    tok_nll = (nll * m).sum() / jnp.maximum(m.sum(), 1.0)
    return loss, {"loss": loss, "nll": tok_nll, "ppl": jnp.exp(tok_nll), "tokens": m.sum()}


def sft_loss_from_hidden(
    hidden: Array,
    input_ids: Array,
    loss_mask: Array,
    lm_head: LMHead,
    *,
    loss_agg: str = "token-mean",
    norm_len: int = 0,
    chunk_size: int = 256,
    denom: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Next-token SFT loss of a packed `[prompt | answer]` sequence.

    Args:
      hidden: `(B, L, D)` final hidden states of `input_ids` `(B, L)`.
      loss_mask: `(B, L)` 1 where `input_ids[:, t]` is an answer token to be learned; position
        `t - 1` predicts it (position 0 is never a target).
    Returns:
      as `sft_loss`.
    """
    logps, _ = token_logprobs(
        hidden[:, :-1], input_ids[:, 1:], lm_head, chunk_size=chunk_size, with_entropy=False
    )
    return sft_loss(logps, loss_mask[:, 1:], loss_agg=loss_agg, norm_len=norm_len, denom=denom)
