"""Jitted update steps over prompts and their completions: SFT, GRPO, and log-prob passes.

Every function here works on one device batch (a dict of arrays, see `SeqBatch` below) and the
parameter `nnx.State` of the policy; the model graph is closed over (static). The sequences are
built by `model.sequence` in one of its layouts (`layout`, config `rl.sequence_layout`):
"shared" runs each prompt once per group as `[prompt | c_1 | ... | c_G]` (the default),
"repeated" runs G rows `[prompt | completion]` (the reference). Images are encoded once per
prompt and their features are reused by all G completions of the prompt (rows `b * G + g`), in
the update as in the sampler.

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
| sampler_logps | (N, T) | float32 | GRPO with `tis_cap` > 0: the sampler's log-probs |
| advantages | (N,) | float32 | GRPO only |

Layout on a mesh (`placement=`): every leaf is a global array sharded on its batch dim (dim 1 of
`positions`, dim 0 of the rest; per-image `vision` buffers on their leading image dim) over the
data-parallel axes, prompt rows and their G completion rows alike, so a prompt, its image and
its G completions sit on one shard (`rl/placement.py`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardmap_jax.model.sequence import LAYOUTS, sequence_logprobs
from rewardmap_jax.rl import grpo, optim, sft
from rewardmap_jax.rl.placement import PROMPT_BATCH_DIMS, Placement, check_global

Array = jax.Array
# Incremented when jax traces (= compiles) a step; the trainer logs the total.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def _apply(tx: optax.GradientTransformation, params, opt_state, grads, loss):
    grads = optim.poison_if_nonfinite(grads, loss)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)


# Completion-row keys (N = B * reps rows); everything else in a SeqBatch is per prompt.
_ROW_KEYS = ("completion", "completion_mask", "old_logps", "ref_logps", "sampler_logps",
             "advantages")


def _by_prompt(batch: dict[str, Any], reps: int) -> dict[str, Any]:
    """The batch with the prompt axis leading on every leaf, so `optim.accumulate_gradients`
    can slice micro-batches of whole prompt groups (rows (B, reps, ...), positions (B, 3, L))."""
    if batch["vision"].pixels.ndim != 3:
        raise ValueError("grad_accum > 1 needs one image buffer per prompt (every image with "
                         "the same patch grid); this batch has one packed buffer")
    out = {k: v for k, v in batch.items() if k not in ("positions", "vis_offsets")}
    out["positions"] = jnp.moveaxis(batch["positions"], 1, 0)
    for k in _ROW_KEYS:
        if k in batch:
            out[k] = batch[k].reshape(-1, reps, *batch[k].shape[1:])
    return out


def _from_prompt(mb: dict[str, Any], reps: int) -> dict[str, Any]:
    out = dict(mb)
    out["positions"] = jnp.moveaxis(mb["positions"], 0, 1)
    out["vis_offsets"] = jnp.zeros(mb["prompt_ids"].shape[:1], jnp.int32)  # unused (stacked)
    for k in _ROW_KEYS:
        if k in mb:
            out[k] = mb[k].reshape(-1, *mb[k].shape[2:])
    return out


def _combine(aux: dict[str, Array]) -> dict[str, Array]:
    """Per-micro-batch metrics (leading axis) -> one value: losses (already over the global
    denominator) and token counts add up, maxima/alarms take the max, the rest the mean (exact
    for means over equal-size micro-batches, an approximation for token-weighted means)."""
    out = {}
    for k, v in aux.items():
        if k in ("loss", "pg_loss", "kl", "entropy", "tokens"):
            out[k] = v.sum(0)
        elif k.endswith("_max") or k == "logp_alarm":
            out[k] = v.max(0)
        elif k.endswith("_min"):
            out[k] = v.min(0)
        else:
            out[k] = v.mean(0)
    return out


def _global_denom(mask: Array, agg: str, norm_len: int) -> Array:
    return grpo.aggregate_parts(jnp.zeros(mask.shape, jnp.float32), mask, agg, norm_len)[1]


def _replicated_out(placement: Placement) -> Callable:
    return lambda in_sh, n: (*in_sh[:-1], placement.replicated())


def jit_step(fn: Callable, name: str, placement: Placement | None, *, n_state: int,
             donate: bool = False, out_shardings: Callable | None = None) -> Callable:
    """`jax.jit(fn)` for `fn(*state, batch)` (a SeqBatch), with a mesh layout when `placement`:

    * the batch must hold global arrays (`placement.check_global`: a host-local array in a
      multi-process run fails here, naming `name`);
    * in_shardings are declared: the state's own shardings, the batch's rows over the
      data-parallel axes (`Placement.shardings`); out_shardings by `out_shardings(in_sh, n)`
      (default: the state's shardings, then everything else replicated);
    * the call runs (and is traced) under the activation sharding rules (`Placement.context`).

    `n_state` leading args are state (donated when `donate`)."""
    donate_argnums = tuple(range(n_state)) if donate else ()
    if placement is None:
        return jax.jit(fn, donate_argnums=donate_argnums)
    out_fn = out_shardings or _replicated_out(placement)
    jitted: dict[Any, Callable] = {}

    def get(args):
        batch = args[n_state]
        check_global(batch, name)
        n = batch["prompt_ids"].shape[0]
        in_sh = (*(jax.tree.map(lambda x: x.sharding, a) for a in args[:n_state]),
                 placement.shardings(batch, n, PROMPT_BATCH_DIMS))
        key = (jax.tree.structure(in_sh), tuple(jax.tree.leaves(in_sh)))
        if key not in jitted:
            jitted[key] = jax.jit(fn, in_shardings=in_sh, out_shardings=out_fn(in_sh, n),
                                  donate_argnums=donate_argnums)
        return jitted[key]

    def call(*args):
        f = get(args)
        with placement.context():
            return f(*args)

    def lower(*args):  # for XLA's compiled memory analysis (tests, benchmarks)
        f = get(args)
        with placement.context():
            return f.lower(*args)

    call.lower = lower
    return call


def _accumulated_step(loss_fn: Callable, tx: optax.GradientTransformation, reps: int,
                      grad_accum: int, denom_fn: Callable, name: str,
                      donate: bool = False, placement: Placement | None = None) -> Callable:
    """jit(step(params, opt_state, batch)): `loss_fn(params, batch, denom)` summed over
    `grad_accum` micro-batches of whole prompt groups with the full batch's denominator, so
    the update equals the full-batch one (optim.accumulate_gradients).

    `donate`: params and opt_state are donated, so XLA writes the new state into the old
    buffers (without it the step holds two copies of params + Adam moments at its peak: 12P
    bytes more for fp32 master weights). The caller's arrays are deleted by the call."""

    def step(params, opt_state, batch):
        TRACE_COUNTS[name] += 1
        denom = denom_fn(batch)
        if grad_accum == 1:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch, denom)
        else:
            if batch["prompt_ids"].shape[0] % grad_accum:
                raise ValueError(f"{batch['prompt_ids'].shape[0]} prompts per update are not "
                                 f"divisible by grad_accum {grad_accum}")
            (loss, aux), grads = optim.accumulate_gradients(
                lambda p, mb: loss_fn(p, _from_prompt(mb, reps), denom), params,
                _by_prompt(batch, reps), grad_accum)
            metrics = _combine(aux)
        params, opt_state, gnorm = _apply(tx, params, opt_state, grads, loss)
        metrics["grad_norm"] = gnorm
        return params, opt_state, metrics

    return jit_step(step, name, placement, n_state=2, donate=donate)


