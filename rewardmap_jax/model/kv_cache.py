"""Preallocated KV cache pytree for the Qwen2 decoder.

All rows of a batch share one write index (prompts are left-padded to a common length), so a
slot index is the same absolute position for every row; `valid` marks slots that hold real tokens
(False for left padding and for slots not written yet).

Keys and values are stored head-major, (rows, kv_heads, slots, head_dim), as transformers' cache
stores them: a decode step's attention is then, per row and kv head, a matrix-vector product over
the slots as they lie (`attention.attend_decode`). Stored slot-major, (rows, slots, kv_heads,
head_dim), every such product needs the whole cache relaid out first, at every step.

`SharedKVCache` is the group-shared variant for sampling G completions per prompt: the prompts'
cache (B rows, written once by the prefill) plus a per-sample cache (B*G rows) whose slots follow
the prompt's. The decoder attends over both with one softmax (`attention.attend_shared_prefix`),
so the prompt's keys are neither copied G times nor read G times per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rewardmap_jax.model.config import ModelConfig

# The slot axis of a key / value buffer (rows, kv_heads, slots, head_dim).
SLOT_AXIS = 2


@struct.dataclass
class KVCache:
    """k[i], v[i]: (B, kv_heads, S_max, head_dim) for decoder layer i, compute dtype (head-major).
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
        shape = (batch, t.num_key_value_heads, max_len, t.head_dim)
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

    def take(self, rows: jax.Array | None, slots: int) -> KVCache:
        """Rows `rows` (R,) int32 (None: all, in place) and the first `slots` slots: a compacted
        decode state. The write index is kept, so it must stay < `slots` for the next write."""
        def f(x):
            x = x if rows is None else jnp.take(x, rows, axis=0)
            return jax.lax.slice_in_dim(x, 0, slots, axis=_slot_axis(x))

        return self.replace(k=tuple(map(f, self.k)), v=tuple(map(f, self.v)), valid=f(self.valid))

    def put(self, sub: KVCache, rows: jax.Array | None) -> KVCache:
        """Writes `take(rows, slots)`'s (updated) result back: rows `rows`, slots [0, slots)."""
        n = sub.valid.shape[1]

        def f(x, y):
            y = y.astype(x.dtype)
            if rows is None:
                return jax.lax.dynamic_update_slice(x, y, (0,) * x.ndim)
            return x.at[(rows, *(slice(None),) * (_slot_axis(x) - 1), slice(0, n))].set(y)

        return self.replace(k=tuple(map(f, self.k, sub.k)), v=tuple(map(f, self.v, sub.v)),
                            valid=f(self.valid, sub.valid), index=sub.index)

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times (row-major: r0,r0,..,r1,..): share a prompt prefill across
        G samples of a group."""
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return self.replace(
            k=tuple(map(rep, self.k)), v=tuple(map(rep, self.v)), valid=rep(self.valid)
        )


@struct.dataclass
class SharedKVCache:
    """A B-row prompt cache shared by G samples per prompt, plus B*G rows of per-sample slots.

    prefix: `KVCache` with B rows and P slots (the prompts; read-only once shared).
    suffix: `KVCache` with B*G rows (row b * G + g = sample g of prompt b) and S slots. Suffix
      slot j is absolute slot P + j: every valid prefix slot precedes it, so a query attends to
      all of its prompt plus its own suffix slots <= itself, exactly as in a B*G-row cache of
      P + S slots holding G copies of each prompt (`prefix.repeat(G)` followed by the suffix).
    The model takes it wherever it takes a `KVCache`; inputs then have B*G rows.
    """

    prefix: KVCache
    suffix: KVCache

    @classmethod
    def share(cls, prefix: KVCache, num_generations: int, max_len: int) -> SharedKVCache:
        """Empty per-sample slots (`max_len` each, prefix dtype) for G samples per prefix row."""
        if num_generations < 1 or max_len < 1:
            raise ValueError(
                f"SharedKVCache.share: num_generations {num_generations} and max_len {max_len} "
                "must be >= 1"
            )
        rows = prefix.valid.shape[0] * num_generations
        _, heads, _, head_dim = prefix.k[0].shape
        shape = (rows, heads, max_len, head_dim)
        zeros = lambda: tuple(jnp.zeros(shape, x.dtype) for x in prefix.k)
        suffix = KVCache(k=zeros(), v=zeros(), valid=jnp.zeros((rows, max_len), bool),
                         index=jnp.zeros((), jnp.int32))
        return cls(prefix=prefix, suffix=suffix)

    @property
    def num_generations(self) -> int:
        return self.suffix.valid.shape[0] // self.prefix.valid.shape[0]

    @property
    def index(self) -> jax.Array:
        """() int32 next absolute slot (prefix slots + suffix slots written)."""
        return self.prefix.max_len + self.suffix.index

    def take(self, prompts: jax.Array | None, slots: int) -> SharedKVCache:
        """The prompts `prompts` (R,) int32 with their G samples each (rows p * G + g; None: all,
        the prefix then stays as it is), the first `slots` per-sample slots: a compacted decode
        state (`KVCache.take`)."""
        if prompts is None:
            return self.replace(suffix=self.suffix.take(None, slots))
        return SharedKVCache(prefix=self.prefix.take(prompts, self.prefix.max_len),
                             suffix=self.suffix.take(self._rows(prompts), slots))

    def put(self, sub: SharedKVCache, prompts: jax.Array | None) -> SharedKVCache:
        """Writes `take(prompts, slots)`'s per-sample slots back (the prefix is read-only)."""
        rows = None if prompts is None else self._rows(prompts)
        return self.replace(suffix=self.suffix.put(sub.suffix, rows))

    def _rows(self, prompts: jax.Array) -> jax.Array:
        g = self.num_generations
        return (prompts[:, None] * g + jnp.arange(g, dtype=prompts.dtype)).reshape(-1)

    def unshare(self) -> KVCache:
        """The equivalent plain cache: B*G rows, P + S slots (prefix repeated G times)."""
        rep = self.prefix.repeat(self.num_generations)
        cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=_slot_axis(a))  # noqa: E731
        return KVCache(k=tuple(map(cat, rep.k, self.suffix.k)),
                       v=tuple(map(cat, rep.v, self.suffix.v)),
                       valid=cat(rep.valid, self.suffix.valid), index=self.index)


def write(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buf (B, S_max, ...) with new (B, T, ...) written at slots [index, index + T)."""
    return _write_at(buf, new, index, 1)


def write_kv(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buf (B, K, S_max, H) head-major with new (B, T, K, H) (as projected) written at slots
    [index, index + T)."""
    return _write_at(buf, jnp.swapaxes(new, 1, 2), index, SLOT_AXIS)


def slot_major(x: jax.Array) -> jax.Array:
    """A head-major cache buffer (B, K, S, H) as (B, S, K, H), the layout `attention.attend`
    takes (a copy: the multi-token calls, e.g. the prefill, read it once per call)."""
    return jnp.swapaxes(x, 1, 2)


def _slot_axis(x: jax.Array) -> int:
    """The slot axis of a cache leaf: keys / values (rows, kv_heads, slots, head_dim) or
    `valid` (rows, slots)."""
    return SLOT_AXIS if x.ndim == 4 else 1


def _write_at(buf: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    zero = jnp.zeros((), jnp.int32)
    start = tuple(index.astype(jnp.int32) if d == axis else zero for d in range(buf.ndim))
    return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), start)
