"""Qwen2 decoder with M-RoPE, GQA (q/k/v bias), SwiGLU, optional KV cache (HF parity, spec §3).

The cache is a `KVCache` (one row per sequence) or a `SharedKVCache` (B prompt rows shared by
B*G sample rows; attention over both parts under one softmax). Either way each layer sees an
`_AttnContext`: the masking inputs shared by all layers, plus the shared prefix when there is one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rewardmap_jax.model import kv_cache as kvc
from rewardmap_jax.model.attention import (
    attend,
    attend_decode,
    attend_prompt_groups,
    attend_shared_prefix,
)
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.layers import (
    RESIDUAL_AXES,
    Linear,
    RMSNorm,
    constrain,
    param,
    remat_layer,
    rotate_half,
)


class _AttnContext(NamedTuple):
    """Per-call masking inputs (the same for every layer).

    kv_seg (B', S) int32 (-1 = never attended), q_pos (B', T), kv_pos (B', S) slot indices,
    index () the write slot of this call's keys; prefix_valid (B, P) bool when the cache is a
    `SharedKVCache` (B' = B*G rows attend over a shared B-row prefix), else None.
    prompt_len > 0: rows are `[prompt | c_1 | ... | c_G]` with q_seg 0 on the prompt and
    g + 1 on completion g, kv_seg the same but -1 on padding (`attention.attend_prompt_groups`;
    no cache).
    """

    kv_seg: jax.Array
    q_pos: jax.Array
    kv_pos: jax.Array
    index: jax.Array
    prefix_valid: jax.Array | None = None
    prompt_len: int = 0
    q_seg: jax.Array | None = None


def mrope_cos_sin(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """M-RoPE tables. positions (3, B, L) int -> cos, sin (B, L, head_dim) in the compute dtype.

    Frequency slot i takes its position from axis t/h/w per `mrope_section`; angles in fp32, then
    cast to the activation dtype as HF does (spec §3.3).
    """
    t = cfg.text
    hd = t.head_dim
    inv = 1.0 / (t.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))  # (hd/2,)
    axis_of_slot = jnp.concatenate(
        [jnp.full((n,), a, jnp.int32) for a, n in enumerate(t.mrope_section)]
    )
    pos = positions.astype(jnp.float32)  # (3, B, L)
    pos_slot = jnp.take(pos, axis_of_slot, axis=0)  # (hd/2, B, L)
    freqs = jnp.moveaxis(pos_slot, 0, -1) * inv  # (B, L, hd/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(cfg.dtype), jnp.sin(emb).astype(cfg.dtype)


class TextAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        nh, nkv, hd = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        self.q_proj = Linear(t.hidden_size, nh * hd, axes=("embed", "heads"), bias=True, **kw)
        self.k_proj = Linear(t.hidden_size, nkv * hd, axes=("embed", "kv_heads"), bias=True, **kw)
        self.v_proj = Linear(t.hidden_size, nkv * hd, axes=("embed", "kv_heads"), bias=True, **kw)
        self.o_proj = Linear(nh * hd, t.hidden_size, axes=("heads", "embed"), bias=False, **kw)

    def __call__(self, x, cos, sin, kv, ctx: _AttnContext, prefix_kv=None):
        """x (B, T, D). kv: None or this layer's cached (k, v) (B, K, S_max, H) (head-major,
        `kv_cache.KVCache`); prefix_kv: this layer's shared prefix (k, v) (B/G, K, P, H) with
        `ctx.prefix_valid`, or None.
        Returns (out (B, T, D), (k, v) to keep: the updated cache, or this call's k/v)."""
        t = self.cfg.text
        b, n = x.shape[:2]
        q = self.q_proj(x).reshape(b, n, t.num_attention_heads, t.head_dim)
        k = self.k_proj(x).reshape(b, n, t.num_key_value_heads, t.head_dim)
        v = self.v_proj(x).reshape(b, n, t.num_key_value_heads, t.head_dim)
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        if kv is not None:
            k = kvc.write_kv(kv[0], k, ctx.index)
            v = kvc.write_kv(kv[1], v, ctx.index)
        if n == 1 and kv is not None:  # a decode step: the head-major cache read as it lies
            visible = (ctx.kv_seg >= 0) & (ctx.kv_pos <= ctx.q_pos)
            o = attend_decode(q, k, v, visible, *(prefix_kv or (None, None)), ctx.prefix_valid)
        elif prefix_kv is not None:
            o = attend_shared_prefix(q, kvc.slot_major(k), kvc.slot_major(v), ctx.kv_seg,
                                     ctx.q_pos, ctx.kv_pos, *map(kvc.slot_major, prefix_kv),
                                     ctx.prefix_valid, chunk=self.cfg.attn_chunk)
        elif ctx.prompt_len:
            o = attend_prompt_groups(q, k, v, ctx.q_seg, ctx.kv_seg, ctx.prompt_len,
                                     impl=self.cfg.attn_impl, chunk=self.cfg.attn_chunk)
        else:  # no cache, or a multi-token call on one (the prefill: read once, relaid out)
            keys, values = (k, v) if kv is None else (kvc.slot_major(k), kvc.slot_major(v))
            q_seg = jnp.zeros((b, n), jnp.int32)
            o = attend(q, keys, values, q_seg, ctx.kv_seg, ctx.q_pos, ctx.kv_pos,
                       impl=self.cfg.attn_impl, chunk=self.cfg.attn_chunk)
        return self.o_proj(o.reshape(b, n, -1)), (k, v)


class TextMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        kw = dict(bias=False, dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        self.gate_proj = Linear(t.hidden_size, t.intermediate_size, axes=("embed", "mlp"), **kw)
        self.up_proj = Linear(t.hidden_size, t.intermediate_size, axes=("embed", "mlp"), **kw)
        self.down_proj = Linear(t.intermediate_size, t.hidden_size, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        nk = dict(eps=t.rms_norm_eps, axis_name="norm", param_dtype=cfg.pdtype, dtype=cfg.dtype)
        self.input_layernorm = RMSNorm(t.hidden_size, **nk)
        self.self_attn = TextAttention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, **nk)
        self.mlp = TextMLP(cfg, rngs)

    def __call__(self, x, cos, sin, kv, ctx: _AttnContext, prefix_kv=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, kv, ctx, prefix_kv)
        x = constrain(x + a, RESIDUAL_AXES)
        x = constrain(x + self.mlp(self.post_attention_layernorm(x)), RESIDUAL_AXES)
        return x, kv


class TextModel(nnx.Module):
    """`model.language_model`: embed_tokens, layers, norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        self.embed_tokens = param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"),
                                  cfg.pdtype)
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(t.num_hidden_layers)])
        self.norm = RMSNorm(t.hidden_size, eps=t.rms_norm_eps, axis_name="norm",
                            param_dtype=cfg.pdtype, dtype=cfg.dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) int32 -> (B, L, D) compute dtype."""
        # Gather from a table whole along `embed`: an FSDP-sharded hidden dim would come out of
        # the gather sharded on the same mesh axes as the batch wants (a full reshard).
        table = constrain(self.embed_tokens[...], ("vocab", None))
        return jnp.take(table, input_ids, axis=0).astype(self.cfg.dtype)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        cache: kvc.KVCache | kvc.SharedKVCache | None,
        segment_ids: jax.Array | None = None,
        prompt_len: int = 0,
    ) -> tuple[jax.Array, kvc.KVCache | kvc.SharedKVCache | None]:
        """x (B, T, D) input embeddings; positions (3, B, T); attention_mask (B, T) bool.

        With a `SharedKVCache`, B = prefix rows * G and the T tokens are written to the
        per-sample slots. Returns final-normed hidden states (B, T, D) and the updated cache.
        `segment_ids` (B, T) int32 with `prompt_len` > 0 (static; no cache): each row is
        `[prompt | c_1 | ... | c_G]`, segment 0 on the first `prompt_len` slots and g + 1 on
        completion g, which sees the prompt and causally itself only
        (`attention.attend_prompt_groups`; `model.sequence` builds these rows).
        """
        b, n = x.shape[:2]
        x = constrain(x, RESIDUAL_AXES)
        cos, sin = mrope_cos_sin(positions, self.cfg)
        mask = attention_mask.astype(bool)
        shared = isinstance(cache, kvc.SharedKVCache)
        own = cache.suffix if shared else cache
        if (segment_ids is None) != (prompt_len == 0) or (prompt_len and cache is not None):
            raise ValueError("segment_ids and prompt_len > 0 go together, without a cache")
        if shared and b != own.valid.shape[0]:
            raise ValueError(
                f"SharedKVCache has {own.valid.shape[0]} sample rows "
                f"({cache.prefix.valid.shape[0]} prompts x {cache.num_generations}) but the "
                f"input has {b} rows"
            )
        if own is None:
            index = jnp.zeros((), jnp.int32)
            q_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
            kv_pos, valid = q_pos, mask
        else:
            index = own.index
            q_pos = jnp.broadcast_to(index + jnp.arange(n, dtype=jnp.int32), (b, n))
            kv_pos = jnp.broadcast_to(jnp.arange(own.max_len, dtype=jnp.int32), (b, own.max_len))
            valid = kvc.write(own.valid, mask, index)
        seg = 0 if segment_ids is None else segment_ids
        kv_seg = jnp.where(valid, seg, -1).astype(jnp.int32)
        ctx = _AttnContext(kv_seg, q_pos, kv_pos, index,
                           cache.prefix.valid if shared else None, prompt_len, segment_ids)

        def run(graphdef, state, x, kv, prefix_kv):
            return nnx.merge(graphdef, state)(x, cos, sin, kv, ctx, prefix_kv)

        if self.cfg.remat != "none":
            # Functional remat (split -> jax.checkpoint -> merge), not nnx.remat: nnx.remat writes
            # the layer's state back after the call, which fails when the model was merged
            # outside the current trace (the sampler's decode loop, jax.vmap).
            run = remat_layer(run, self.cfg.remat)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if own is None else (own.k[i], own.v[i])
            prefix_kv = (cache.prefix.k[i], cache.prefix.v[i]) if shared else None
            x, (k, v) = run(*nnx.split(layer), x, kv, prefix_kv)
            new_k.append(k)
            new_v.append(v)
        x = constrain(self.norm(x), RESIDUAL_AXES)
        if own is None:
            return x, None
        own = own.replace(k=tuple(new_k), v=tuple(new_v), valid=valid, index=index + n)
        return x, cache.replace(suffix=own) if shared else own
