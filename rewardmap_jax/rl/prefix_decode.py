"""Group-shared prefix KV cache for Qwen2.5-VL decoding ("cascade" attention).

The G samples of a prompt share its prompt KV cache instead of holding G copies of it: the
prefix cache keeps B rows of L slots, each sample only owns T suffix slots. A decode step of
sample (b, g) attends over prefix row b and its own suffix row with one softmax over both parts,
which equals attention over the concatenated cache. Memory for the prompt part drops from
B*G*L to B*L slots, and every decode step reads each prompt's keys once instead of G times — the
dominant cost for long multimodal prompts (tens of thousands of tokens) and G = 4..8.

This builds the decode step from the decoder's own sub-modules (norms, q/k/v/o projections, MLP,
final norm, LM head) and `text.mrope_cos_sin`, so it follows the model's numerics; the only
re-implemented piece is the attention itself. Tests compare it token for token with
transformers `generate` (tests/rl/test_sampler_qwen.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rewardmap_jax.model.kv_cache import KVCache, write
from rewardmap_jax.model.layers import rotate_half
from rewardmap_jax.model.text import mrope_cos_sin


@struct.dataclass
class SharedCache:
    """prefix: the prompts' KVCache, B rows x L slots (written by the prefill, never again).
    k[i], v[i]: (B*G, T, kv_heads, head_dim) suffix slots of layer i. index: () next suffix slot.
    """

    prefix: KVCache
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    index: jax.Array


def share(model: Any, prefix: KVCache, num_generations: int, max_new: int) -> SharedCache:
    """Decode state for G samples per prompt on top of a filled B-row prefix cache."""
    t = model.cfg.text
    rows = prefix.valid.shape[0] * num_generations
    shape = (rows, max_new, t.num_key_value_heads, t.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, model.cfg.dtype) for _ in range(t.num_hidden_layers))
    return SharedCache(prefix=prefix, k=zeros(), v=zeros(), index=jnp.zeros((), jnp.int32))


def _attend(q, pk, pv, p_valid, sk, sv, s_valid):
    """q (N, N_h, H) one query per row; prefix pk/pv (B, L, K, H), p_valid (B, L); suffix
    sk/sv (N, T, K, H), s_valid (N, T); N = B*G. Returns (N, N_h, H) in q.dtype."""
    n, nh, hd = q.shape
    b, _, nkv, _ = pk.shape
    g, rep = n // b, nh // nkv
    # Query head j uses kv head j // rep (HF repeat_kv / jax.nn.dot_product_attention GQA).
    qg = q.reshape(b, g, nkv, rep, hd)
    scale = jnp.asarray(hd**-0.5, q.dtype)
    s_pre = jnp.einsum("bgkrh,blkh->bgkrl", qg, pk) * scale
    s_pre = jnp.where(p_valid[:, None, None, None, :], s_pre.astype(jnp.float32), -jnp.inf)
    s_suf = jnp.einsum("nkrh,ntkh->nkrt", qg.reshape(n, nkv, rep, hd), sk) * scale
    s_suf = jnp.where(s_valid[:, None, None, :], s_suf.astype(jnp.float32), -jnp.inf)
    s_pre = s_pre.reshape(n, nkv, rep, -1)
    m = jnp.maximum(s_pre.max(-1, keepdims=True), s_suf.max(-1, keepdims=True))
    e_pre, e_suf = jnp.exp(s_pre - m), jnp.exp(s_suf - m)
    denom = e_pre.sum(-1, keepdims=True) + e_suf.sum(-1, keepdims=True)
    p_pre = (e_pre / denom).astype(q.dtype).reshape(b, g, nkv, rep, -1)
    p_suf = (e_suf / denom).astype(q.dtype)
    o = jnp.einsum("bgkrl,blkh->bgkrh", p_pre, pv).reshape(n, nkv, rep, hd)
    o = o + jnp.einsum("nkrt,ntkh->nkrh", p_suf, sv)
    return o.reshape(n, nh, hd)


def decode_step(model: Any, tokens: jax.Array, positions: jax.Array, cache: SharedCache
                ) -> tuple[jax.Array, SharedCache]:
    """tokens (N, 1) int32, positions (3, N, 1) -> (logits (N, V) fp32, cache)."""
    cfg, t = model.cfg, model.cfg.text
    lm = model.language_model
    n = tokens.shape[0]
    x = lm.embed(tokens)  # (N, 1, D)
    cos, sin = mrope_cos_sin(positions, cfg)  # (N, 1, H)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    slot = cache.index
    s_valid = jnp.broadcast_to(jnp.arange(cache.k[0].shape[1]) <= slot, (n, cache.k[0].shape[1]))
    new_k, new_v = [], []
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).reshape(n, 1, t.num_attention_heads, t.head_dim)
        k = attn.k_proj(h).reshape(n, 1, t.num_key_value_heads, t.head_dim)
        v = attn.v_proj(h).reshape(n, 1, t.num_key_value_heads, t.head_dim)
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        sk, sv = write(cache.k[i], k, slot), write(cache.v[i], v, slot)
        o = _attend(q[:, 0], cache.prefix.k[i], cache.prefix.v[i], cache.prefix.valid,
                    sk, sv, s_valid)
        x = x + attn.o_proj(o.reshape(n, 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        new_k.append(sk)
        new_v.append(sv)
    h = lm.norm(x)
    logits = model.logits(h[:, -1])
    return logits, cache.replace(k=tuple(new_k), v=tuple(new_v), index=slot + 1)
