"""A toy decoder-only NNX transformer with logical axis names, for RL/sharding tests.

Same conventions as the real model (rewardmap_jax/model): params carry `out_sharding` logical
names (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`, `norm`), the forward returns final hidden
states, and the LM head is separate (`lm_head(h)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _p(rngs: nnx.Rngs, shape, axes, scale: float = 0.2, ones: bool = False) -> nnx.Param:
    v = jnp.ones(shape) if ones else scale * jax.random.normal(rngs.params(), shape)
    return nnx.Param(v, out_sharding=axes, eager_sharding=False)


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, kv: int, hd: int, mlp: int, rngs: nnx.Rngs):
        self.heads, self.kv, self.hd = heads, kv, hd
        self.norm = _p(rngs, (d,), ("norm",), ones=True)
        self.q = _p(rngs, (d, heads * hd), ("embed", "heads"))
        self.k = _p(rngs, (d, kv * hd), ("embed", "kv_heads"))
        self.v = _p(rngs, (d, kv * hd), ("embed", "kv_heads"))
        self.o = _p(rngs, (heads * hd, d), ("heads", "embed"))
        self.up = _p(rngs, (d, mlp), ("embed", "mlp"))
        self.down = _p(rngs, (mlp, d), ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        h = x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6) * self.norm[...]
        q = (h @ self.q[...]).reshape(b, n, self.heads, self.hd)
        k = (h @ self.k[...]).reshape(b, n, self.kv, self.hd)
        v = (h @ self.v[...]).reshape(b, n, self.kv, self.hd)
        rep = self.heads // self.kv
        k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.hd).astype(x.dtype)
        s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -1e9)
        a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(b, n, -1)
        x = x + a @ self.o[...]
        return x + jax.nn.gelu(x @ self.up[...]) @ self.down[...]


class ToyLM(nnx.Module):
    """Embedding -> blocks -> final norm; `lm_head` maps hidden (.., D) to logits (.., V)."""

    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 4, kv: int = 2, hd: int = 4,
                 mlp: int = 32, layers: int = 2, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.embed = _p(rngs, (vocab, d), ("vocab", "embed"), scale=1.0)
        self.blocks = nnx.List([Block(d, heads, kv, hd, mlp, rngs) for _ in range(layers)])
        self.final_norm = _p(rngs, (d,), ("norm",), ones=True)
        self.head = _p(rngs, (d, vocab), ("embed", "vocab"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed[...][ids]
        for blk in self.blocks:
            x = blk(x)
        return x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6) * self.final_norm[...]

    def lm_head(self, h: jax.Array) -> jax.Array:
        return h @ self.head[...]
