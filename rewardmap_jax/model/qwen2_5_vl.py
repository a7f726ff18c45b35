"""Qwen2.5-VL for conditional generation in Flax NNX (`Qwen2_5_VLForConditionalGeneration`).

Call contract (all shapes static under jit):

    model(input_ids (B, L) int32, positions (3, B, L) int32, attention_mask (B, L) bool,
          vision: VisionInputs | None = None, cache: KVCache | None = None,
          return_hidden: bool = False) -> (logits (B, L, V) float32 | hidden (B, L, D), cache)

* `positions` come from `rope_index.get_rope_index` (prefill) or `rope_index.decode_positions`
  (decode); the rope deltas are an explicit value owned by the caller.
* Vision pad tokens (`image_token_id` / `video_token_id`) are replaced, in row-major order, by the
  vision tower's outputs for `vision` (a packed buffer from `vision_layout.pack_vision_inputs`).
* With a cache, the L new tokens are written at slots [cache.index, cache.index + L): prefill
  writes L, decode writes 1. Left padding: attention_mask False; those slots are never attended.
* `hidden_states(...)` + `logits(hidden)` / `token_logprobs(...)` let a trainer apply the LM head
  in chunks without materialising (B, L, V) logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewardmap_jax.model import head
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.kv_cache import KVCache
from rewardmap_jax.model.layers import KeySeq, Linear, constrain
from rewardmap_jax.model.text import TextModel
from rewardmap_jax.model.vision import VisionTower
from rewardmap_jax.model.vision_layout import VisionInputs


class Qwen2_5_VL(nnx.Module):
    """Attributes mirror HF names: `visual`, `language_model`, `lm_head` (None when tied)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        rngs = KeySeq(rngs.params())
        self.visual = VisionTower(cfg, rngs)
        self.language_model = TextModel(cfg, rngs)
        t = cfg.text
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            t.hidden_size, t.vocab_size, axes=("embed", "vocab"), bias=False, dtype=cfg.dtype,
            param_dtype=cfg.pdtype, rngs=rngs)

    # -- pieces ------------------------------------------------------------------------------

    def embed(self, input_ids: jax.Array, vision: VisionInputs | None = None) -> jax.Array:
        """Token embeddings with vision features scattered in: (B, L) -> (B, L, D) compute dtype.

        The k-th vision pad token (row-major over the batch) gets row k of the vision output;
        the caller guarantees the pad count equals the items' token count (checked on the host by
        `rope_index.check_vision_tokens`).
        """
        x = self.language_model.embed(input_ids)
        if vision is None:
            return x
        # Whole along D (like the text embedding table): FSDP-sharded features would reach the
        # batch-sharded residual stream through a full reshard (model/layers.py `constrain`).
        feats = constrain(self.visual(vision).astype(x.dtype), (None, None))  # (M, D)
        is_vis = (input_ids == self.cfg.image_token_id) | (input_ids == self.cfg.video_token_id)
        flat = is_vis.reshape(-1)
        idx = jnp.clip(jnp.cumsum(flat) - 1, 0, feats.shape[0] - 1)
        vis = jnp.take(feats, idx, axis=0).reshape(x.shape)
        return jnp.where(is_vis[..., None], vis, x)

    def hidden_states(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        vision: VisionInputs | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states (B, L, D) in the compute dtype, and the updated cache."""
        x = self.embed(input_ids, vision)
        return self.language_model(x, positions, attention_mask, cache)

    def head_kernel(self) -> jax.Array:
        """(D, V) LM-head kernel in the compute dtype (the embedding transposed when tied)."""
        if self.lm_head is None:
            return self.language_model.embed_tokens[...].T.astype(self.cfg.dtype)
        return self.lm_head.kernel[...].astype(self.cfg.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """(..., D) hidden -> (..., V) float32 logits (matmul in the compute dtype, as HF)."""
        return jnp.dot(hidden.astype(self.cfg.dtype), self.head_kernel()).astype(jnp.float32)

    def token_logprobs(self, hidden: jax.Array, targets: jax.Array, chunk: int = 1024
                       ) -> tuple[jax.Array, jax.Array]:
        """Log-probabilities and entropies of `targets` under the head, in sequence chunks.

        hidden (B, L, D), targets (B, L) int32 -> (logp (B, L) float32, entropy (B, L) float32).
        Only (B, chunk, V) logits exist at a time (the chunk body is rematerialised for grads).
        `head.token_logprobs` with this model's `logits` as the head (temperature 1).
        """
        return head.token_logprobs(hidden, targets, self.logits, chunk_size=chunk)

    # -- full call ---------------------------------------------------------------------------

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        vision: VisionInputs | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.hidden_states(input_ids, positions, attention_mask, vision, cache)
        if return_hidden:
            return h, cache
        return self.logits(h), cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen2_5_VL:
    """Random-init model (HF init: normal(0.02) weights, zero biases, unit norms)."""
    return Qwen2_5_VL(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Qwen2_5_VL:
    """Shape-only model (no allocation), e.g. for parameter counts or sharded init."""
    return nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)))


def param_count(model: Qwen2_5_VL) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
