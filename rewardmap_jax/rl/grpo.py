"""GRPO algorithm core: group advantages, clipped policy loss, KL to a reference, aggregation.

Pure functions over arrays; jit them at the trainer's step boundary (they are also safe to call
eagerly). Conventions used throughout:

* A batch holds `N = P * G` completions: `P` prompts, `G = num_generations` samples each, laid out
  group-contiguous (rows `p*G .. p*G+G-1` belong to prompt `p`).
* Per-token arrays are `(N, T)` over the completion tokens only (`T` = static max completion
  length); `mask` `(N, T)` is 1 on real completion tokens (up to and including EOS), 0 on padding.
* Log-probs are natural-log, fp32. Losses and metrics are fp32 scalars.

Names selectable from config (`cfg.rl.*`) live in small registries: `ADV_SCALINGS`,
`KL_ESTIMATORS`, `AGGREGATORS`, `POLICY_LOSSES`; `register_*` adds new ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable[..., Array]] = {}
AGGREGATORS: dict[str, Callable[..., tuple[Array, Array]]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[Array, Metrics]]] = {}
ADV_SCALINGS = ("group", "batch", "none")


def _wide(x: Array) -> Array:
    """At least fp32 (fp64 stays fp64, for gradient checks under x64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; registered: {sorted(table)}")
    return table[name]


def register_kl_estimator(name: str) -> Callable:
    """Decorator: `fn(logps, ref_logps, clamp) -> (N, T)` per-token KL estimate."""

    def deco(fn: Callable) -> Callable:
        KL_ESTIMATORS[name] = fn
        return fn

    return deco


def register_aggregator(name: str) -> Callable:
    """Decorator: `fn(x, mask, norm_len) -> (numerator, denominator)` scalars."""

    def deco(fn: Callable) -> Callable:
        AGGREGATORS[name] = fn
        return fn

    return deco


def register_policy_loss(name: str) -> Callable:
    """Decorator: `fn(logps, old_logps, advantages, mask, cfg) -> ((N, T) loss, metrics)`."""

    def deco(fn: Callable) -> Callable:
        POLICY_LOSSES[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """Static (hashable) loss settings; build from `cfg.rl` with `from_config`.

    clip_low / clip_high: ratio clipped to [1 - clip_low, 1 + clip_high] (DAPO clip-higher when
    clip_high > clip_low). dual_clip: c > 1 bounds the loss of negative-advantage tokens by
    -c * A (0 = off). log_ratio_clamp: |logp - old_logp| is clamped before exp for safety.
    kl_clamp: per-token KL estimate clamped to [-kl_clamp, kl_clamp] (verl's low_var_kl uses 10;
    0 = off).
    """

    policy_loss: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    log_ratio_clamp: float = 20.0
    kl_coef: float = 1e-2
    kl_estimator: str = "k3"
    kl_clamp: float = 10.0
    entropy_coef: float = 1e-3
    loss_agg: str = "token-mean"
    norm_len: int = 0  # seq-sum-token-mean divisor; 0 = the static completion length T
    tis_cap: float = 0.0  # truncated importance sampling cap (0 = off), see grpo_loss

    def __post_init__(self):
        _lookup(POLICY_LOSSES, self.policy_loss, "policy_loss")
        _lookup(KL_ESTIMATORS, self.kl_estimator, "kl_estimator")
        _lookup(AGGREGATORS, self.loss_agg, "loss_agg")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(
                f"clip_low/clip_high must be >= 0, got {self.clip_low}, {self.clip_high}"
            )
        if self.tis_cap < 0:
            raise ValueError(f"tis_cap must be >= 0 (0 = off), got {self.tis_cap}")
        if self.dual_clip != 0 and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}")

    @classmethod
    def from_config(cls, rl: Any) -> GRPOLossConfig:
        """Reads the matching keys of a `cfg.rl` ConfigDict (missing keys keep defaults)."""
        kw = {f.name: rl[f.name] for f in dataclasses.fields(cls) if f.name in rl}
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def group_advantages(
    rewards: Array,
    num_generations: int,
    *,
    scaling: str = "group",
    eps: float = 1e-6,
    ddof: int = 1,
) -> tuple[Array, Metrics]:
    """GRPO advantages `(r - mean_group) / (std + eps)`.

    Args:
      rewards: `(N,)` float, N = P * G, group-contiguous.
      num_generations: G (static).
      scaling: "group" (std of the group; official GRPO), "batch" (std of all N rewards, TRL's
        `scale_rewards="batch"`), "none" (no division; Dr. GRPO).
      eps: added to the std.
      ddof: std degrees of freedom (1 = unbiased, as torch.std in verl/EasyR1 and Tunix).

    Returns:
      advantages `(N,)` fp32 (exactly 0 for groups whose rewards are all equal), and metrics:
      `zero_var_groups` (count), `reward_mean/std`, `adv_mean/std/min/max`.
    """
    if scaling not in ADV_SCALINGS:
        raise ValueError(f"unknown adv_scaling {scaling!r}; choose one of {ADV_SCALINGS}")
    if rewards.ndim != 1 or rewards.shape[0] % num_generations:
        raise ValueError(
            f"rewards must be (P*G,) with G={num_generations}, got shape {rewards.shape}"
        )
    if num_generations - ddof <= 0:
        raise ValueError(f"num_generations={num_generations} too small for ddof={ddof}")
    r = rewards.astype(jnp.float32).reshape(-1, num_generations)
    mean = r.mean(axis=1, keepdims=True)
    centered = r - mean
    # Exact equality, not std < tol: equal rewards must give exactly zero advantage even when
    # the float mean differs from them by rounding.
    zero_var = jnp.all(r == r[:, :1], axis=1, keepdims=True)
    if scaling == "group":
        std = jnp.sqrt((centered**2).sum(axis=1, keepdims=True) / (num_generations - ddof))
        adv = centered / (std + eps)
    elif scaling == "batch":
        n = r.size
        flat = r.reshape(-1)
        std = jnp.sqrt(((flat - flat.mean()) ** 2).sum() / max(n - ddof, 1))
        adv = centered / (std + eps)
    else:
        adv = centered
    adv = jnp.where(zero_var, 0.0, adv).reshape(-1)
    metrics = {
        "zero_var_groups": zero_var.sum().astype(jnp.int32),
        "reward_mean": r.mean(),
        "reward_std": r.std(),
        "adv_mean": adv.mean(),
        "adv_std": adv.std(),
        "adv_min": adv.min(),
        "adv_max": adv.max(),
    }
    return adv, metrics


def dynamic_sampling_keep(rewards: Array, num_generations: int) -> tuple[Array, Array]:
    """DAPO online filtering: which groups carry signal (rewards not all equal).

    Args:
      rewards: `(N,)` float, N = P * G, group-contiguous (numpy or jax).
    Returns:
      keep `(P,)` bool (True = keep the group), and the fraction of groups filtered (fp32 scalar).
    The caller (trainer) refills the batch with more prompts; this only decides.
    """
    if rewards.ndim != 1 or rewards.shape[0] % num_generations:
        raise ValueError(
            f"rewards must be (P*G,) with G={num_generations}, got shape {rewards.shape}"
        )
    r = jnp.asarray(rewards).reshape(-1, num_generations)
    keep = ~jnp.all(r == r[:, :1], axis=1)
    return keep, 1.0 - keep.mean(dtype=jnp.float32)


def overlong_penalty(lengths: Array, max_len: int, buffer: int, factor: float = 1.0) -> Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), added to the
    reward before the advantages (`rl.overlong_buffer`, `rl.overlong_penalty`).

    A completion of |y| tokens (stop token included) gets 0 while |y| <= max_len - buffer,
    then a linear ramp factor * ((max_len - buffer) - |y|) / buffer down to -factor at
    |y| = max_len (the sampler truncates there, so the paper's -1 branch for |y| > max_len is
    the end of the ramp). verl's `overlong_buffer` (len, penalty_factor) is the same rule.

    Args:
      lengths: `(N,)` int completion lengths; max_len: the sampler's max new tokens (static);
      buffer: tokens of the ramp (0 = off: all zeros); factor: the penalty at max_len.
    Returns:
      `(N,)` fp32 penalties in [-factor, 0].
    """
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"overlong buffer {buffer} must be in [0, max_len = {max_len}]")
    lengths = jnp.asarray(lengths, jnp.float32)
    if buffer == 0:
        return jnp.zeros_like(lengths)
    return factor * jnp.clip((max_len - buffer - lengths) / buffer, -1.0, 0.0)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


@register_aggregator("token-mean")
def _agg_token_mean(x: Array, mask: Array, norm_len: int) -> tuple[Array, Array]:
    m = mask.astype(jnp.float32)
    return (x * m).sum(), m.sum()


@register_aggregator("seq-mean-token-mean")
def _agg_seq_mean_token_mean(x: Array, mask: Array, norm_len: int) -> tuple[Array, Array]:
    m = mask.astype(jnp.float32)
    n_tok = m.sum(axis=-1)
    seq = (x * m).sum(axis=-1) / jnp.maximum(n_tok, 1.0)
    valid = (n_tok > 0).astype(jnp.float32)
    return (seq * valid).sum(), valid.sum()


@register_aggregator("seq-sum-token-mean")
def _agg_seq_sum_token_mean(x: Array, mask: Array, norm_len: int) -> tuple[Array, Array]:
    # Dr. GRPO: each sequence's token sum over a constant length, so long and short answers
    # weigh each token equally; then the mean over sequences.
    m = mask.astype(jnp.float32)
    length = norm_len if norm_len > 0 else x.shape[-1]
    valid = (m.sum(axis=-1) > 0).astype(jnp.float32)
    return (x * m).sum() / length, valid.sum()


def aggregate_parts(x: Array, mask: Array, mode: str, norm_len: int = 0) -> tuple[Array, Array]:
    """`(numerator, denominator)` of aggregating `x` `(N, T)` under `mask` `(N, T)`.

    Splitting a batch by rows into micro-batches, sum(numerators) / sum(denominators) equals the
    full-batch value; the trainer computes the global denominator first and divides each
    micro-batch's numerator by it (exact gradient accumulation).
    """
    return _lookup(AGGREGATORS, mode, "loss_agg")(x, mask, norm_len)


def aggregate(
    x: Array, mask: Array, mode: str, norm_len: int = 0, denom: Array | None = None
) -> Array:
    """Masked aggregate of `x` `(N, T)` to a scalar; `denom` overrides the local denominator."""
    num, den = aggregate_parts(x, mask, mode, norm_len)
    return num / jnp.maximum(den if denom is None else denom, 1.0)


# --------------------------------------------------------------------------------------------
# KL estimators (per token, KL(pi || pi_ref) estimated from samples of pi)
# --------------------------------------------------------------------------------------------


def _clamp(x: Array, c: float) -> Array:
    return jnp.clip(x, -c, c) if c > 0 else x


@register_kl_estimator("k1")
def kl_k1(logps: Array, ref_logps: Array, clamp: float = 0.0) -> Array:
    """k1 = logp - ref_logp (unbiased, high variance, can be negative)."""
    return _clamp(logps - ref_logps, clamp)


@register_kl_estimator("k2")
def kl_k2(logps: Array, ref_logps: Array, clamp: float = 0.0) -> Array:
    """k2 = 0.5 * (logp - ref_logp)^2 (Tunix `mse_kl`)."""
    return _clamp(0.5 * (logps - ref_logps) ** 2, clamp)


@register_kl_estimator("k3")
def kl_k3(logps: Array, ref_logps: Array, clamp: float = 0.0) -> Array:
    """k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 (verl `low_var_kl`; log-ratio clamped ±20)."""
    d = jnp.clip(ref_logps - logps, -20.0, 20.0)
    return _clamp(jnp.exp(d) - d - 1.0, clamp)


KL_ESTIMATORS["low_var_kl"] = kl_k3


def kl_penalty(logps: Array, ref_logps: Array, estimator: str = "k3", clamp: float = 0.0) -> Array:
    """Per-token KL estimate `(N, T)` fp32 by estimator name (k1 | k2 | k3 | low_var_kl)."""
    fn = _lookup(KL_ESTIMATORS, estimator, "kl_estimator")
    return fn(_wide(logps), _wide(ref_logps), clamp)


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------


def _masked_min_max(x: Array, mask: Array) -> tuple[Array, Array]:
    m = mask.astype(bool)
    any_ = m.any()
    lo = jnp.where(any_, jnp.min(jnp.where(m, x, jnp.inf)), 0.0)
    hi = jnp.where(any_, jnp.max(jnp.where(m, x, -jnp.inf)), 0.0)
    return lo, hi


def _clipped_surrogate(
    ratio: Array, adv: Array, mask: Array, cfg: GRPOLossConfig, logps: Array, old_logps: Array
) -> tuple[Array, Metrics]:
    """max(-A r, -A clip(r, 1-clip_low, 1+clip_high)) per token (dual clip optional), and the
    clipping / ratio metrics; shared by the token- and sequence-level ratios."""
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = jnp.maximum(pg1, pg2)
    dual_active = jnp.zeros_like(loss, dtype=bool)
    if cfg.dual_clip > 0:
        pg3 = -adv * cfg.dual_clip
        dual_active = (adv < 0) & (loss > pg3)
        loss = jnp.where(adv < 0, jnp.minimum(loss, pg3), loss)

    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)

    def frac(b: Array) -> Array:
        return (b.astype(jnp.float32) * m).sum() / n

    clip_low = (adv < 0) & (ratio < 1.0 - cfg.clip_low)
    clip_high = (adv > 0) & (ratio > 1.0 + cfg.clip_high)
    rmin, rmax = _masked_min_max(ratio, mask)
    metrics = {
        "clipfrac_low": frac(clip_low),
        "clipfrac_high": frac(clip_high),
        "clipfrac": frac(clip_low | clip_high),
        "dual_clipfrac": frac(dual_active),
        "ratio_mean": (ratio * m).sum() / n,
        "ratio_min": rmin,
        "ratio_max": rmax,
        "approx_kl": (kl_k3(logps, old_logps) * m).sum() / n,
    }
    return loss, metrics


def _advantage_per_token(advantages: Array) -> Array:
    adv = _wide(advantages)
    return adv[:, None] if adv.ndim == 1 else adv


@register_policy_loss("grpo")
def clipped_policy_loss(
    logps: Array, old_logps: Array, advantages: Array, mask: Array, cfg: GRPOLossConfig
) -> tuple[Array, Metrics]:
    """PPO clipped surrogate per token (GRPO/DAPO), optional dual clip.

    loss_t = max(-A r, -A clip(r, 1-clip_low, 1+clip_high)); with dual_clip c > 1 and A < 0,
    loss_t = min(loss_t, -c A). r = exp(clamp(logp - old_logp)).

    Args:
      logps, old_logps: `(N, T)` fp32; advantages: `(N,)` (broadcast over tokens) or `(N, T)`.
    Returns:
      per-token loss `(N, T)` fp32 (unmasked) and token-mean metrics: `clipfrac_low` (A<0, ratio
      below 1-clip_low), `clipfrac_high` (A>0, ratio above 1+clip_high), `clipfrac`,
      `dual_clipfrac`, `ratio_mean/min/max`, `approx_kl` (k3 of old vs new).
    """
    log_ratio = jnp.clip(
        _wide(logps) - _wide(old_logps),
        -cfg.log_ratio_clamp,
        cfg.log_ratio_clamp,
    )
    return _clipped_surrogate(jnp.exp(log_ratio), _advantage_per_token(advantages), mask, cfg,
                              logps, old_logps)


@register_policy_loss("gspo")
def sequence_policy_loss(
    logps: Array, old_logps: Array, advantages: Array, mask: Array, cfg: GRPOLossConfig
) -> tuple[Array, Metrics]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the clipped surrogate with one importance
    ratio per sequence, the geometric mean of its token ratios,

        s_i = exp(mean_{t in y_i} (logp_t - old_t))      (masked mean over the y_i tokens)

    in the paper's GSPO-token form (eq. 13-14): token t of sequence i uses
    s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]), whose value is s_i and whose gradient is
    s_i * grad logp_t. With `loss_agg="seq-mean-token-mean"` and a per-sequence advantage the
    loss (and its gradient) is exactly the paper's sequence-level objective
    (1/G) sum_i max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high)), as verl's
    `gspo` policy loss. The paper's clip ranges are small (3e-4 / 4e-4): sequence ratios stay
    close to 1. The log of s_i is clamped to `log_ratio_clamp`; metrics as `clipped_policy_loss`
    (ratios are the sequence ratios, per token).
    """
    m = mask.astype(jnp.float32)
    d = (_wide(logps) - _wide(old_logps)) * m
    seq = d.sum(axis=-1, keepdims=True) / jnp.maximum(m.sum(axis=-1, keepdims=True), 1.0)
    seq = jnp.clip(jax.lax.stop_gradient(seq), -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    lp = _wide(logps)
    ratio = jnp.exp(seq + lp - jax.lax.stop_gradient(lp))
    return _clipped_surrogate(ratio, _advantage_per_token(advantages), mask, cfg, logps,
                              old_logps)


def grpo_loss(
    logps: Array,
    old_logps: Array,
    ref_logps: Array | None,
    advantages: Array,
    mask: Array,
    cfg: GRPOLossConfig,
    entropy: Array | None = None,
    denom: Array | None = None,
    sampler_logps: Array | None = None,
) -> tuple[Array, Metrics]:
    """Total GRPO loss = agg(w * policy) + kl_coef * agg(KL) - entropy_coef * agg(entropy).

    Args:
      logps: `(N, T)` fp32 current-policy log-probs of the completion tokens (differentiable).
      old_logps: `(N, T)` behaviour log-probs (the sampler's when one update per batch, else the
        trainer's recomputation before the first update); treated as constants.
      ref_logps: `(N, T)` frozen reference log-probs, or None when kl_coef == 0.
      advantages: `(N,)` or `(N, T)`.
      mask: `(N, T)` completion mask (bool or 0/1).
      cfg: static loss settings (`GRPOLossConfig`).
      entropy: `(N, T)` per-token entropy of the current policy, or None when entropy_coef == 0.
      denom: global aggregation denominator (from `aggregate_parts` over the whole batch) when
        this call sees one micro-batch; None = this batch's own.
      sampler_logps: `(N, T)` the sampler's log-probs when `old_logps` are the trainer's
        recomputation; with `cfg.tis_cap > 0` each token's policy loss is weighted by the
        truncated importance weight w = min(exp(old_logps - sampler_logps), tis_cap) (constant),
        correcting the sampler/trainer mismatch. w = 1 otherwise.
    Returns:
      scalar fp32 loss and metrics (`pg_loss`, `kl`, `entropy`, the policy-loss metrics, `tokens`).
    """
    if logps.shape != mask.shape or old_logps.shape != mask.shape:
        raise ValueError(
            f"logps {logps.shape}, old_logps {old_logps.shape} and mask {mask.shape} must match"
        )
    old_logps = jax.lax.stop_gradient(old_logps)
    per_tok, metrics = _lookup(POLICY_LOSSES, cfg.policy_loss, "policy_loss")(
        logps, old_logps, jax.lax.stop_gradient(advantages), mask, cfg
    )

    def agg(x: Array) -> Array:
        return aggregate(x, mask, cfg.loss_agg, cfg.norm_len, denom)

    if cfg.tis_cap > 0:
        if sampler_logps is None:
            raise ValueError("tis_cap > 0 needs sampler_logps")
        log_w = jnp.clip(_wide(old_logps) - _wide(sampler_logps), -cfg.log_ratio_clamp,
                         cfg.log_ratio_clamp)
        w = jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w), cfg.tis_cap))
        per_tok = per_tok * w
        metrics["tis_weight_mean"] = aggregate(w, mask, "token-mean")
    pg = agg(per_tok)
    total = pg
    metrics["pg_loss"] = pg
    if cfg.kl_coef != 0:
        if ref_logps is None:
            raise ValueError("kl_coef != 0 needs ref_logps")
        ref = jax.lax.stop_gradient(ref_logps)
        kl = agg(kl_penalty(logps, ref, cfg.kl_estimator, cfg.kl_clamp))
        total = total + cfg.kl_coef * kl
        metrics["kl"] = kl
    if cfg.entropy_coef != 0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs entropy")
        ent = agg(_wide(entropy))
        total = total - cfg.entropy_coef * ent
        metrics["entropy"] = ent
    metrics["tokens"] = mask.astype(jnp.float32).sum()
    metrics["loss"] = total
    return total, metrics


