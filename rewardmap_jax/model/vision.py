"""Qwen2.5-VL vision tower (`visual.*`) over the packed window buffer (see vision_layout.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewardmap_jax.model.attention import attend
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.layers import Linear, RMSNorm, remat_layer, rotate_half
from rewardmap_jax.model.vision_layout import VisionInputs


def vision_cos_sin(rope_pos: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """2-D rotary tables, fp32. rope_pos (P, 2) int -> cos, sin (P, head_dim) (spec §1.4)."""
    v = cfg.vision
    half = v.head_dim // 2
    inv = 1.0 / (v.rope_theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half))
    pos = rope_pos.astype(jnp.float32)
    ang = jnp.concatenate([pos[:, :1] * inv, pos[:, 1:] * inv], axis=-1)  # (P, half)
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        kw = dict(bias=True, dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        self.qkv = Linear(v.hidden_size, 3 * v.hidden_size, axes=("vision_embed", "vision_heads"),
                          **kw)
        self.proj = Linear(v.hidden_size, v.hidden_size, axes=("vision_heads", "vision_embed"),
                           **kw)

    def __call__(self, x, cos, sin, seg, full: bool, reach: int = 0):
        """x (P, D); cos/sin (P, head_dim) fp32; seg (P,) int32 frame ids (-1 = padding);
        reach: static bound on a frame's slot span (`ModelConfig.vision_frame_span`, 0 = none)."""
        v = self.cfg.vision
        p = x.shape[0]
        qkv = self.qkv(x).reshape(p, 3, v.num_heads, v.head_dim)
        q, k, val = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        c, s = cos[:, None, :], sin[:, None, :]
        # HF applies the vision rotary in fp32 and casts back (spec §1.4).
        q = (q.astype(jnp.float32) * c + rotate_half(q.astype(jnp.float32)) * s).astype(q.dtype)
        k = (k.astype(jnp.float32) * c + rotate_half(k.astype(jnp.float32)) * s).astype(k.dtype)
        impl, chunk = self.cfg.attn_impl, self.cfg.attn_chunk
        if full:
            o = attend(q[None], k[None], val[None], seg[None], seg[None], impl=impl, chunk=chunk,
                       reach=reach)
        else:
            w = v.window_patches
            nw = p // w
            wseg = jnp.where(seg >= 0, 0, -1).reshape(nw, w)
            shape = (nw, w, v.num_heads, v.head_dim)
            o = attend(q.reshape(shape), k.reshape(shape), val.reshape(shape), wseg, wseg,
                       impl=impl, chunk=w)
        return self.proj(o.reshape(p, v.hidden_size))


class VisionMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(bias=True, dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        ax_in, ax_out = ("vision_embed", "vision_mlp"), ("vision_mlp", "vision_embed")
        self.gate_proj = Linear(v.hidden_size, v.intermediate_size, axes=ax_in, **kw)
        self.up_proj = Linear(v.hidden_size, v.intermediate_size, axes=ax_in, **kw)
        self.down_proj = Linear(v.intermediate_size, v.hidden_size, axes=ax_out, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, full: bool, rngs: nnx.Rngs):
        v = cfg.vision
        nk = dict(eps=v.rms_norm_eps, axis_name="norm", param_dtype=cfg.pdtype,
                  dtype=cfg.dtype)
        self.full = full
        self.norm1 = RMSNorm(v.hidden_size, **nk)
        self.attn = VisionAttention(cfg, rngs)
        self.norm2 = RMSNorm(v.hidden_size, **nk)
        self.mlp = VisionMLP(cfg, rngs)

    def __call__(self, x, cos, sin, seg, reach: int = 0):
        x = x + self.attn(self.norm1(x), cos, sin, seg, self.full, reach)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """ln_q -> view 4 patches as one row -> Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        d4 = v.hidden_size * v.merge_unit
        kw = dict(bias=True, dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        self.ln_q = RMSNorm(v.hidden_size, eps=v.rms_norm_eps, axis_name="norm",
                            param_dtype=cfg.pdtype, dtype=cfg.dtype)
        self.mlp_0 = Linear(d4, d4, axes=("vision_embed", "vision_mlp"), **kw)
        self.mlp_2 = Linear(d4, v.out_hidden_size, axes=("vision_mlp", "embed"), **kw)

    def __call__(self, x):
        x = self.ln_q(x).reshape(-1, self.mlp_0.kernel.shape[0])
        return self.mlp_2(jax.nn.gelu(self.mlp_0(x), approximate=False))


class VisionTower(nnx.Module):
    """`visual`: patch_embed -> blocks (windowed / full) -> merger."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = cfg
        # Conv3d(kernel == stride) as one Linear over the 1176-value patch row (spec §1.3).
        self.patch_embed = Linear(v.patch_dim, v.hidden_size, axes=("vision_patch", "vision_embed"),
                                  bias=False, dtype=cfg.dtype, param_dtype=cfg.pdtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, i in v.fullatt_block_indexes, rngs)
                                for i in range(v.depth)])
        self.merger = PatchMerger(cfg, rngs)

    def merged(self, vi: VisionInputs) -> jax.Array:
        """Merged embeddings in buffer order: (P // merge_unit, out_hidden_size), compute dtype.
        Rows of padding slots are finite garbage."""
        cos, sin = vision_cos_sin(vi.rope_pos, self.cfg)
        seg = vi.segment_ids.astype(jnp.int32)
        x = self.patch_embed(vi.pixels)

        def run(graphdef, state, x):
            block = nnx.merge(graphdef, state)
            return block(x, cos, sin, seg, self.cfg.vision_frame_span)

        if self.cfg.remat != "none":
            # Functional remat (split -> jax.checkpoint -> merge) rather than nnx.remat: nnx.remat
            # writes the block's state back after the call, which fails when the tower runs
            # under jax.vmap (one image per buffer, `sequence.embed`) with the params unbatched.
            run = remat_layer(run, self.cfg.remat)
        for block in self.blocks:
            x = run(*nnx.split(block), x)
        return self.merger(x)

    def __call__(self, vi: VisionInputs) -> jax.Array:
        """Vision token embeddings in raster order: (M, out_hidden_size), M = len(token_index)."""
        return jnp.take(self.merged(vi), vi.token_index, axis=0)
