"""Next-token distribution transforms and the draw: forbidden tokens, temperature, top-k, top-p.

Pure functions over logits, usable inside jit. The sampling parameters are traced scalars, so
changing temperature / top-p / top-k values never recompiles; only the *class* of the setting is
static (`SamplingClass`: greedy, plain sampling, or sampling with truncation), so the greedy and
plain-temperature programs contain no vocabulary sort at all. Order follows transformers'
`generate` warpers: forbidden-token mask, then temperature, then top-k, then top-p.

Conventions:
* `temperature == 0` means greedy (argmax, first index on ties); the sampling distribution is then
  a point mass, so its log-prob is 0.
* `top_k <= 0` and `top_p >= 1` switch the corresponding truncation off.
* Ties at a truncation threshold are all kept (top-k may keep more than k tokens when logits tie
  exactly), which keeps the transform a pure threshold on logits.

The draw is an inverse-CDF draw from ONE uniform number per row (`draw`): the caller owns the
random stream (the sampler derives each row's uniforms from the key, the row id and the step, so
a row's tokens do not depend on its slot in the batch). It needs no per-vocabulary-entry random
bits and no per-entry logarithms (a Gumbel-max draw needs V random numbers and 2V logs per row),
only the exponentials the softmax needs anyway and two short prefix sums: the vocabulary is cut
into blocks of ~sqrt(V) entries, the block is found from the block masses, then the entry within
it. A token of zero probability (forbidden, truncated) is never returned, whatever the rounding.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingClass:
    """The static part of a sampling setting: what the compiled program contains.

    greedy: argmax, no random numbers, no temperature (temperature == 0).
    truncate: top-k / top-p thresholds are applied (one descending vocabulary sort per step);
      their values stay traced. Meaningless (False) when greedy: truncation keeps the argmax.
    """

    greedy: bool = False
    truncate: bool = True

    @classmethod
    def of(cls, temperature: float, top_k: int, top_p: float) -> SamplingClass:
        """The class of concrete (host) settings."""
        greedy = temperature <= 0
        return cls(greedy=greedy, truncate=not greedy and (top_k > 0 or top_p < 1.0))


def forbidden_mask(vocab_size: int, token_ids: tuple[int, ...]) -> np.ndarray:
    """(V,) bool mask, True at `token_ids` (ids outside [0, V) raise). Built on the host (numpy):
    no device dispatch per call."""
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"forbidden token ids {bad} are outside the vocabulary [0, {vocab_size})")
    mask = np.zeros((vocab_size,), bool)
    mask[list(token_ids)] = True
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
    *,
    truncate: bool | None = None,
) -> jax.Array:
    """Logits of the sampling distribution.

    Args:
      logits: (B, V) raw policy logits (any float dtype; computed in fp32).
      temperature: scalar; 0 means greedy (the result is then the masked logits, unscaled).
      top_k: scalar int; <= 0 is off.
      top_p: scalar float in (0, 1]; >= 1 is off.
      forbidden: optional (V,) bool, True = never sample.
      truncate: static: True applies top-k / top-p (sorting the vocabulary), False skips them
        (the caller knows both are off); None decides at run time (`lax.cond`).
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
    if truncate is None:
        active = (top_k > 0) | (top_p < 1.0)
        return lax.cond(active, _truncate, lambda z, *_: z, x, top_k, top_p)
    return _truncate(x, top_k, top_p) if truncate else x