# --------------------------------------------------------------------------------------------
# Rollout / learner consistency
# --------------------------------------------------------------------------------------------


def logp_consistency(
    sampler_logps: Array, trainer_logps: Array, mask: Array, threshold: float
) -> Metrics:
    """Mismatch between sampler and trainer log-probs of the same tokens under the same params.

    Returns `logp_diff_mean`, `logp_diff_max` (of |sampler - trainer| over masked tokens),
    `logp_corr` (Pearson) and `logp_alarm` (1 when the mean exceeds `threshold`
    (cfg.rl.logp_mismatch_alarm), else 0; int32).
    """
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    a = sampler_logps.astype(jnp.float32)
    b = trainer_logps.astype(jnp.float32)
    d = jnp.abs(a - b) * m
    mean = d.sum() / n
    ma, mb = (a * m).sum() / n, (b * m).sum() / n
    cov = ((a - ma) * (b - mb) * m).sum()
    var = jnp.sqrt(((a - ma) ** 2 * m).sum() * ((b - mb) ** 2 * m).sum())
    return {
        "logp_diff_mean": mean,
        "logp_diff_max": d.max(),
        "logp_corr": cov / jnp.maximum(var, 1e-12),
        "logp_alarm": (mean > threshold).astype(jnp.int32),
    }
