"""Per-token log-probs and entropies from hidden states, with the LM head applied in chunks.

The one implementation shared by the model (`Qwen2_5_VL.token_logprobs`) and the RL code
(`rl/logprobs.py`). The head is applied to `chunk_size` positions at a time inside a `lax.scan`
whose body is rematerialised, so neither the forward nor the backward pass holds `(B, L, V)` fp32
logits: only one `(B, chunk, V)` block is live (Qwen2.5-VL's vocab is 151,936; B * L * V fp32
would be tens of GB at RL lengths). Softmax statistics are computed in fp32 whatever the head's
dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
LMHead = Callable[[Array], Array]  # (B, C, D) -> (B, C, V)


def token_logprobs(
    hidden: Array,
    targets: Array,
    lm_head: LMHead,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[Array, Array | None]:
    """Log-prob of `targets` under softmax(lm_head(hidden) / temperature), per position.

    Args:
      hidden: `(B, L, D)` hidden states; position `t` predicts `targets[:, t]`.
      targets: `(B, L)` int token ids.
      lm_head: pure function `(B, C, D) -> (B, C, V)` logits (any float dtype). It may close
        over parameters (an `nnx.Linear`, a weight matrix); gradients flow to them.
      chunk_size: positions per LM-head call (static); L is padded up to a multiple.
      temperature: logits are divided by it (the sampler's temperature, so logps match it).
      with_entropy: also return the per-position entropy of the tempered distribution.
    Returns:
      logps `(B, L)` fp32 and entropy `(B, L)` fp32 (or None).
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be (B, L, D) and targets (B, L); got {hidden.shape}, {targets.shape}"
        )
    if chunk_size <= 0 or temperature <= 0:
        raise ValueError(f"chunk_size and temperature must be > 0, got {chunk_size}, {temperature}")
    b, length, d = hidden.shape
    c = min(chunk_size, length)
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n_chunks, c, d).swapaxes(0, 1)  # (n, B, C, D)
    ts = targets.reshape(b, n_chunks, c).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(h: Array, t: Array) -> tuple[Array, Array]:
        logits = lm_head(h)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0]
        lp = tgt - lse
        if with_entropy:
            ent = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        else:
            ent = jnp.zeros_like(lp)
        return lp, ent

    def body(carry: None, xs: tuple[Array, Array]) -> tuple[None, tuple[Array, Array]]:
        return carry, chunk(*xs)

    _, (lps, ents) = jax.lax.scan(body, None, (hs, ts))
    lps = lps.swapaxes(0, 1).reshape(b, -1)[:, :length]
    ents = ents.swapaxes(0, 1).reshape(b, -1)[:, :length]
    return lps, (ents if with_entropy else None)
