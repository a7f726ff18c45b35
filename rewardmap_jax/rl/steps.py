"""Jitted update steps over `[prompt | completion]` sequences: SFT, GRPO, and log-prob passes.

Every function here works on one device batch (a dict of arrays, see `SeqBatch` below) and the
parameter `nnx.State` of the policy; the model graph is closed over (static). Images are encoded
once per prompt and their features are reused by all G completions of the prompt (rows
`b * G + g`), in the update as in the sampler.

SeqBatch keys (B prompts, N = B * G rows, L prompt bucket, T completion length, P patch slots):

| key | shape | dtype | meaning |
| --- | --- | --- | --- |
| prompt_ids, prompt_mask | (B, L) | int32, bool | left-padded prompts |
| positions | (3, B, L) | int32 | M-RoPE positions of the prompts (`get_rope_index`) |
| rope_deltas | (B,) | int32 | completion token i sits at position L + delta + i |
| vision | VisionInputs (P slots) | | packed images, one per prompt |
| vis_offsets | (B,) | int32 | index of each prompt's first vision feature |
| completion, completion_mask | (N, T) | int32, bool | sampled completions / SFT targets |
| old_logps, ref_logps | (N, T) | float32 | GRPO only |
| advantages | (N,) | float32 | GRPO only |
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardmap_jax.rl import grpo, optim, sft
from rewardmap_jax.rl.logprobs import completion_logprobs

Array = jax.Array
# Incremented when jax traces (= compiles) a step; the trainer logs the total.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def embed(model: Any, ids: Array, vision: Any, vis_offsets: Array, reps: int) -> Array:
    """Token embeddings (N, S, D) of N = B * reps rows with each prompt's image features.

    The vision tower runs once on the B prompts' images; row r = b * reps + g takes the k-th
    feature of prompt b at its k-th image pad (every copy of a prompt has the same pads).
    `vision` is either one packed buffer (leaves (P, ...)) or per-image buffers stacked
    (leaves (B, P_1, ...), all images with the same grid), which the tower runs image by image.
    """
    x = model.language_model.embed(ids)
    cfg = model.cfg
    is_vis = (ids == cfg.image_token_id) | (ids == cfg.video_token_id)
    rank = jnp.cumsum(is_vis, axis=1) - 1
    if vision.pixels.ndim == 3:  # stacked per-image buffers
        feats = jax.vmap(model.visual)(vision).astype(x.dtype)  # (B, M_1, D)
        b_idx = jnp.repeat(jnp.arange(feats.shape[0]), reps)[:, None]
        vis = feats[b_idx, jnp.clip(rank, 0, feats.shape[1] - 1)]
    else:
        feats = model.visual(vision).astype(x.dtype)  # (M, D), prompts in order
        idx = jnp.clip(jnp.repeat(vis_offsets, reps)[:, None] + rank, 0, feats.shape[0] - 1)
        vis = jnp.take(feats, idx, axis=0)
    return jnp.where(is_vis[..., None], vis, x)


def sequence_logprobs(
    model: Any, batch: dict[str, Any], reps: int, chunk: int, with_entropy: bool = True
) -> tuple[Array, Array | None]:
    """Log-probs (N, T) fp32 (and entropies) of `completion` after the prompts.

    Completion token i of row b * reps + g is at M-RoPE position L + rope_delta[b] + i on all
    three axes, the sampler's convention, so sampler and learner see the same positions.
    """
    ids_p = jnp.repeat(batch["prompt_ids"], reps, axis=0)
    mask_p = jnp.repeat(batch["prompt_mask"].astype(bool), reps, axis=0)
    pos_p = jnp.repeat(batch["positions"], reps, axis=1)
    comp = batch["completion"]
    n, t = comp.shape
    length = ids_p.shape[1]
    deltas = jnp.repeat(batch["rope_deltas"], reps)
    pos_c = (length + deltas)[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    ids = jnp.concatenate([ids_p, comp], axis=1)
    mask = jnp.concatenate([mask_p, batch["completion_mask"].astype(bool)], axis=1)
    pos = jnp.concatenate([pos_p, jnp.broadcast_to(pos_c[None], (3, n, t))], axis=2)
    x = embed(model, ids, batch["vision"], batch["vis_offsets"], reps)
    hidden, _ = model.language_model(x, pos, mask, None)
    return completion_logprobs(hidden, comp, length, model.logits, chunk_size=chunk,
                               with_entropy=with_entropy)


def _apply(tx: optax.GradientTransformation, params, opt_state, grads, loss):
    grads = optim.poison_if_nonfinite(grads, loss)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)


def make_sft_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                  loss_agg: str = "token-mean", chunk: int = 256) -> Callable:
    """`step(params, opt_state, batch) -> (params, opt_state, metrics)`: cross-entropy on the
    answer tokens (`completion` = target ids incl. `<|im_end|>`, `completion_mask`)."""

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        logps, _ = sequence_logprobs(model, batch, 1, chunk, with_entropy=False)
        mask = batch["completion_mask"]
        loss, m = sft.sft_loss(logps, mask, loss_agg=loss_agg)
        # Whole-answer exact match under teacher forcing: every answer token has p > 0.5.
        ok = jnp.all((logps > jnp.log(0.5)) | ~mask.astype(bool), axis=1)
        m["answer_match"] = ok.mean(dtype=jnp.float32)
        return loss, m

    @jax.jit
    def step(params, opt_state, batch):
        TRACE_COUNTS["sft_step"] += 1
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        params, opt_state, gnorm = _apply(tx, params, opt_state, grads, loss)
        metrics["grad_norm"] = gnorm
        return params, opt_state, metrics

    return step


def make_logprob_fn(graphdef: nnx.GraphDef, reps: int, chunk: int = 256) -> Callable:
    """`fn(params, batch) -> logps (N, T)`: behaviour / reference log-probs (no gradient)."""

    @jax.jit
    def fn(params, batch):
        TRACE_COUNTS["logprobs"] += 1
        model = nnx.merge(graphdef, params)
        logps, _ = sequence_logprobs(model, batch, reps, chunk, with_entropy=False)
        return logps

    return fn


def make_grpo_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   cfg: grpo.GRPOLossConfig, reps: int, *, chunk: int = 256,
                   mismatch_threshold: float = 0.05) -> Callable:
    """`step(params, opt_state, batch) -> (params, opt_state, metrics)`: one GRPO update.

    `batch` holds `old_logps` (the sampler's when one update per batch), `ref_logps` (zeros
    when kl_coef == 0), `advantages`. Also reports how far the learner's log-probs before the
    update are from `old_logps` (`logp_diff_mean`, ...; meaningful on the first update only).
    """

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        logps, ent = sequence_logprobs(model, batch, reps, chunk,
                                       with_entropy=cfg.entropy_coef != 0)
        mask = batch["completion_mask"]
        loss, m = grpo.grpo_loss(logps, batch["old_logps"], batch["ref_logps"],
                                 batch["advantages"], mask, cfg, entropy=ent)
        m.update(grpo.logp_consistency(batch["old_logps"], jax.lax.stop_gradient(logps), mask,
                                       mismatch_threshold))
        return loss, m

    @jax.jit
    def step(params, opt_state, batch):
        TRACE_COUNTS["grpo_step"] += 1
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        params, opt_state, gnorm = _apply(tx, params, opt_state, grads, loss)
        metrics["grad_norm"] = gnorm
        return params, opt_state, metrics

    return step
