"""A tiny causal decoder with a preallocated KV cache, following the sampler's model contract.

Used by the sampler tests that do not need Qwen2.5-VL itself: one attention layer, positions
enter as an absolute 3-axis sinusoid (so wrong decode positions change the logits), the cache is
`{k, v: (B, S, D), valid: (B, S) bool, index: () int32}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewardmap_jax.rl.sampler import ModelAdapter


class FakeDecoder(nnx.Module):
    def __init__(self, vocab: int, dim: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.q = nnx.Linear(dim, dim, rngs=rngs)
        self.k = nnx.Linear(dim, dim, rngs=rngs)
        self.v = nnx.Linear(dim, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)
        self.freq = nnx.Param(jax.random.uniform(rngs.params(), (3, dim), minval=0.05, maxval=1))
        self.dim = dim

    def init_cache(self, batch: int, max_len: int) -> dict:
        z = jnp.zeros((batch, max_len, self.dim), jnp.float32)
        return {"k": z, "v": z, "valid": jnp.zeros((batch, max_len), bool),
                "index": jnp.zeros((), jnp.int32)}

    def __call__(self, ids, positions, mask, vision=None, cache=None):
        """ids (B,L), positions (3,B,L), mask (B,L) -> logits (B,L,V), cache."""
        del vision
        pe = jnp.sin(jnp.einsum("abl,ad->bld", positions.astype(jnp.float32), self.freq[...]))
        x = self.embed(ids) + pe
        q, k, v = self.q(x), self.k(x), self.v(x)
        length = ids.shape[1]
        if cache is None:
            keys, vals, valid = k, v, mask
            qpos = jnp.arange(length)
        else:
            i = cache["index"]
            keys = jax.lax.dynamic_update_slice_in_dim(cache["k"], k, i, 1)
            vals = jax.lax.dynamic_update_slice_in_dim(cache["v"], v, i, 1)
            valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], mask, i, 1)
            cache = {"k": keys, "v": vals, "valid": valid, "index": i + length}
            qpos = i + jnp.arange(length)
        kpos = jnp.arange(keys.shape[1])
        allowed = (kpos[None, :] <= qpos[:, None])[None] & valid[:, None, :]
        scores = jnp.einsum("bqd,bkd->bqk", q, keys) / jnp.sqrt(self.dim)
        attn = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)
        h = x + jnp.einsum("bqk,bkd->bqd", attn, vals)
        return self.out(h), cache


def _last(out):
    logits, cache = out
    return logits[:, -1], cache


FAKE_ADAPTER = ModelAdapter(
    forward=lambda m, ids, pos, mask, vision, cache: _last(m(ids, pos, mask, vision, cache)),
    init_cache=lambda m, batch, max_len: m.init_cache(batch, max_len),
    vocab_size=lambda m: m.out.out_features,
)
