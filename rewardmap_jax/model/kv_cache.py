"""Preallocated KV cache pytree for the Qwen2 decoder.

All rows of a batch share one write index (prompts are left-padded to a common length), so a
slot index is the same absolute position for every row; `valid` marks slots that hold real tokens
(False for left padding and for slots not written yet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rewardmap_jax.model.config import ModelConfig


@struct.dataclass
class KVCache:
    """k[i], v[i]: (B, S_max, kv_heads, head_dim) for decoder layer i, compute dtype.
    valid: (B, S_max) bool. index: () int32, the next slot to write (= tokens written so far)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
        """Empty cache for `batch` rows and `max_len` slots (prompt + generated tokens)."""
        t = cfg.text
        dtype = cfg.dtype if dtype is None else dtype
        shape = (batch, max_len, t.num_key_value_heads, t.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers))
        return cls(
            k=zeros,
            v=tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times (row-major: r0,r0,..,r1,..): share a prompt prefill across
        G samples of a group."""
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return self.replace(
            k=tuple(map(rep, self.k)), v=tuple(map(rep, self.v)), valid=rep(self.valid)
        )


def write(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buf (B, S_max, ...) with new (B, T, ...) written at slots [index, index + T)."""
    start = (jnp.zeros((), jnp.int32), index.astype(jnp.int32)) + (jnp.zeros((), jnp.int32),) * (
        buf.ndim - 2
    )
    return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), start)
