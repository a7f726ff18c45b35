"""A complete GRPO training step on the toy model (used by sharding and multi-host tests).

Also the reference for how the trainer composes the pieces:
logprobs.completion_logprobs -> grpo.grpo_loss (global denominator) -> optim.accumulate_gradients
-> optim.poison_if_nonfinite -> optax update (skip_nonfinite inside the optimizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rewardmap_jax.rl import grpo, optim
from rewardmap_jax.rl.logprobs import completion_logprobs

PROMPT_LEN = 4
COMPLETION_LEN = 6


def make_batch(seed: int, rows: int = 8, vocab: int = 32) -> dict[str, np.ndarray]:
    """Deterministic host batch: token ids, behaviour/reference logps, advantages, mask."""
    rng = np.random.default_rng(seed)
    t = COMPLETION_LEN
    lens = rng.integers(1, t + 1, rows)
    return {
        "ids": rng.integers(0, vocab, (rows, PROMPT_LEN + t)).astype(np.int32),
        "old_logps": (np.log(1 / vocab) + rng.normal(0, 0.1, (rows, t))).astype(np.float32),
        "ref_logps": (np.log(1 / vocab) + rng.normal(0, 0.1, (rows, t))).astype(np.float32),
        "adv": rng.normal(size=rows).astype(np.float32),
        "mask": (np.arange(t)[None] < lens[:, None]).astype(np.int32),
    }


def toy_forward(model, ids):
    """(hidden (B, L, D), lm_head fn) of the toy model."""
    return model(ids), model.lm_head


def qwen_text_forward(model, ids):
    """(hidden, lm_head fn) of the real Qwen2.5-VL on a text-only, unpadded batch."""
    b, n = ids.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (3, b, n))
    hidden, _ = model.hidden_states(ids, pos, jnp.ones((b, n), bool))
    return hidden, model.logits


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
              cfg: grpo.GRPOLossConfig, num_micro: int = 1, chunk: int = 4,
              forward=toy_forward):
    """Returns jitted `step(params, opt_state, batch) -> (params, opt_state, loss, aux)`."""

    def loss_fn(params, mb, denom):
        model = nnx.merge(graphdef, params)
        hidden, head = forward(model, mb["ids"])
        logps, ent = completion_logprobs(
            hidden, mb["ids"][:, PROMPT_LEN:], PROMPT_LEN, head, chunk_size=chunk
        )
        return grpo.grpo_loss(logps, mb["old_logps"], mb["ref_logps"], mb["adv"], mb["mask"],
                              cfg, entropy=ent, denom=denom)

    @jax.jit
    def step(params, opt_state, batch):
        _, denom = grpo.aggregate_parts(
            jnp.zeros(batch["mask"].shape), batch["mask"], cfg.loss_agg, cfg.norm_len
        )
        (loss, aux), grads = optim.accumulate_gradients(
            lambda p, mb: loss_fn(p, mb, denom), params, batch, num_micro
        )
        grads = optim.poison_if_nonfinite(grads, loss)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return step
