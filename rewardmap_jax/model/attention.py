"""Masked attention that is memory-linear in the key length.

Queries are processed in chunks of `chunk` (a `lax.map` over chunks, the body under
`jax.checkpoint`), so neither the forward nor the backward pass ever holds more than
(B, heads, chunk, S) logits: no (S, S) array exists for long prompts or 16k-patch images.
Each chunk calls `jax.nn.dot_product_attention` (implementation "xla" or "cudnn").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mask(q_seg, kv_seg, q_pos, kv_pos):
    """(B, 1, T, S) bool: same segment, key segment >= 0, and key pos <= query pos if causal."""
    m = (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg >= 0)[:, None, :]
    if q_pos is not None:
        m = m & (kv_pos[:, None, :] <= q_pos[:, :, None])
    return m[:, None]


def _attend_dense(q, k, v, q_seg, kv_seg, q_pos, kv_pos, impl):
    mask = _mask(q_seg, kv_seg, q_pos, kv_pos)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
    q_pos: jax.Array | None = None,
    kv_pos: jax.Array | None = None,
    *,
    impl: str = "xla",
    chunk: int = 512,
) -> jax.Array:
    """Segment-masked (optionally causal) attention, scale head_dim^-0.5, fp32 softmax.

    Args:
      q: (B, T, N, H); k, v: (B, S, K, H) with N % K == 0 (GQA handled natively).
      q_seg: (B, T) int32; kv_seg: (B, S) int32. A query attends to keys of its own segment;
        keys with a negative segment id are never attended (padding). A query with no visible
        key gets a finite, meaningless output (callers ignore those rows).
      q_pos, kv_pos: (B, T), (B, S) int32 slot indices; if given, keys with kv_pos > q_pos are
        masked (causal).
      impl: "xla" or "cudnn" (`jax.nn.dot_product_attention` implementation; cudnn falls back
        to xla for fp32 inputs).
      chunk: query-chunk length.
    Returns:
      (B, T, N, H) in q.dtype.
    """
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        impl = "xla"  # cuDNN flash attention has no fp32 kernel (fp32 runs are parity runs)
    b, t = q.shape[:2]
    if t <= chunk:
        return _attend_dense(q, k, v, q_seg, kv_seg, q_pos, kv_pos, impl)
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    causal = q_pos is not None

    def split(x, fill):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        x = x.reshape(b, n_chunks, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    qs = split(q, 0)
    segs = split(q_seg, -2)
    poss = split(q_pos, 0) if causal else jnp.zeros((n_chunks,), jnp.int32)

    @jax.checkpoint
    def body(args):
        qc, sc, pc = args
        return _attend_dense(qc, k, v, sc, kv_seg, pc if causal else None, kv_pos, impl)

    out = jax.lax.map(body, (qs, segs, poss))  # (n_chunks, B, chunk, N, H)
    out = jnp.moveaxis(out, 0, 1).reshape(b, n_chunks * chunk, *q.shape[2:])
    return out[:, :t]
