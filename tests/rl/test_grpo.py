"""GRPO core against hand-worked values and a plain numpy transcription."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.rl import grpo

CFG = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0,
                          entropy_coef=0.0)


# ------------------------------------------------------------------ advantages


def test_group_advantages_hand_values():
    r = jnp.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv, m = grpo.group_advantages(r, 3, scaling="group", eps=1e-6)
    # group 0: mean 2, centered (-1, 0, 1), unbiased std sqrt(2 / 2) = 1; group 1 all equal -> 0
    np.testing.assert_allclose(adv, [-1 / (1 + 1e-6), 0, 1 / (1 + 1e-6), 0, 0, 0], rtol=1e-6)
    assert int(m["zero_var_groups"]) == 1

    adv, _ = grpo.group_advantages(r, 3, scaling="batch", eps=0.0)
    # batch mean 3.5; squared deviations 6.25+2.25+0.25+3*2.25 = 15.5; unbiased var 15.5/5 = 3.1
    np.testing.assert_allclose(adv, [-1 / math.sqrt(3.1), 0, 1 / math.sqrt(3.1), 0, 0, 0],
                               rtol=1e-6)

    adv, _ = grpo.group_advantages(r, 3, scaling="none")  # Dr. GRPO: centered only
    np.testing.assert_allclose(adv, [-1, 0, 1, 0, 0, 0], atol=0)


def test_equal_rewards_give_exact_zero_despite_rounding():
    # mean(0.1, 0.1, 0.1) != 0.1 in fp32; without the explicit zeroing the tiny difference
    # would be divided by eps and yield a spurious advantage.
    r = jnp.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], jnp.float32)
    adv, m = grpo.group_advantages(r, 3)
    assert np.all(np.asarray(adv) == 0.0)
    assert int(m["zero_var_groups"]) == 2


def test_advantages_match_numpy_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5 * 4,)).astype(np.float32)
    adv, _ = grpo.group_advantages(jnp.asarray(r), 4, eps=1e-6)
    g = r.reshape(5, 4)
    ref = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(adv, ref.reshape(-1), rtol=1e-5, atol=1e-6)


def test_advantages_bad_input():
    with pytest.raises(ValueError, match="rewards must be"):
        grpo.group_advantages(jnp.zeros(5), 2)
    with pytest.raises(ValueError, match="adv_scaling"):
        grpo.group_advantages(jnp.zeros(4), 2, scaling="zscore")


def test_dynamic_sampling_keep():
    r = np.array([0, 0, 0, 1, 0, 1, 2, 2, 2, 0.5, 0.5, 0.0])
    keep, frac = grpo.dynamic_sampling_keep(r, 3)
    assert np.asarray(keep).tolist() == [False, True, False, True]
    assert float(frac) == pytest.approx(0.5)


# ------------------------------------------------------------------ policy loss


def _hand_batch():
    # row 0: A=+1, ratios (1.5, 1.1, 0.5); row 1: A=-1, ratios (4.0, 0.5, 1.1), last masked.
    old = jnp.log(jnp.full((2, 3), 0.2))
    ratios = jnp.array([[1.5, 1.1, 0.5], [4.0, 0.5, 1.1]])
    logps = old + jnp.log(ratios)
    adv = jnp.array([1.0, -1.0])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    return logps, old, adv, mask


def test_clipped_loss_hand_values():
    logps, old, adv, mask = _hand_batch()
    per_tok, m = grpo.clipped_policy_loss(logps, old, adv, mask, CFG)
    # row 0 (A=+1): max(-r, -clip(r, .8, 1.28)) = (-1.28, -1.1, -0.5)
    # row 1 (A=-1): max(r, clip(r)) = (4, 0.8, 1.1); dual clip min(., 3) = (3, 0.8, 1.1)
    np.testing.assert_allclose(per_tok, [[-1.28, -1.1, -0.5], [3.0, 0.8, 1.1]], rtol=1e-5)
    # 5 masked tokens: high clip at row0 t0; low clip at row1 t1; dual clip at row1 t0
    assert float(m["clipfrac_high"]) == pytest.approx(1 / 5)
    assert float(m["clipfrac_low"]) == pytest.approx(1 / 5)
    assert float(m["clipfrac"]) == pytest.approx(2 / 5)
    assert float(m["dual_clipfrac"]) == pytest.approx(1 / 5)
    assert float(m["ratio_min"]) == pytest.approx(0.5, rel=1e-5)
    assert float(m["ratio_max"]) == pytest.approx(4.0, rel=1e-5)  # the masked 1.1 is ignored


@pytest.mark.parametrize(
    "mode,expected",
    [
        # masked sum = (-1.28 - 1.1 - 0.5) + (3 + 0.8) = 0.92 over 5 tokens
        ("token-mean", 0.92 / 5),
        # row means -2.88 / 3 = -0.96 and 3.8 / 2 = 1.9; their mean 0.47
        ("seq-mean-token-mean", 0.47),
        # (sum / T=3) averaged over 2 sequences
        ("seq-sum-token-mean", 0.92 / 3 / 2),
    ],
)
def test_aggregation_hand_values(mode, expected):
    logps, old, adv, mask = _hand_batch()
    cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0,
                              entropy_coef=0.0, loss_agg=mode)
    loss, m = grpo.grpo_loss(logps, old, None, adv, mask, cfg)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["pg_loss"]) == pytest.approx(expected, rel=1e-5)


def test_kl_estimators_hand_values():
    lp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
    ln2 = math.log(2.0)
    assert float(grpo.kl_penalty(lp, ref, "k1")[0]) == pytest.approx(ln2, rel=1e-6)
    assert float(grpo.kl_penalty(lp, ref, "k2")[0]) == pytest.approx(0.5 * ln2**2, rel=1e-6)
    # k3: d = ref - logp = -ln 2; e^d - d - 1 = 0.5 + ln 2 - 1
    assert float(grpo.kl_penalty(lp, ref, "k3")[0]) == pytest.approx(ln2 - 0.5, rel=1e-6)
    assert float(grpo.kl_penalty(lp, ref, "low_var_kl")[0]) == pytest.approx(ln2 - 0.5, rel=1e-6)
    # clamp: k3 of a log-ratio of 15 is e^15 - 16, clamped to 10
    assert float(grpo.kl_penalty(jnp.array([-15.0]), jnp.array([0.0]), "k3", 10.0)[0]) == 10.0


def test_total_loss_combines_terms():
    logps, old, adv, mask = _hand_batch()
    ref = logps - jnp.log(2.0)  # k1 = ln 2 on every token
    ent = jnp.full((2, 3), 2.0)
    cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.01,
                              kl_estimator="k1", kl_clamp=0.0, entropy_coef=1e-3)
    loss, m = grpo.grpo_loss(logps, old, ref, adv, mask, cfg, entropy=ent)
    expected = 0.92 / 5 + 0.01 * math.log(2.0) - 1e-3 * 2.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(math.log(2.0), rel=1e-5)
    assert float(m["entropy"]) == pytest.approx(2.0)


# ------------------------------------------------------------------ numpy transcription


def _np_loss(logps, old, ref, adv, mask, ent, lo, hi, dual, coef_kl, est, coef_ent, mode, T):
    r = np.exp(np.clip(logps - old, -20, 20))
    a = adv[:, None]
    loss = np.maximum(-a * r, -a * np.clip(r, 1 - lo, 1 + hi))
    if dual:
        loss = np.where(a < 0, np.minimum(loss, -dual * a), loss)
    d = ref - logps
    kl = {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[est]
    m = mask.astype(np.float64)

    def agg(x):
        if mode == "token-mean":
            return (x * m).sum() / m.sum()
        if mode == "seq-mean-token-mean":
            return np.mean((x * m).sum(1) / m.sum(1))
        return np.mean((x * m).sum(1) / T)

    return agg(loss) + coef_kl * agg(kl) - coef_ent * agg(ent)


@pytest.mark.parametrize("mode", sorted(grpo.AGGREGATORS))
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_loss_matches_numpy(mode, est):
    rng = np.random.default_rng(1)
    n, t = 6, 7
    old = np.log(rng.uniform(0.05, 1.0, (n, t)))
    logps = old + rng.normal(0, 0.3, (n, t))
    ref = old + rng.normal(0, 0.3, (n, t))
    adv = rng.normal(size=n)
    lens = rng.integers(1, t + 1, n)
    mask = (np.arange(t)[None] < lens[:, None]).astype(np.int32)
    ent = rng.uniform(0, 3, (n, t))
    cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05,
                              kl_estimator=est, kl_clamp=0.0, entropy_coef=1e-2, loss_agg=mode)
    f = jax.jit(grpo.grpo_loss, static_argnames="cfg")
    loss, _ = f(*(jnp.asarray(x, jnp.float32) for x in (logps, old, ref, adv)),
                jnp.asarray(mask), cfg=cfg, entropy=jnp.asarray(ent, jnp.float32))
    ref_loss = _np_loss(logps, old, ref, adv, mask, ent, 0.2, 0.28, 3.0, 0.05, est, 1e-2, mode, t)
    assert float(loss) == pytest.approx(ref_loss, rel=2e-5, abs=1e-6)


def test_micro_batch_denominator_is_exact():
    rng = np.random.default_rng(2)
    n, t = 8, 5
    logps = jnp.asarray(np.log(rng.uniform(0.1, 1, (n, t))), jnp.float32)
    old = logps + 0.1
    adv = jnp.asarray(rng.normal(size=n), jnp.float32)
    mask = jnp.asarray(np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None])
    cfg = grpo.GRPOLossConfig(kl_coef=0.0, entropy_coef=0.0)
    full, _ = grpo.grpo_loss(logps, old, None, adv, mask, cfg)
    _, den = grpo.aggregate_parts(jnp.zeros((n, t)), mask, cfg.loss_agg)
    halves = [grpo.grpo_loss(logps[s], old[s], None, adv[s], mask[s], cfg, denom=den)[0]
              for s in (slice(0, 4), slice(4, 8))]
    assert float(sum(halves)) == pytest.approx(float(full), rel=1e-6)


def test_logp_consistency_metrics_and_alarm():
    a = jnp.array([[-1.0, -2.0, -3.0]])
    b = jnp.array([[-1.1, -2.0, -9.0]])
    mask = jnp.array([[1, 1, 0]])
    m = grpo.logp_consistency(a, b, mask, threshold=0.04)
    # |diff| over the 2 masked tokens: 0.1, 0 -> mean 0.05, max 0.1; 0.05 > 0.04 raises the alarm
    assert float(m["logp_diff_mean"]) == pytest.approx(0.05, rel=1e-5)
    assert float(m["logp_diff_max"]) == pytest.approx(0.1, rel=1e-5)
    assert int(m["logp_alarm"]) == 1
    assert int(grpo.logp_consistency(a, b, mask, threshold=0.06)["logp_alarm"]) == 0


def test_config_round_trip_and_bad_names():
    cfg = grpo.GRPOLossConfig.from_config(get_config("tiny").rl)
    assert cfg.kl_estimator == "k3" and cfg.kl_coef == 1e-2 and cfg.entropy_coef == 1e-3
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.GRPOLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="loss_agg"):
        grpo.GRPOLossConfig(loss_agg="sum")
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.GRPOLossConfig(dual_clip=0.5)


# ------------------------------------------------------------------ gradient check


def test_jitted_loss_gradient_matches_finite_differences():
    from jax.flatten_util import ravel_pytree

    from rewardmap_jax.rl.logprobs import token_logprobs

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        n, t, d, v = 4, 5, 3, 7
        x = jnp.asarray(rng.normal(size=(n, t, d)))
        tgt = jnp.asarray(rng.integers(0, v, (n, t)))
        params = {"w1": jnp.asarray(rng.normal(size=(d, d))),
                  "head": jnp.asarray(rng.normal(size=(d, v)))}
        mask = jnp.asarray(np.arange(t)[None] < np.array([5, 3, 1, 4])[:, None])
        adv = jnp.asarray([1.0, -0.5, 0.7, -1.2])
        cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.1,
                                  kl_estimator="k3", entropy_coef=0.01,
                                  loss_agg="seq-mean-token-mean")

        def logps_of(p):
            h = jnp.tanh(x @ p["w1"])
            return token_logprobs(h, tgt, lambda z: z @ p["head"], chunk_size=2, temperature=0.9)

        lp0, _ = logps_of(params)
        # behaviour logps off by up to ~0.3: some tokens inside the clip range, some clipped
        old = lp0 + jnp.asarray(rng.uniform(-0.3, 0.3, (n, t)))
        ref = lp0 + jnp.asarray(rng.normal(0, 0.2, (n, t)))

        @jax.jit
        def loss(p):
            lp, ent = logps_of(p)
            return grpo.grpo_loss(lp, old, ref, adv, mask, cfg, entropy=ent)[0]

        g = jax.grad(loss)(params)
        assert g["w1"].dtype == jnp.float64
        flat, unravel = ravel_pytree(params)
        f = jax.jit(lambda z: loss(unravel(z)))
        eps = 1e-6
        fd = np.array([(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps)
                       for i in range(flat.size)])
        np.testing.assert_allclose(ravel_pytree(g)[0], fd, rtol=1e-6, atol=1e-8)
        assert np.abs(fd).max() > 1e-3  # a real, non-trivial gradient


def test_jitted_loss_compiles_once_per_shape():
    cfg = grpo.GRPOLossConfig.from_config(get_config("tiny").rl)
    def loss(*args, **kw):  # a fresh function: jit caches are shared per wrapped function
        return grpo.grpo_loss(*args, **kw)

    f = jax.jit(loss, static_argnames="cfg")
    rng = np.random.default_rng(4)
    for _ in range(3):
        lp = jnp.asarray(np.log(rng.uniform(0.1, 1, (4, 6))), jnp.float32)
        mask = jnp.asarray(rng.integers(0, 2, (4, 6)))
        f(lp, lp + 0.1, lp - 0.1, jnp.asarray(rng.normal(size=4), jnp.float32), mask, cfg=cfg,
          entropy=jnp.ones((4, 6)))
    assert f._cache_size() == 1


def test_truncated_importance_sampling_weights():
    logps, old, adv, mask = _hand_batch()
    # sampler logps: row 0 t0 lower by ln 3 (w = 3, capped at 2), row 1 t0 higher by ln 2
    # (w = 0.5); others equal (w = 1)
    shift = jnp.array([[math.log(3.0), 0, 0], [-math.log(2.0), 0, 0]])
    cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0,
                              entropy_coef=0.0, tis_cap=2.0)
    loss, m = grpo.grpo_loss(logps, old, None, adv, mask, cfg, sampler_logps=old - shift)
    # per-token losses (-1.28, -1.1, -0.5 | 3, 0.8) weighted (2, 1, 1 | 0.5, 1) over 5 tokens
    expected = (2 * -1.28 - 1.1 - 0.5 + 0.5 * 3 + 0.8) / 5
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m["tis_weight_mean"]) == pytest.approx((2 + 1 + 1 + 0.5 + 1) / 5, rel=1e-5)
    with pytest.raises(ValueError, match="sampler_logps"):
        grpo.grpo_loss(logps, old, None, adv, mask, cfg)


def test_gspo_sequence_ratio_hand_values():
    """GSPO (arXiv 2507.18071): one ratio per sequence, the geometric mean of its token ratios.
    row 0 (A=+1): s0 = (1.5 * 1.1 * 0.5)^(1/3) = 0.825^(1/3) = 0.937850, inside [0.8, 1.28]:
      per-token loss -s0 on its 3 tokens;
    row 1 (A=-1, third token masked): s1 = (4.0 * 0.5)^(1/2) = sqrt 2 = 1.414214;
      max(s1, clip(s1) = 1.28) = s1 (A < 0 clips only below 0.8), under the dual clip 3.
    seq-mean-token-mean = the paper's (1/G) sum_i: (-0.937850 + 1.414214) / 2 = 0.238182.
    Gradient w.r.t. logp_t (GSPO-token: d s_i / d logp_t = s_i / |y_i|): row 0 each token
    -s0 / 3 / 2 = -0.156308; row 1 s1 / 2 / 2 = 0.353553 on its 2 tokens, 0 on the masked one.
    """
    logps, old, adv, mask = _hand_batch()
    s0, s1 = 0.825 ** (1 / 3), math.sqrt(2.0)
    cfg = grpo.GRPOLossConfig(policy_loss="gspo", clip_low=0.2, clip_high=0.28, dual_clip=3.0,
                              kl_coef=0.0, entropy_coef=0.0, loss_agg="seq-mean-token-mean")
    f = lambda lp, a: grpo.grpo_loss(lp, old, None, a, mask, cfg)  # noqa: E731
    (loss, m), grad = jax.value_and_grad(f, has_aux=True)(logps, adv)
    assert float(loss) == pytest.approx((-s0 + s1) / 2, rel=1e-5)
    np.testing.assert_allclose(grad, [[-s0 / 6] * 3, [s1 / 4, s1 / 4, 0.0]], rtol=1e-5)
    assert float(m["ratio_min"]) == pytest.approx(s0, rel=1e-5)
    assert float(m["ratio_max"]) == pytest.approx(s1, rel=1e-5)
    assert float(m["clipfrac"]) == 0.0
    # token-mean weighs sequences by their tokens: (3 * -s0 + 2 * s1) / 5
    tok = dataclasses.replace(cfg, loss_agg="token-mean")
    assert float(grpo.grpo_loss(logps, old, None, adv, mask, tok)[0]) == pytest.approx(
        (-3 * s0 + 2 * s1) / 5, rel=1e-4)
    # A = +1 on row 1 too: s1 > 1.28 is clipped, so the whole sequence gets no gradient
    # (per-sequence clipping); loss (-s0 - 1.28) / 2, clipfrac_high 2 of 5 tokens
    (loss, m), grad = jax.value_and_grad(f, has_aux=True)(logps, jnp.array([1.0, 1.0]))
    assert float(loss) == pytest.approx((-s0 - 1.28) / 2, rel=1e-5)
    np.testing.assert_allclose(grad[1], [0.0, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(grad[0], [-s0 / 6] * 3, rtol=1e-5)
    assert float(m["clipfrac_high"]) == pytest.approx(2 / 5)


def test_gspo_equals_grpo_on_one_token_sequences():
    """With one token per sequence the sequence ratio is the token ratio: same loss and
    gradient as the token-level GRPO loss."""
    rng = np.random.default_rng(5)
    lp = jnp.asarray(np.log(rng.uniform(0.1, 1, (6, 1))), jnp.float32)
    old = lp + jnp.asarray(rng.normal(0, 0.3, (6, 1)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=6), jnp.float32)
    mask = jnp.ones((6, 1))
    out = {}
    for name in ("grpo", "gspo"):
        cfg = grpo.GRPOLossConfig(policy_loss=name, kl_coef=0.0, entropy_coef=0.0)
        out[name] = jax.value_and_grad(
            lambda x, cfg=cfg: grpo.grpo_loss(x, old, None, adv, mask, cfg)[0])(lp)
    np.testing.assert_allclose(out["gspo"][0], out["grpo"][0], rtol=1e-6)
    np.testing.assert_allclose(out["gspo"][1], out["grpo"][1], rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(out["grpo"][1]).max()) > 1e-3


def test_overlong_penalty_hand_values():
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), max_len 10, buffer 4: no
    penalty up to 10 - 4 = 6 tokens, then (6 - |y|) / 4: 7 -> -0.25, 8 -> -0.5, 10 -> -1."""
    lengths = jnp.array([3, 6, 7, 8, 10])
    np.testing.assert_allclose(grpo.overlong_penalty(lengths, 10, 4),
                               [0, 0, -0.25, -0.5, -1.0], atol=1e-7)
    np.testing.assert_allclose(grpo.overlong_penalty(lengths, 10, 4, factor=0.5),
                               [0, 0, -0.125, -0.25, -0.5], atol=1e-7)
    np.testing.assert_array_equal(grpo.overlong_penalty(lengths, 10, 0), np.zeros(5))
    with pytest.raises(ValueError, match="overlong buffer 11"):
        grpo.overlong_penalty(lengths, 10, 11)
