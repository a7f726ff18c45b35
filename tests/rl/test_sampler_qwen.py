"""Sampler on the real Qwen2.5-VL port vs transformers (tiny random weights, fp32, CPU)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from rewardmap_jax.model import hf_io, rope_index
from rewardmap_jax.model.vision_layout import pack_vision_inputs
from rewardmap_jax.rl import sampler
from tests.model import hf_reference as ref
from tests.rl.test_sampler_loop import expected_row_steps

T_NEW = 32
EOS, PAD = 1, 0
# Images of different sizes: 2x3 and 4x4 merged tokens, and a 3x2 one.
GRIDS = np.array([[1, 4, 6], [1, 8, 8], [1, 6, 4]])
ROWS = [[], [0], [1, 2]]  # prompts with 0, 1 and 2 images, different lengths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = ref.hf_model(tie=False, seed=3)
    d = tmp_path_factory.mktemp("hf_sampler")
    hf.save_pretrained(d)
    return hf, hf_io.load_hf(str(d))


def prompt_batch(cfg, grids=GRIDS, rows=ROWS, seed=0):
    ids, mask = ref.left_padded_batch(grids, rows, seed=seed)
    pv = ref.pixels(grids, seed=seed)
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, grids)
    vision = pack_vision_inputs(pv, grids, cfg.vision)
    batch = sampler.PromptBatch(input_ids=ids.astype(np.int32), attention_mask=mask.astype(bool),
                                positions=pos, rope_deltas=deltas, vision=vision)
    return batch, (ids, mask, pv)


def hf_generate(hf, ids, mask, pv, grids, forbidden, eos=EOS):
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grids),
            mm_token_type_ids=torch.tensor((ids == ref.IMG).astype(np.int64)),
            do_sample=False, max_new_tokens=T_NEW, bad_words_ids=[[i] for i in forbidden],
            eos_token_id=eos, pad_token_id=PAD,
        )
    new = out[:, ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, T_NEW - new.shape[1])), constant_values=PAD)


def pick_stop_token(toks):
    """A token row 0 emits after a few steps that some other row never emits: with it as the
    stop id, rows stop at different steps (or not at all) and padding after the stop is exercised.
    """
    for t in toks[0, 4:]:
        if t != PAD and any(t not in row for row in toks[1:]):
            return int(t)
    raise AssertionError(f"no usable stop token in {toks}")


ADAPTERS = pytest.mark.parametrize(
    "adapter", [sampler.QWEN2_5_VL, sampler.QWEN2_5_VL_REPEAT], ids=["shared", "repeat"]
)


@ADAPTERS
def test_greedy_equals_transformers_generate(models, adapter):
    hf, model = models
    cfg = model.cfg
    batch, (ids, mask, pv) = prompt_batch(cfg)
    forbidden = sampler.vision_special_ids(cfg)
    assert set(forbidden) >= {ref.IMG, ref.VID, ref.VS, ref.VE}
    params = sampler.SamplingParams(max_new_tokens=T_NEW, num_generations=2, temperature=0.0,
                                    stop_ids=(EOS,), pad_id=PAD, forbidden_ids=forbidden)
    free = sampler.generate(model, adapter, batch, params, jax.random.key(0))
    stop = pick_stop_token(np.asarray(free.tokens)[0::2])
    params = sampler.SamplingParams(**{**params.__dict__, "stop_ids": (stop,)})
    out = sampler.generate(model, adapter, batch, params, jax.random.key(0))
    want = hf_generate(hf, ids, mask, pv, GRIDS, forbidden, eos=stop)
    toks = np.asarray(out.tokens)
    np.testing.assert_array_equal(toks[0::2], want)
    np.testing.assert_array_equal(toks[1::2], want)
    fin, lengths = np.asarray(out.finished), np.asarray(out.lengths)
    assert fin[0] and not fin.all() and lengths.max() == T_NEW  # a 32-token row is compared


@ADAPTERS
def test_sampled_logps_equal_teacher_forced_transformers(models, adapter):
    hf, model = models
    cfg = model.cfg
    batch, (ids, mask, pv) = prompt_batch(cfg, seed=1)
    params = sampler.SamplingParams(max_new_tokens=T_NEW, num_generations=2, temperature=1.0,
                                    top_k=50, stop_ids=(EOS, 7), pad_id=PAD,
                                    forbidden_ids=sampler.vision_special_ids(cfg))
    out = sampler.generate(model, adapter, batch, params, jax.random.key(1))
    again = sampler.generate(model, adapter, batch, params, jax.random.key(1))
    np.testing.assert_array_equal(out.tokens, again.tokens)  # fixed seed: same rollout
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    g = 2
    n = toks.shape[0]
    valid = np.arange(T_NEW)[None] < lengths[:, None]
    # Teacher-forced transformers forward over prompt + completion, explicit 3-D positions.
    start = batch.positions.max(axis=(0, 2)) + 1
    comp_pos = np.broadcast_to(np.repeat(start, g)[:, None] + np.arange(T_NEW), (3, n, T_NEW))
    full_ids = np.concatenate([np.repeat(ids, g, 0), toks], 1)
    full_mask = np.concatenate([np.repeat(mask, g, 0), valid.astype(np.int64)], 1)
    full_pos = np.concatenate([np.repeat(batch.positions, g, 1), comp_pos], 2)
    # Each prompt's images again for each of its G copies, in row order.
    img_rows = [i for r in ROWS for _ in range(g) for i in r]
    starts = np.concatenate([[0], np.cumsum(np.prod(GRIDS, 1))])
    pv_rep = np.concatenate([pv[starts[i]:starts[i + 1]] for i in img_rows])
    logits = ref.hf_logits(hf, full_ids, full_mask, pv_rep, GRIDS[img_rows], full_pos)
    lp = torch.log_softmax(torch.tensor(logits[:, ids.shape[1] - 1:-1]), -1).numpy()
    want = np.take_along_axis(lp, toks[..., None], -1)[..., 0]
    err = np.abs(np.where(valid, want - np.asarray(out.logp_policy), 0)).max()
    assert err <= 1e-4, err
    assert np.all(np.asarray(out.logp_policy)[~valid] == 0)
    # Under top-k the sampling log-probs renormalise over fewer tokens: never below the policy's.
    assert np.all(np.asarray(out.logp_sample)[valid] >= np.asarray(out.logp_policy)[valid] - 1e-5)


def test_compacted_rollout_equals_transformers(models):
    """Segments (16, 32) with compaction of finished prompts (buckets 3, 2, 1) through the
    shared cache's take/put: greedy tokens equal transformers', finished prompts stop being
    computed. (Sampled rows under compaction: test_sampler_loop, on the fake decoder.)"""
    hf, model = models
    cfg = model.cfg
    batch, (ids, mask, pv) = prompt_batch(cfg)
    forbidden = sampler.vision_special_ids(cfg)
    plan = sampler.DecodePlan(segments=2, min_segment=16)
    greedy = sampler.SamplingParams(max_new_tokens=T_NEW, num_generations=2, temperature=0.0,
                                    stop_ids=(EOS,), pad_id=PAD, forbidden_ids=forbidden)
    # The default plan at T = 32 is one loop: test_greedy_equals_transformers_generate's program.
    free = sampler.generate(model, sampler.QWEN2_5_VL, batch, greedy, jax.random.key(0))
    stop = pick_stop_token(np.asarray(free.tokens)[0::2])
    greedy = sampler.SamplingParams(**{**greedy.__dict__, "stop_ids": (stop,)})
    out = sampler.generate(model, sampler.QWEN2_5_VL, batch, greedy, jax.random.key(0), plan)
    want = hf_generate(hf, ids, mask, pv, GRIDS, forbidden, eos=stop)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.repeat(want, 2, axis=0))
    lengths, fin = np.asarray(out.lengths), np.asarray(out.finished)
    assert lengths[0] < 16 and lengths.max() > 16  # prompt 0 is compacted away at step 16
    expect = expected_row_steps(lengths, fin, 2, [(1, 16), (16, T_NEW)], (3, 2, 1))
    np.testing.assert_array_equal(out.row_steps, expect)
    assert expect[0] == 15 and expect.max() == int(out.steps) - 1


def sampling_params(cfg):
    """Plain sampling, G = 2, T_NEW tokens, stop on EOS, vision tokens forbidden."""
    return sampler.SamplingParams(max_new_tokens=T_NEW, num_generations=2, temperature=1.0,
                                  stop_ids=(EOS,), pad_id=PAD,
                                  forbidden_ids=sampler.vision_special_ids(cfg))


def test_vision_tokens_never_sampled_when_rigged(models):
    _, model = models
    cfg = model.cfg
    forbidden = sampler.vision_special_ids(cfg)
    rigged = nnx.clone(model)  # leave the shared fixture untouched
    head = rigged.lm_head.kernel
    head[...] = head[...].at[:, np.array(forbidden)].multiply(40.0)
    batch, _ = prompt_batch(cfg)
    params = sampler.SamplingParams(max_new_tokens=T_NEW, num_generations=2, temperature=1.0,
                                    stop_ids=(EOS,), pad_id=PAD, forbidden_ids=forbidden)
    out = sampler.generate(rigged, sampler.QWEN2_5_VL, batch, params, jax.random.key(2))
    assert not np.isin(np.asarray(out.tokens), forbidden).any()
    # Without the guard the rigged head emits them (4 of 256 ids: ~1.6% if unrigged).
    loose = sampler.generate(rigged, sampler.QWEN2_5_VL, batch,
                             sampler.SamplingParams(**{**params.__dict__, "forbidden_ids": ()}),
                             jax.random.key(2))
    assert np.isin(np.asarray(loose.tokens), forbidden).mean() > 0.2


def test_new_images_same_buckets_do_not_recompile(models):
    _, model = models
    cfg = model.cfg
    params = sampling_params(cfg)
    batch, _ = prompt_batch(cfg)
    sampler.generate(model, sampler.QWEN2_5_VL, batch, params, jax.random.key(0))
    before = sampler.TRACE_COUNTS["rollout"]
    # Different image sizes and placement, padded to the same prompt and patch buckets.
    grids = np.array([[1, 6, 6], [1, 4, 4], [1, 2, 8]])
    other, _ = prompt_batch(cfg, grids, [[0, 1], [], [2]], seed=4)
    length = batch.input_ids.shape[1]
    ids, m, pos = sampler.left_pad(other.input_ids, other.attention_mask, other.positions,
                                   length, PAD)
    vis = pack_vision_inputs(ref.pixels(grids, 4), grids, cfg.vision,
                             num_patches=batch.vision.pixels.shape[0])
    other = sampler.PromptBatch(ids, m, pos, None, vis)
    out = sampler.generate(model, sampler.QWEN2_5_VL, other,
                           sampler.SamplingParams(**{**params.__dict__, "temperature": 0.7}),
                           jax.random.key(5))
    assert out.tokens.shape == (6, T_NEW)
    assert sampler.TRACE_COUNTS["rollout"] == before


def test_split_policy_same_rollout_same_program(models):
    """The (graphdef, state) pair the trainer holds samples what the module samples, through the
    same compiled program; anything else is refused, and so is a forbidden id outside the
    vocabulary (when the program is traced, before anything runs)."""
    _, model = models
    cfg = model.cfg
    params = sampling_params(cfg)
    batch, _ = prompt_batch(cfg)
    want = sampler.generate(model, sampler.QWEN2_5_VL, batch, params, jax.random.key(7))
    before = sampler.TRACE_COUNTS["rollout"]
    pair = nnx.split(model)
    assert sampler.split_policy(pair) is pair
    got = sampler.generate(pair, sampler.QWEN2_5_VL, batch, params, jax.random.key(7))
    assert sampler.TRACE_COUNTS["rollout"] == before
    for name in ("tokens", "lengths", "logp_policy"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                      np.asarray(getattr(want, name)), err_msg=name)
    with pytest.raises(TypeError, match="nnx.Module or the .graphdef, state. pair"):
        sampler.generate(pair[1], sampler.QWEN2_5_VL, batch, params, jax.random.key(7))
    bad = sampler.SamplingParams(**{**params.__dict__,
                                    "forbidden_ids": (cfg.text.vocab_size + 3,)})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampler.generate(pair, sampler.QWEN2_5_VL, batch, bad, jax.random.key(7))


@pytest.mark.slow
def test_sharded_model_and_batch_same_rollout(models):
    """Params sharded by the config's logical rules (fsdp + tensor), rows over data: same output."""
    from configs.curriculum import get_config
    from rewardmap_jax.model import sharding

    _, model = models
    cfg = model.cfg
    rows, grids = [[0], [1, 2]], GRIDS
    batch, _ = prompt_batch(cfg, grids, rows, seed=2)
    params = sampler.SamplingParams(max_new_tokens=8, num_generations=2, temperature=1.0,
                                    stop_ids=(EOS,), pad_id=PAD,
                                    forbidden_ids=sampler.vision_special_ids(cfg))
    ref_out = sampler.generate(model, sampler.QWEN2_5_VL, batch, params, jax.random.key(9))

    mesh_cfg = get_config().mesh
    mesh_cfg.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:8])
    rules = sharding.rules_from_config(mesh_cfg)
    graphdef, state = nnx.split(model)
    state = sharding.shard_state(state, sharding.state_shardings(state, mesh, rules))
    sharded_model = nnx.merge(graphdef, state)
    rows_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    pos_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    sharded = sampler.PromptBatch(
        input_ids=jax.device_put(batch.input_ids, rows_sh),
        attention_mask=jax.device_put(batch.attention_mask, rows_sh),
        positions=jax.device_put(batch.positions, pos_sh),
        rope_deltas=batch.rope_deltas, vision=batch.vision,
    )
    out = sampler.generate(sharded_model, sampler.QWEN2_5_VL, sharded, params, jax.random.key(9))
    np.testing.assert_array_equal(out.tokens, ref_out.tokens)
    np.testing.assert_allclose(out.logp_policy, ref_out.logp_policy, atol=1e-5)
    assert len(out.tokens.sharding.device_set) == 8


def test_shared_mode_holds_one_prompt_cache_per_prompt(models):
    """Decode-state shapes (abstract, nothing runs): shared keeps B*L prompt slots + B*G*T
    suffix slots; repeat keeps B*G*(L+T)."""
    _, model = models
    cfg = model.cfg
    batch, _ = prompt_batch(cfg)
    b, length = batch.input_ids.shape
    g, t = 4, 16
    kv, hd = cfg.text.num_key_value_heads, cfg.text.head_dim

    def state(adapter):
        return jax.eval_shape(lambda: sampler._prefill(
            adapter, model, batch.input_ids, batch.positions, batch.attention_mask,
            batch.vision, g, t))

    logits, shared = state(sampler.QWEN2_5_VL)
    assert logits.shape == (b * g, cfg.text.vocab_size)
    assert shared.prefix.k[0].shape == (b, kv, length, hd)  # head-major
    assert shared.suffix.k[0].shape == (b * g, kv, t, hd)
    _, repeated = state(sampler.QWEN2_5_VL_REPEAT)
    assert repeated.k[0].shape == (b * g, kv, length + t, hd)
