"""Sequence layouts of prompts with their completions, and the completion tokens' log-probs.

The learner scores G completions per prompt (log-prob passes and the update). Inputs are one
mapping of arrays (B prompts, G = `num_generations`, N = B * G completion rows, L prompt bucket,
T completion length, P vision slots):

| key | shape | dtype | meaning |
| --- | --- | --- | --- |
| prompt_ids, prompt_mask | (B, L) | int32, bool | left-padded prompts |
| positions | (3, B, L) | int32 | M-RoPE positions of the prompts (`get_rope_index`) |
| rope_deltas | (B,) | int32 | completion token i sits at position L + delta + i |
| vision | VisionInputs | | a packed buffer (P, ...) or per-prompt buffers (B, P_1, ...) |
| vis_offsets | (B,) | int32 | index of each prompt's first feature in a packed buffer |
| completion, completion_mask | (N, T) | int32, bool | right-padded completions, row b * G + g |

Two layouts, the same log-probs (`tests/model/test_sequence_layouts.py`, fp32, <= 1e-5):

* `repeated` (the reference): N rows `[prompt | completion]`, L + T tokens each: every prompt
  runs through the decoder G times.
* `shared`: B rows `[prompt | c_1 | ... | c_G]`, L + G * T tokens each. Completion c_g attends
  to the prompt and causally to itself, never to c_h (`attention.attend_prompt_groups`); its
  token i sits at M-RoPE position L + delta + i on all three axes, as in `repeated` (and the
  sampler). The prompt's activations exist once per group and its gradient is the sum over the
  G completions. At RewardMap's lengths (L = 20,480, T = 2,048, G = 4) that is 28.7k decoder
  tokens per group instead of 90k.

Either way the vision tower runs once per prompt, only prompt tokens receive image features
(completion tokens are always text, as in the sampler's decode steps), padding is never
attended, and the head runs in chunks (`head.token_logprobs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rewardmap_jax.model import head
from rewardmap_jax.model.layers import constrain

Array = jax.Array
LAYOUTS = ("shared", "repeated")


def embed(model: Any, ids: Array, vision: Any, vis_offsets: Array,
          freeze_vision: bool = False) -> Array:
    """Token embeddings (B, L, D) of B prompts with their image features scattered in.

    The vision tower runs once on the B prompts' images; prompt b's k-th image pad token takes
    feature `vis_offsets[b] + k` of a packed buffer (leaves (P, ...)), or feature k of its own
    buffer when `vision` holds per-image buffers stacked (leaves (B, P_1, ...), all images with
    the same grid; the tower then runs image by image). `freeze_vision`: no gradient into the
    tower (its activations need not be kept for backward).
    """
    x = model.language_model.embed(ids)
    cfg = model.cfg
    is_vis = (ids == cfg.image_token_id) | (ids == cfg.video_token_id)
    rank = jnp.cumsum(is_vis, axis=1) - 1
    stop = jax.lax.stop_gradient if freeze_vision else (lambda f: f)
    if vision.pixels.ndim == 3:  # stacked per-image buffers
        feats = stop(jax.vmap(model.visual)(vision).astype(x.dtype))
        feats = constrain(feats, ("batch", None, None))  # (B, M, D): images stay on their shard
        # Per-prompt gather (batched over B): prompt b reads only its own features, so a
        # batch-sharded layout needs no all-gather of the image features.
        vis = jax.vmap(lambda f, i: f[i])(feats, jnp.clip(rank, 0, feats.shape[1] - 1))
    else:
        feats = stop(model.visual(vision).astype(x.dtype))  # (M, D)
        idx = jnp.clip(vis_offsets[:, None] + rank, 0, feats.shape[0] - 1)
        vis = jnp.take(feats, idx, axis=0)
    return jnp.where(is_vis[..., None], vis, x)


def _completion_positions(inputs: Mapping[str, Any], t: int) -> Array:
    """(B, T) int32: completion token i of prompt b at L + rope_delta[b] + i."""
    length = inputs["prompt_ids"].shape[1]
    return (length + inputs["rope_deltas"])[:, None] + jnp.arange(t, dtype=jnp.int32)[None]


def repeated_hidden(model: Any, inputs: Mapping[str, Any], num_generations: int,
                    freeze_vision: bool = False) -> Array:
    """(N, T, D) final hidden states predicting each completion token, `repeated` layout:
    rows b * G + g = `[prompt b | completion]`, hidden slot L - 1 + t predicts token t."""
    g = num_generations
    comp = inputs["completion"]
    n, t = comp.shape
    length = inputs["prompt_ids"].shape[1]
    x_p = embed(model, inputs["prompt_ids"], inputs["vision"], inputs["vis_offsets"],
                freeze_vision)
    x = jnp.concatenate([jnp.repeat(x_p, g, axis=0), model.language_model.embed(comp)], axis=1)
    mask = jnp.concatenate([jnp.repeat(inputs["prompt_mask"].astype(bool), g, axis=0),
                            inputs["completion_mask"].astype(bool)], axis=1)
    pos_c = jnp.repeat(_completion_positions(inputs, t), g, axis=0)
    pos = jnp.concatenate([jnp.repeat(inputs["positions"], g, axis=1),
                           jnp.broadcast_to(pos_c[None], (3, n, t))], axis=2)
    hidden, _ = model.language_model(x, pos, mask, None)
    return jax.lax.slice_in_dim(hidden, length - 1, length - 1 + t, axis=1)


def shared_hidden(model: Any, inputs: Mapping[str, Any], num_generations: int,
                  freeze_vision: bool = False) -> Array:
    """(N, T, D) final hidden states predicting each completion token, `shared` layout:
    B rows `[prompt b | c_1 | ... | c_G]`; token 0 of every completion is predicted by the
    prompt's last slot, token t > 0 of c_g by slot t - 1 of c_g."""
    g = num_generations
    comp = inputs["completion"]
    n, t = comp.shape
    b, length = inputs["prompt_ids"].shape
    if n != b * g:
        raise ValueError(f"{n} completion rows for {b} prompts x num_generations {g}")
    x_p = embed(model, inputs["prompt_ids"], inputs["vision"], inputs["vis_offsets"],
                freeze_vision)
    x_c = model.language_model.embed(comp).reshape(b, g * t, -1)
    x = jnp.concatenate([x_p, x_c], axis=1)
    mask = jnp.concatenate([inputs["prompt_mask"].astype(bool),
                            inputs["completion_mask"].astype(bool).reshape(b, g * t)], axis=1)
    pos_c = jnp.tile(_completion_positions(inputs, t), (1, g))  # (B, G * T)
    pos = jnp.concatenate([inputs["positions"],
                           jnp.broadcast_to(pos_c[None], (3, b, g * t))], axis=2)
    seg_c = jnp.repeat(jnp.arange(1, g + 1, dtype=jnp.int32), t)
    seg = jnp.concatenate([jnp.zeros((length,), jnp.int32), seg_c])
    seg = jnp.broadcast_to(seg, mask.shape)
    hidden, _ = model.language_model(x, pos, mask, None, segment_ids=seg, prompt_len=length)
    d = hidden.shape[-1]
    last = jnp.broadcast_to(hidden[:, None, length - 1 : length], (b, g, 1, d))
    own = hidden[:, length:].reshape(b, g, t, d)[:, :, : t - 1]
    return jnp.concatenate([last, own], axis=2).reshape(n, t, d)


_HIDDEN = {"shared": shared_hidden, "repeated": repeated_hidden}


def sequence_logprobs(
    model: Any, inputs: Mapping[str, Any], num_generations: int, *, layout: str = "shared",
    chunk: int = 256, with_entropy: bool = True, freeze_vision: bool = False,
) -> tuple[Array, Array | None]:
    """Log-probs (N, T) fp32 of `completion` after the prompts (and entropies, else None).

    `layout`: "shared" or "repeated" (same values; module docstring). `chunk`: positions per
    LM-head call. Mask the results with `completion_mask`.
    """
    if layout not in _HIDDEN:
        raise ValueError(f"unknown sequence layout {layout!r}; choose one of {LAYOUTS}")
    h = _HIDDEN[layout](model, inputs, num_generations, freeze_vision)
    return head.token_logprobs(h, inputs["completion"], model.logits, chunk_size=chunk,
                               with_entropy=with_entropy)
