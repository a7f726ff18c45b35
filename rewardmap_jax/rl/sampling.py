"""Next-token distribution transforms: forbidden tokens, temperature, top-k, top-p, draw.

Pure functions over logits, usable inside jit. The sampling parameters are traced scalars (not
static), so changing temperature / top-p / top-k never recompiles. Order follows transformers'
`generate` warpers: forbidden-token mask, then temperature, then top-k, then top-p.

Conventions:
* `temperature == 0` means greedy (argmax); the sampling distribution is then a point mass, so
  its log-prob is 0.
* `top_k <= 0` and `top_p >= 1` switch the corresponding truncation off.
* Ties at a truncation threshold are all kept (top-k may keep more than k tokens when logits tie
  exactly), which keeps the transform a pure threshold on logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -jnp.inf


def forbidden_mask(vocab_size: int, token_ids: tuple[int, ...]) -> jax.Array:
    """(V,) bool mask, True at `token_ids` (ids outside [0, V) raise)."""
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"forbidden token ids {bad} are outside the vocabulary [0, {vocab_size})")
    mask = jnp.zeros((vocab_size,), bool)
    if token_ids:
        mask = mask.at[jnp.asarray(token_ids, jnp.int32)].set(True)
    return mask


def mask_forbidden(logits: jax.Array, forbidden: jax.Array) -> jax.Array:
    """logits (..., V) float; forbidden (V,) bool -> logits with forbidden entries at -inf."""
    return jnp.where(forbidden, NEG_INF, logits)


def _truncate(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-k then top-p on (B, V) fp32 logits via one descending sort; masked entries -> -inf."""
    vocab = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    # Top-k: threshold is the k-th largest logit (k clipped to [1, V]; k <= 0 means off).
    k = jnp.clip(top_k, 1, vocab)
    kth = jnp.take_along_axis(sorted_desc, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None],
                              axis=-1)
    thr_k = jnp.where(top_k > 0, kth, NEG_INF)
    sorted_k = jnp.where(sorted_desc >= thr_k, sorted_desc, NEG_INF)
    # Top-p: keep the smallest prefix of the sorted distribution whose mass reaches p, i.e. every
    # token whose exclusive cumulative probability is below p (the first token is always kept).
    probs = jax.nn.softmax(sorted_k, axis=-1)
    exclusive = jnp.cumsum(probs, axis=-1) - probs
    keep = (exclusive < top_p) & (sorted_k > NEG_INF)
    keep = keep.at[..., 0].set(True)
    n_keep = jnp.sum(keep, axis=-1, keepdims=True)
    thr_p = jnp.take_along_axis(sorted_k, n_keep - 1, axis=-1)
    thr = jnp.maximum(thr_k, jnp.where(top_p < 1.0, thr_p, NEG_INF))
    return jnp.where(logits >= thr, logits, NEG_INF)


def sampling_logits(
    logits: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int,
    top_p: jax.Array | float,
    forbidden: jax.Array | None = None,
) -> jax.Array:
    """Logits of the sampling distribution.

    Args:
      logits: (B, V) raw policy logits (any float dtype; computed in fp32).
      temperature: scalar; 0 means greedy (the result is then the masked logits, unscaled).
      top_k: scalar int; <= 0 is off.
      top_p: scalar float in (0, 1]; >= 1 is off.
      forbidden: optional (V,) bool, True = never sample.
    Returns:
      (B, V) fp32 logits, -inf outside the support.
    """
    x = logits.astype(jnp.float32)
    if forbidden is not None:
        x = mask_forbidden(x, forbidden)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)
    x = x / jnp.where(temperature > 0, temperature, 1.0)
    # The full-vocabulary sort is skipped at run time when no truncation is requested.
    active = (top_k > 0) | (top_p < 1.0)
    return lax.cond(active, _truncate, lambda z, *_: z, x, top_k, top_p)


def sample_tokens(
    key: jax.Array,
    logits: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int,
    top_p: jax.Array | float,
    forbidden: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row.

    Args:
      key: PRNG key.
      logits: (B, V) raw policy logits.
      temperature, top_k, top_p, forbidden: see `sampling_logits`.
    Returns:
      tokens (B,) int32; logp_sample (B,) fp32, log-prob of the token under the sampling
      distribution (0 for greedy); logp_policy (B,) fp32, log-prob under the raw policy
      (temperature 1, no truncation, no forbidden mask) — what a teacher-forced forward gives.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    warped = sampling_logits(logits, temperature, top_k, top_p, forbidden)
    drawn = jax.random.categorical(key, warped, axis=-1)
    greedy = jnp.argmax(warped, axis=-1)
    is_greedy = temperature <= 0
    tokens = jnp.where(is_greedy, greedy, drawn).astype(jnp.int32)
    logp_s = jnp.take_along_axis(jax.nn.log_softmax(warped, axis=-1), tokens[:, None], -1)[:, 0]
    logp_s = jnp.where(is_greedy, 0.0, logp_s)
    raw = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp_p = jnp.take_along_axis(raw, tokens[:, None], -1)[:, 0]
    return tokens, logp_s, logp_p