def make_sft_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                  loss_agg: str = "token-mean", chunk: int = 256, grad_accum: int = 1,
                  freeze_vision: bool = False, donate: bool = False,
                  placement: Placement | None = None) -> Callable:
    """`step(params, opt_state, batch) -> (params, opt_state, metrics)`: cross-entropy on the
    answer tokens (`completion` = target ids incl. `<|im_end|>`, `completion_mask`).

    `grad_accum` micro-batches (rows of the batch) per update, same update as one pass;
    `freeze_vision` stops the gradient at the vision features; `donate` donates params and
    opt_state (`_accumulated_step`); `placement`: the mesh layout (`jit_step`)."""

    def loss_fn(params, batch, denom):
        model = nnx.merge(graphdef, params)
        logps, _ = sequence_logprobs(model, batch, 1, layout="repeated", chunk=chunk,
                                     with_entropy=False, freeze_vision=freeze_vision)
        mask = batch["completion_mask"]
        loss, m = sft.sft_loss(logps, mask, loss_agg=loss_agg, denom=denom)
        # Whole-answer exact match under teacher forcing: every answer token has p > 0.5.
        ok = jnp.all((logps > jnp.log(0.5)) | ~mask.astype(bool), axis=1)
        m["answer_match"] = ok.mean(dtype=jnp.float32)
        return loss, m

    return _accumulated_step(
        loss_fn, tx, 1, grad_accum,
        lambda b: _global_denom(b["completion_mask"], loss_agg, 0), "sft_step", donate,
        placement)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sequence layout {layout!r}; choose one of {LAYOUTS}")