def argmax_first(x: jax.Array) -> jax.Array:
    """(B, V) -> (B,) int32 index of the first maximum (`jnp.argmax` semantics for finite
    inputs) as two plain reductions: XLA:CPU runs a (value, index) pair reduction unvectorised."""
    vocab = x.shape[-1]
    top = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(x == top, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(idx, vocab - 1)  # all-NaN rows: a valid index, not V


def _pick(cum: jax.Array, mass: jax.Array, target: jax.Array) -> jax.Array:
    """Index i of the first cum[i] > target (cum (B, K) inclusive prefix sums of mass (B, K) >= 0,
    target (B,)), moved to the nearest entry of positive mass at or after it (else the last
    positive one) so that rounding can never select a zero-mass entry."""
    k = cum.shape[-1]
    idx = jnp.arange(k, dtype=jnp.int32)
    cand = jnp.sum(cum <= target[:, None], axis=-1, dtype=jnp.int32)
    positive = mass > 0
    after = jnp.min(jnp.where(positive & (idx >= cand[:, None]), idx, k), axis=-1)
    last = jnp.max(jnp.where(positive, idx, 0), axis=-1)
    return jnp.where(after < k, after, last)


def inverse_cdf(uniform: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Draws from softmax(x) with one uniform per row.

    Args:
      uniform: (B,) fp32 in [0, 1).
      x: (B, V) fp32 logits, -inf outside the support (at least one finite entry per row).
    Returns:
      tokens (B,) int32 and their log-probs (B,) fp32 under softmax(x).
    """
    rows, vocab = x.shape
    block = 1 << max(0, math.ceil(math.log2(math.sqrt(vocab))))
    blocks = -(-vocab // block)
    top = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - top)  # exactly 0 outside the support
    e = jnp.pad(e, ((0, 0), (0, blocks * block - vocab))).reshape(rows, blocks, block)
    mass = jnp.sum(e, axis=-1)  # (B, blocks)
    cum = jnp.cumsum(mass, axis=-1)
    total = cum[:, -1]
    target = uniform * total
    b = _pick(cum, mass, target)
    before = jnp.take_along_axis(cum - mass, b[:, None], axis=-1)[:, 0]
    inner = jnp.take_along_axis(e, b[:, None, None], axis=1)[:, 0]  # (B, block)
    j = _pick(jnp.cumsum(inner, axis=-1), inner, target - before)
    tokens = b * block + j
    logp = jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0] - top[:, 0] - jnp.log(total)
    return tokens, logp


def policy_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """(B, V) raw logits, (B,) tokens -> (B,) fp32 log-prob under the raw policy (temperature 1,
    no truncation, no forbidden mask): what a teacher-forced forward gives."""
    raw = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(raw, axis=-1)
    return jnp.take_along_axis(raw, tokens[:, None], axis=-1)[:, 0] - lse


def draw(
    uniform: jax.Array | None,
    logits: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int,
    top_p: jax.Array | float,
    forbidden: jax.Array | None,
    cls: SamplingClass,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row.

    Args:
      uniform: (B,) fp32 in [0, 1), one per row (unused, may be None, when `cls.greedy`).
      logits: (B, V) raw policy logits.
      temperature, top_k, top_p, forbidden: see `sampling_logits` (temperature > 0 unless greedy).
      cls: the static class of the setting.
    Returns:
      tokens (B,) int32; logp_sample (B,) fp32, log-prob of the token under the sampling
      distribution (0 for greedy); logp_policy (B,) fp32 (`policy_logprob`).
    """
    if cls.greedy:
        x = logits.astype(jnp.float32)
        tokens = argmax_first(x if forbidden is None else mask_forbidden(x, forbidden))
        logp_s = jnp.zeros(tokens.shape, jnp.float32)
    else:
        warped = sampling_logits(logits, temperature, top_k, top_p, forbidden,
                                 truncate=cls.truncate)
        tokens, logp_s = inverse_cdf(uniform, warped)
    return tokens, logp_s, policy_logprob(logits, tokens)


def sample_tokens(
    key: jax.Array,
    logits: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int,
    top_p: jax.Array | float,
    forbidden: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`draw` for traced settings of any class (greedy where temperature <= 0, truncation decided
    at run time), one uniform per row from `key`. Same outputs as `draw`."""
    temperature = jnp.asarray(temperature, jnp.float32)
    u = jax.random.uniform(key, logits.shape[:1], jnp.float32)
    warped = sampling_logits(logits, temperature, top_k, top_p, forbidden)
    drawn, logp_drawn = inverse_cdf(u, warped)
    greedy = argmax_first(warped)  # the max survives truncation and temperature
    is_greedy = temperature <= 0
    tokens = jnp.where(is_greedy, greedy, drawn)
    logp_s = jnp.where(is_greedy, 0.0, logp_drawn)
    return tokens, logp_s, policy_logprob(logits, tokens)
