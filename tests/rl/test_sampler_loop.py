"""Decode-loop structure of rewardmap_jax/rl/sampler.py on a small fake decoder (same contract)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax.rl import decode, sampler
from tests.rl.fake_decoder import FAKE_ADAPTER, FakeDecoder

VOCAB, PAD, STOP = 40, 0, 3
FORBIDDEN = (30, 31, 32)


def make_model(seed=0):
    return FakeDecoder(VOCAB, 16, nnx.Rngs(seed))


def make_prompts(lengths, bucket, seed=0):
    """Left-padded prompts with non-trivial 3-axis positions (an 'image' jump on axes h/w)."""
    rng = np.random.default_rng(seed)
    ids, mask, pos = [], [], []
    for n in lengths:
        tok = rng.integers(4, 30, n)
        t = np.arange(n)
        hw = t + (t >= n // 2) * 3  # a gap, as after an image block
        ids.append(tok[None])
        mask.append(np.ones((1, n), bool))
        pos.append(np.stack([t, hw, hw + 1])[:, None])
    padded = [sampler.left_pad(i, m, p, bucket, PAD)
              for i, m, p in zip(ids, mask, pos, strict=True)]
    return sampler.PromptBatch(
        input_ids=np.concatenate([p[0] for p in padded]),
        attention_mask=np.concatenate([p[1] for p in padded]),
        positions=np.concatenate([p[2] for p in padded], axis=1),
    )


def params(**kw):
    base = dict(max_new_tokens=10, num_generations=2, temperature=1.0, stop_ids=(STOP,),
                pad_id=PAD, forbidden_ids=FORBIDDEN)
    base.update(kw)
    return sampler.SamplingParams(**base)


def teacher_forced_logp(model, prompts, rollout, g):
    """Log-probs of the completions from one full forward over prompt + completion."""
    ids = np.repeat(prompts.input_ids, g, 0)
    mask = np.repeat(prompts.attention_mask, g, 0)
    pos = np.repeat(prompts.positions, g, 1)
    toks = np.asarray(rollout.tokens)
    n, t = toks.shape
    start = pos.max(axis=(0, 2)) + 1
    comp_pos = np.broadcast_to(start[:, None] + np.arange(t), (3, n, t))
    full_ids = np.concatenate([ids, toks], 1)
    full_mask = np.concatenate([mask, np.ones_like(toks, bool)], 1)
    full_pos = np.concatenate([pos, comp_pos], 2)
    logits, _ = model(jnp.asarray(full_ids), jnp.asarray(full_pos), jnp.asarray(full_mask))
    logp = jax.nn.log_softmax(logits[:, ids.shape[1] - 1 : -1], -1)
    return np.take_along_axis(np.asarray(logp), toks[..., None], -1)[..., 0]


def test_logps_match_teacher_forced_forward_and_pads_after_stop():
    model, prompts = make_model(), make_prompts([5, 8], bucket=8)
    out = sampler.generate(model, FAKE_ADAPTER, prompts, params(temperature=1.3, top_k=12),
                           jax.random.key(0))
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert toks.shape == (4, 10) and lengths.shape == (4,)
    ref = teacher_forced_logp(model, prompts, out, 2)
    valid = np.arange(10)[None] < lengths[:, None]
    assert np.abs(np.where(valid, ref - np.asarray(out.logp_policy), 0)).max() <= 1e-4
    for row, n, fin in zip(toks, lengths, np.asarray(out.finished), strict=True):
        stops = np.flatnonzero(row == STOP)
        assert fin == (stops.size > 0)
        if fin:
            assert n == stops[0] + 1
            assert np.all(row[n:] == PAD)
        else:
            assert n == 10
    assert np.all(np.asarray(out.logp_policy)[~valid] == 0)
    assert np.asarray(out.finished).any() and not np.asarray(out.finished).all()


def test_greedy_matches_naive_full_recompute():
    model, prompts = make_model(1), make_prompts([4, 8], bucket=8)
    out = sampler.generate(model, FAKE_ADAPTER, prompts, params(temperature=0.0, stop_ids=()),
                           jax.random.key(0))
    # Greedy: the G = 2 samples of a prompt are identical.
    np.testing.assert_array_equal(out.tokens[0::2], out.tokens[1::2])
    # Fixed-size buffers: causal attention hides the not-yet-filled columns, so one compiled
    # full forward per step recomputes everything from scratch.
    start = prompts.positions.max(axis=(0, 2)) + 1
    ids = np.concatenate([prompts.input_ids, np.zeros((2, 10), np.int32)], 1)
    mask = np.concatenate([prompts.attention_mask, np.ones((2, 10), bool)], 1)
    comp = np.broadcast_to(start[None, :, None] + np.arange(10), (3, 2, 10))
    pos = np.concatenate([prompts.positions, comp], 2)
    forward = jax.jit(lambda i, p, m: model(i, p, m)[0])
    forb = np.zeros(VOCAB, bool)
    forb[list(FORBIDDEN)] = True
    for i in range(10):
        logits = np.asarray(forward(ids, pos, mask))[:, 7 + i]
        ids[:, 8 + i] = np.argmax(np.where(forb, -np.inf, logits), -1)
    np.testing.assert_array_equal(np.asarray(out.tokens)[0::2], ids[:, 8:])
    np.testing.assert_array_equal(np.asarray(out.logp_sample), 0.0)


def test_seed_reproducible_and_groups_differ():
    model, prompts = make_model(), make_prompts([6, 6], bucket=8)
    p = params(stop_ids=())
    a = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(7))
    b = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(7))
    c = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(8))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp_sample, b.logp_sample)
    assert not np.array_equal(a.tokens, c.tokens)
    # The G samples of one prompt share its prefix but draw independently.
    assert not np.array_equal(a.tokens[0], a.tokens[1])


def test_forbidden_never_emitted_when_rigged():
    model = make_model()
    # Rig the head: forbidden ids dominate every step.
    model.out.bias[...] = model.out.bias[...].at[jnp.array(FORBIDDEN)].set(100.0)
    prompts = make_prompts([5, 7], bucket=8)
    for t in (0.0, 1.0):
        out = sampler.generate(model, FAKE_ADAPTER, prompts, params(temperature=t),
                               jax.random.key(1))
        assert not np.isin(np.asarray(out.tokens), FORBIDDEN).any()
    unguarded = sampler.generate(model, FAKE_ADAPTER, prompts,
                                 params(temperature=0.0, forbidden_ids=()), jax.random.key(1))
    assert np.isin(np.asarray(unguarded.tokens), FORBIDDEN).all()  # the rig works


def test_early_exit_when_all_rows_stop():
    model = make_model()
    model.out.bias[...] = model.out.bias[...].at[STOP].set(100.0)
    out = sampler.generate(model, FAKE_ADAPTER, make_prompts([5, 7], bucket=8),
                           params(temperature=1.0), jax.random.key(1))
    assert int(out.steps) == 1
    np.testing.assert_array_equal(out.lengths, 1)
    assert np.all(np.asarray(out.tokens)[:, 1:] == PAD)


def test_compiles_once_per_bucket():
    model = make_model()
    jax.clear_caches()  # earlier tests compiled some of these shapes already
    sampler.TRACE_COUNTS.clear()
    decode.TRACE_COUNTS.clear()
    buckets = (8, 16)
    for i, lengths in enumerate([[3, 5], [7, 8], [9, 12], [16, 10], [2, 4], [11, 11]]):
        b = sampler.pick_bucket(max(lengths), buckets)
        p = params(temperature=0.5 + 0.1 * i, top_p=0.9 - 0.05 * i, top_k=i,
                   stop_ids=(STOP, 4)[: 1 + i % 2])
        sampler.generate(model, FAKE_ADAPTER, make_prompts(lengths, b, seed=i), p,
                         jax.random.key(i))
    # T = 10 is one segment: one copy of the decode step per compilation.
    assert sampler.TRACE_COUNTS == {"rollout": 2} and decode.TRACE_COUNTS == {"segment": 2}
    # Another class of setting (plain sampling, greedy) is another program, compiled once each;
    # its values stay traced.
    lengths = [3, 5]
    for i, (t, k, p) in enumerate([(0.7, 0, 1.0), (1.3, 0, 1.0), (0.0, 0, 1.0), (0.0, 3, 0.5)]):
        sampler.generate(model, FAKE_ADAPTER, make_prompts(lengths, 8, seed=i),
                         params(temperature=t, top_k=k, top_p=p), jax.random.key(i))
    assert sampler.TRACE_COUNTS == {"rollout": 4} and decode.TRACE_COUNTS == {"segment": 4}


# Segment ends (4, 8, 16) and unit buckets (4, 2, 1): 1 + 2 * 3 copies of the step.
SEGMENTED = sampler.DecodePlan(segments=3, min_segment=4, unit_buckets=3)


@pytest.mark.parametrize("g,temperature,bias", [(2, 1.3, 2.5), (1, 0.0, 0.3)],
                         ids=["sampled", "greedy"])
def test_compacted_decode_returns_the_uncompacted_rollout(g, temperature, bias):
    """Same key: segments + compaction give the single loop's tokens and log-probs, while rows
    of finished prompts stop being computed (row_steps)."""
    model = make_model(2)
    model.out.bias[...] = model.out.bias[...].at[STOP].set(bias)  # stops at varied steps
    prompts = make_prompts([5, 8, 3, 7, 6, 8, 2, 4], bucket=8, seed=3)
    p = params(max_new_tokens=16, num_generations=g, temperature=temperature)
    decode.TRACE_COUNTS.clear()
    got = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(5), SEGMENTED)
    assert decode.TRACE_COUNTS["segment"] == 7
    want = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(5),
                            sampler.SINGLE_LOOP)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_array_equal(got.finished, want.finished)
    steps = int(want.steps)
    assert int(got.steps) == steps
    np.testing.assert_allclose(got.logp_sample, want.logp_sample, atol=1e-5)
    np.testing.assert_allclose(got.logp_policy, want.logp_policy, atol=1e-5)
    lengths = np.asarray(want.lengths)
    assert lengths.min() <= 3 and lengths.max() >= 12  # early stops and long rows
    np.testing.assert_array_equal(want.row_steps, steps - 1)  # the single loop: every row
    expect = expected_row_steps(lengths, np.asarray(want.finished), 1,
                                [(1, 4), (4, 8), (8, 16)], (16, 8, 4))
    np.testing.assert_array_equal(got.row_steps, expect)
    assert expect.sum() < 0.8 * expect.size * (steps - 1)


def expected_row_steps(lengths, finished, unit, segments, buckets):
    """Decode steps each row is computed in under `rl.decode`'s schedule: each segment after the
    first runs the smallest bucket (in units of `unit` rows) holding the units still running,
    live units first, then finished ones in order to fill it; the loop ends when they stop."""
    n_units = lengths.size // unit
    live_row = lambda begin: ~finished | (lengths > begin)  # noqa: E731
    out = np.zeros_like(lengths)
    for k, (begin, end) in enumerate(segments):
        live = live_row(begin).reshape(n_units, unit).any(-1)
        if not live.any():
            break
        size = buckets[0] if k == 0 else min(b for b in buckets if b >= live.sum())
        units = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:size]
        rows = (units[:, None] * unit + np.arange(unit)).ravel()
        out[rows] += min(end, lengths[live_row(begin)].max()) - begin
    return out


def test_no_compaction_when_rows_are_split_over_devices():
    """Under data parallelism (rows over 8 devices) the plan keeps its segments but compacts
    nothing (a cross-shard gather would all-reduce the decode state): every row runs every step,
    though some stop early."""
    from rewardmap_jax.rl.placement import Placement

    model = make_model(2)
    model.out.bias[...] = model.out.bias[...].at[STOP].set(2.5)
    prompts = make_prompts([5, 8, 3, 7, 6, 8, 2, 4], bucket=8, seed=3)
    p = params(max_new_tokens=16, temperature=1.3)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    decode.TRACE_COUNTS.clear()
    with Placement(mesh, {"batch": "data"}).context():
        got = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(5),
                               sampler.DecodePlan(segments=2, min_segment=8, unit_buckets=3))
    assert decode.TRACE_COUNTS["segment"] == 2  # segments ending at 8 and 16, one bucket each
    lengths = np.asarray(got.lengths)
    assert lengths.min() < 8 and int(got.steps) > 8  # compaction would have dropped rows
    np.testing.assert_array_equal(got.row_steps, int(got.steps) - 1)


def test_row_streams_do_not_depend_on_the_batch_shape():
    key = jax.random.key(3)
    small = np.asarray(decode.row_uniforms(key, 3, 5))
    big = np.asarray(decode.row_uniforms(key, 6, 12))
    np.testing.assert_array_equal(small, big[:3, :5])
    assert 0.0 <= big.min() and big.max() < 1.0 and len(np.unique(big)) == big.size


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        sampler.pick_bucket(20, (8, 16))
    with pytest.raises(ValueError, match="also forbidden"):
        params(stop_ids=(30,))
    with pytest.raises(ValueError, match="top_p"):
        params(top_p=0.0)
    prompts = make_prompts([3], bucket=4)
    bad = sampler.PromptBatch(prompts.input_ids, prompts.attention_mask, prompts.positions[:2])
    with pytest.raises(ValueError, match=r"positions .* must be \(3, B, L\)"):
        sampler.generate(make_model(), FAKE_ADAPTER, bad, params(), jax.random.key(0))


def test_params_from_config_uses_rl_section_and_model_ids():
    from configs.curriculum import get_config
    from rewardmap_jax.model.config import tiny

    c = get_config("tiny")
    p = sampler.params_from_config(c.rl, tiny())
    assert (p.max_new_tokens, p.num_generations) == (c.rl.max_new_tokens, c.rl.num_generations)
    assert p.stop_ids == (1026,) and p.pad_id == 1024  # <|im_end|>, <|endoftext|>
    assert p.forbidden_ids == (1033, 1034, 1035, 1036, 1037)  # vision specials (tokens.md)
    c.rl.stop_ids = (1026, 1024)
    assert sampler.params_from_config(c.rl, tiny(), temperature=0.0).stop_ids == (1026, 1024)
    assert sampler.pick_bucket(65, (64, 128, 256)) == 128


def test_stale_rope_deltas_are_rejected():
    prompts = make_prompts([3, 4], bucket=6)
    deltas = np.asarray(sampler.rope_deltas_from_positions(prompts.positions,
                                                           prompts.attention_mask))
    # w axis max = (n - 1) + 3 (the gap) + 1; delta = max + 1 - L.
    np.testing.assert_array_equal(deltas, [2 + 3 + 1 + 1 - 6, 3 + 3 + 1 + 1 - 6])
    # Re-padding by 2 columns without updating the deltas would shift decode positions by 2.
    ids, m, pos = sampler.left_pad(prompts.input_ids, prompts.attention_mask,
                                   prompts.positions, 8, PAD)
    stale = sampler.PromptBatch(ids, m, pos, rope_deltas=deltas)
    with pytest.raises(ValueError, match="re-padded"):
        sampler.generate(make_model(), FAKE_ADAPTER, stale, params(), jax.random.key(0))


def test_generate_traces_inside_an_outer_jit():
    """`generate` under the caller's own `jax.jit` (how `benchmarks/real_shapes.py` compiles the
    prefill) gives the same rollout as called eagerly."""
    model = make_model(2)
    prompts = make_prompts([5, 8, 3], bucket=8, seed=1)
    p = params(max_new_tokens=4, temperature=1.0)
    want = sampler.generate(model, FAKE_ADAPTER, prompts, p, jax.random.key(2))
    got = jax.jit(lambda ids, mask, pos: sampler.generate(
        model, FAKE_ADAPTER, sampler.PromptBatch(ids, mask, pos), p, jax.random.key(2)))(
        prompts.input_ids, prompts.attention_mask, prompts.positions)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logp_policy, want.logp_policy, rtol=1e-6)