def make_logprob_fn(graphdef: nnx.GraphDef, reps: int, chunk: int = 256,
                    placement: Placement | None = None, layout: str = "shared") -> Callable:
    """`fn(params, batch) -> logps (N, T)`: behaviour / reference log-probs (no gradient);
    with `placement` the output rows are sharded like the batch's (`jit_step`). `layout`:
    `model.sequence` layout."""
    _check_layout(layout)

    def fn(params, batch):
        TRACE_COUNTS["logprobs"] += 1
        model = nnx.merge(graphdef, params)
        logps, _ = sequence_logprobs(model, batch, reps, layout=layout, chunk=chunk,
                                     with_entropy=False)
        return logps

    rows_out = None if placement is None else (
        lambda in_sh, n: placement.sharding(n, 2))
    return jit_step(fn, "logprobs", placement, n_state=1, out_shardings=rows_out)


def make_grpo_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   cfg: grpo.GRPOLossConfig, reps: int, *, chunk: int = 256,
                   mismatch_threshold: float = 0.05, grad_accum: int = 1,
                   freeze_vision: bool = False, donate: bool = False,
                   placement: Placement | None = None, layout: str = "shared") -> Callable:
    """`step(params, opt_state, batch) -> (params, opt_state, metrics)`: one GRPO update.

    `batch` holds `old_logps` (the sampler's when one update per batch), `ref_logps` (zeros
    when kl_coef == 0), `advantages`, and with `cfg.tis_cap > 0` `sampler_logps` (then
    `old_logps` are the learner's recomputation; the policy loss is weighted by the truncated
    importance ratio, `grpo.grpo_loss`). Also reports how far the learner's log-probs before
    the update are from the sampler's (`sampler_logps`, else `old_logps`: `logp_diff_mean`,
    ...; meaningful on the first update only). `layout`: `model.sequence` layout.
    `grad_accum` micro-batches of whole prompt groups per update (the same update as one pass:
    every micro-batch loss is over the full batch's denominator); `freeze_vision` stops the
    gradient at the vision features (the tower's activations are not kept for backward);
    `donate` donates params and opt_state (`_accumulated_step`); `placement`: the mesh layout
    (`jit_step`).
    """

    _check_layout(layout)

    def loss_fn(params, batch, denom):
        if cfg.tis_cap > 0 and "sampler_logps" not in batch:
            raise ValueError("rl.tis_cap > 0: the batch needs the sampler's log-probs "
                             "('sampler_logps') next to the learner's 'old_logps'")
        sampler_logps = batch["sampler_logps"] if cfg.tis_cap > 0 else None
        model = nnx.merge(graphdef, params)
        logps, ent = sequence_logprobs(model, batch, reps, layout=layout, chunk=chunk,
                                       with_entropy=cfg.entropy_coef != 0,
                                       freeze_vision=freeze_vision)
        mask = batch["completion_mask"]
        loss, m = grpo.grpo_loss(logps, batch["old_logps"], batch["ref_logps"],
                                 batch["advantages"], mask, cfg, entropy=ent, denom=denom,
                                 sampler_logps=sampler_logps)
        behaviour = batch.get("sampler_logps", batch["old_logps"])
        m.update(grpo.logp_consistency(behaviour, jax.lax.stop_gradient(logps), mask,
                                       mismatch_threshold))
        return loss, m

    return _accumulated_step(
        loss_fn, tx, reps, grad_accum,
        lambda b: _global_denom(b["completion_mask"], cfg.loss_agg, cfg.norm_len), "grpo_step",
        donate, placement)


def config_errors(config: Any) -> list[str]:
    """Update-step settings that cannot work, each naming its keys ([] when consistent):
    grad_accum must divide the prompts of one update; a warmup_cosine warmup must be shorter
    than the phase's optimizer updates; params below 32 bits lose the updates (unless
    optim.allow_low_precision_params); a known sequence layout; an overlong buffer within the
    completion length."""
    errs = []
    o = config.optim
    if (jnp.dtype(config.model.param_dtype).itemsize < 4
            and not o.get("allow_low_precision_params", False)):
        errs.append(f"model.param_dtype={config.model.param_dtype} would be trained in place: "
                    f"updates below its resolution are lost (lr {o.lr} AdamW changes ~2% of "
                    "bf16 weights per step); use model.param_dtype=float32 with "
                    "model.compute_dtype=bfloat16, or set optim.allow_low_precision_params=True")
    rl, sft_c = config.rl, config.sft
    b = int(config.data.batch_size)
    mb = min(int(rl.mini_batch_size), b)
    acc = int(rl.grad_accum)
    if acc < 1 or mb % acc:
        errs.append(f"rl.grad_accum ({acc}) must divide the prompts per update "
                    f"min(rl.mini_batch_size, data.batch_size) = {mb}")
    layout = rl.get("sequence_layout", "shared")
    if layout not in LAYOUTS:
        errs.append(f"rl.sequence_layout={layout!r} is not one of {LAYOUTS}")
    buf, t = int(rl.get("overlong_buffer", 0)), int(rl.max_new_tokens)
    if not 0 <= buf <= t or float(rl.get("overlong_penalty", 1.0)) < 0:
        errs.append(f"rl.overlong_buffer ({buf}) must be in [0, rl.max_new_tokens = {t}] and "
                    f"rl.overlong_penalty ({rl.get('overlong_penalty')}) >= 0")
    sacc = int(sft_c.get("grad_accum", 1))
    if int(sft_c.steps) and (sacc < 1 or int(sft_c.batch_size) % sacc):
        errs.append(f"sft.grad_accum ({sacc}) must divide sft.batch_size ({sft_c.batch_size})")
    if (int(sft_c.steps) and sft_c.schedule == "warmup_cosine"
            and int(sft_c.warmup_steps) >= int(sft_c.steps)):
        errs.append(f"sft.warmup_steps ({sft_c.warmup_steps}) must be < sft.steps "
                    f"({sft_c.steps}) with sft.schedule='warmup_cosine'")
    rl_steps = int(config.train.rl_steps)
    if rl_steps > 0 and o.schedule == "warmup_cosine" and mb and b % mb == 0:
        updates = rl_steps * (b // mb) * int(rl.ppo_epochs)
        if int(o.warmup_steps) >= updates:
            errs.append(f"optim.warmup_steps ({o.warmup_steps}) must be < the GRPO optimizer "
                        f"updates train.rl_steps x data.batch_size / rl.mini_batch_size x "
                        f"rl.ppo_epochs = {updates} with optim.schedule='warmup_cosine'")
    return errs
