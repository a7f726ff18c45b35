"""The Grain pipeline: batch contents, bucketed shapes, exact resume, sharding, bad rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from configs.curriculum import get_config
from rewardmap_jax.data import prompts
from rewardmap_jax.data.curriculum import Schedule, Stage, preset_schedule
from rewardmap_jax.data.image_processing import ImageProcessorConfig, preprocess
from rewardmap_jax.data.pipeline import BadRowError, DataPipeline
from rewardmap_jax.data.sources import RecordListSource, mapworld_sources
from rewardmap_jax.data.tokenizer import load_tokenizer, special_token_ids
from rewardmap_jax.mapworld.records import TASK_TYPES, Record


def _config(**data):
    c = get_config("tiny")
    # These tests are about the official one-pass schedule, not the tiny demo's stages.
    c.curriculum.preset = "official"
    c.curriculum.stages = ()
    c.data.mapworld_questions_per_task = 8
    c.data.shard = "none"
    for k, v in data.items():
        c.data[k] = v
    return c


def _png(w, h, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _fake_sources(n=24, bad=None):
    """Counting2/TorF1 records with random image sizes and question lengths (PNG bytes)."""
    rng = np.random.default_rng(0)
    out = {}
    for t in ("Counting2", "TorF1"):
        recs = []
        for i in range(n):
            w, h = (int(x) for x in rng.integers(20, 120, 2))
            fig = _png(w, h, i) if (bad or {}).get((t, i)) is None else bad[(t, i)]
            q = "How many lines pass through station " + "X" * int(rng.integers(1, 60)) + "?"
            recs.append(Record(uid=f"{t}-{i}", type=t, question=q, answer=int(i % 2),
                               figure=fig, metro={"Red Line": ["A", "B"]}))
        out[t] = RecordListSource(tuple(recs), t)
    return out


MIX = Schedule((Stage("mix", {"Counting2": 1.0, "TorF1": 1.0}),))


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "records":
            assert [r.uid for r in a[k]] == [r.uid for r in b[k]]
        else:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_batch_contents_match_per_example_processing():
    c = _config()
    pipe = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(), with_targets=True)
    batch = next(pipe.iterator())
    tok = load_tokenizer("tiny")
    special = special_token_ids(tok)
    icfg = ImageProcessorConfig(min_pixels=c.data.min_pixels, max_pixels=c.data.max_pixels)
    b = pipe.local_batch_size
    assert batch["input_ids"].shape[0] == b and len(batch["records"]) == b
    for i, rec in enumerate(batch["records"]):
        src = pipe.sources[rec.type][int(rec.uid.split("-")[1])]
        rows, grid = preprocess(Image.open(io.BytesIO(src.figure)), icfg)
        off, n = batch["patch_offsets"][i], batch["num_patches"][i]
        assert n == len(rows) and np.array_equal(batch["image_grid_thw"][i], grid)
        assert np.array_equal(batch["pixel_values"][off : off + n], rows)
        assert np.all(batch["patch_segment_ids"][off : off + n] == i + 1)
        ids = prompts.encode_prompt(tok, src, grid, special)
        row, mask = batch["input_ids"][i], batch["attention_mask"][i]
        assert np.array_equal(row[mask == 1], ids) and np.all(row[mask == 0] == special.pad)
        assert np.all(np.diff(mask) >= 0)  # left padding
        assert (ids == special.image_pad).sum() == n // 4
        target = batch["target_ids"][i][batch["target_mask"][i] == 1]
        assert tok.decode(target) == prompts.target_text(src) + "<|im_end|>"
        assert TASK_TYPES[batch["task_id"][i]] == rec.type and rec.figure is None
    total = batch["num_patches"].sum()
    assert np.all(batch["patch_segment_ids"][total:] == 0)
    assert np.all(batch["pixel_values"][total:] == 0)
    assert batch["pixel_values"].shape[0] in c.data.patch_buckets
    assert batch["input_ids"].shape[1] in c.data.prompt_buckets


def test_shapes_are_bounded_by_buckets():
    c = _config()
    c.curriculum.repeat = True
    pipe = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources())
    it = pipe.iterator()
    shapes = set()
    for _ in range(30):  # 5 passes over 48 records
        batch = next(it)
        shapes.add(tuple(v.shape for k, v in sorted(batch.items()) if k != "records"))
    assert 1 < len(shapes) <= pipe.max_distinct_shapes
    assert pipe.max_distinct_shapes == len(c.data.prompt_buckets) * len(c.data.patch_buckets)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_following_batches(workers):
    c = _config(worker_count=workers)
    pipe = DataPipeline.from_config(c, with_targets=True)
    assert pipe.num_steps == 6  # official, 8 per task, batch 8
    it = pipe.iterator()
    _batches(it, 2)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    want = _batches(it, 3)
    fresh = DataPipeline.from_config(c, with_targets=True).iterator()
    fresh.set_state(state)
    for a, b in zip(_batches(fresh, 3), want, strict=True):
        _assert_same(a, b)
    if workers:  # processing in workers gives exactly the in-process batches
        ref = DataPipeline.from_config(_config(worker_count=0), with_targets=True).iterator()
        for a, b in zip(_batches(ref, 5)[2:], want, strict=True):
            _assert_same(a, b)


def test_official_stream_follows_the_plan_and_ends():
    c = _config()
    pipe = DataPipeline.from_config(c)
    batches = list(pipe.iterator())
    assert len(batches) == pipe.num_steps == 6
    for step, batch in enumerate(batches):
        assert batch["stage"][0] == pipe.stage_at(step)
        assert np.array_equal(batch["element"], np.arange(step * 8, step * 8 + 8))
    uids = [r.uid for b in batches for r in b["records"]]
    assert len(set(uids)) == 48  # each record exactly once
    order = [TASK_TYPES.index(r.type) for b in batches for r in b["records"]]
    stage_of = {0: 0, 1: 0, 3: 1, 4: 1, 2: 2, 5: 3}
    assert np.all(np.diff([stage_of[t] for t in order]) >= 0)


def test_two_hosts_read_disjoint_halves_of_each_global_batch():
    c = _config()
    single = _batches(DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources()
                                               ).iterator(), 2)
    hosts = [_batches(DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(),
                                               shard_index=h, shard_count=2).iterator(), 2)
             for h in range(2)]
    for step in range(2):
        uids = [r.uid for h in range(2) for r in hosts[h][step]["records"]]
        assert uids == [r.uid for r in single[step]["records"]]
        assert hosts[0][step]["input_ids"].shape[0] == 4


@pytest.mark.parametrize("layout", [((0, 1, 2, 3), (4, 5, 6, 7)), ((0, 2, 4, 6), (1, 3, 5, 7)),
                                    ((0, 1, 2, 3, 4, 5, 6, 7),)])
def test_hosts_reading_their_rows_make_the_single_host_batches(layout):
    """Each host reads, decodes and preprocesses only the rows its devices hold (any layout);
    together they make the global batches one host reading everything makes."""
    c = _config(shard="jax_process")
    single = _batches(DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(),
                                               rows=range(8)).iterator(), 3)
    for step in range(3):
        got = {}
        for rows in layout:
            b = _batches(DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(),
                                                  rows=rows).iterator(), step + 1)[step]
            assert list(b["element"]) == [step * 8 + r for r in rows]
            got.update(zip(rows, (r.uid for r in b["records"]), strict=True))
        assert [got[i] for i in range(8)] == [r.uid for r in single[step]["records"]]


def test_iterator_resumes_on_another_topology():
    """Saved by 2 hosts after 2 global batches, resumed by 1 (and the reverse): the next global
    batch is the one the uninterrupted single-host stream reads."""
    c = _config(shard="jax_process")

    def pipe(rows):
        return DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(), rows=rows)

    full = _batches(pipe(range(8)).iterator(), 4)
    halves = [pipe(r).iterator() for r in ((0, 1, 2, 3), (4, 5, 6, 7))]
    for it in halves:
        _batches(it, 2)
    state = json.loads(json.dumps(halves[1].get_state()))
    assert state["batches"] == 2 and state["rows"] == [4, 5, 6, 7]
    one = pipe(range(8)).restore_iterator(state)
    assert [r.uid for r in next(one)["records"]] == [r.uid for r in full[2]["records"]]
    # and 1 -> 2: each half continues with its rows of global batch 3
    state = json.loads(json.dumps(one.get_state()))
    assert state["batches"] == 3
    back = pipe((4, 5, 6, 7)).restore_iterator(state)
    assert list(next(back)["element"]) == [3 * 8 + r for r in (4, 5, 6, 7)]
    # same layout: Grain's exact position
    same = pipe(range(8)).restore_iterator(state)
    assert [r.uid for r in next(same)["records"]] == [r.uid for r in full[3]["records"]]
    with pytest.raises(ValueError, match="bad rows were skipped"):
        pipe((0, 1, 2, 3)).restore_iterator(dict(state, bad_rows=1))
    with pytest.raises(ValueError, match="another layout"):
        pipe((0, 1, 2, 3)).iterator().set_state(state)


def test_bad_rows_skip_or_raise(tmp_path):
    bad = {("Counting2", 3): b"\x89PNG\r\n\x1a\n broken", ("TorF1", 5): str(tmp_path / "no.png")}
    c = _config(on_bad_row="skip")
    pipe = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(bad=bad))
    it = pipe.iterator()
    batches = list(it)
    assert it.get_state()["bad_rows"] == 2
    uids = [r.uid for b in batches for r in b["records"]]
    assert "Counting2-3" not in uids and "TorF1-5" not in uids
    assert all(len(b["records"]) == 8 for b in batches) and len(uids) == 40  # 46 good -> 5 full
    c = _config(on_bad_row="raise")
    it = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(bad=bad)).iterator()
    with pytest.raises(BadRowError, match=r"bad data row: element \d+ .*uid (Counting2-3|TorF1-5)"):
        list(it)


def test_skip_mode_stops_when_everything_is_bad():
    c = _config(on_bad_row="skip", max_consecutive_bad_rows=5)
    bad = {(t, i): b"junk" for t in ("Counting2", "TorF1") for i in range(24)}
    it = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources(bad=bad)).iterator()
    with pytest.raises(BadRowError, match="6 bad rows in a row"):
        next(it)


def test_prompt_too_long_is_a_bad_row_with_a_clear_message():
    c = _config(prompt_buckets=(32,))
    it = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources()).iterator()
    with pytest.raises(BadRowError, match="above the largest prompt bucket 32"):
        next(it)


def test_mapworld_sources_are_deterministic():
    src = mapworld_sources("tiny", "train", 4, ("TorF1",))["TorF1"]
    a, b = src[2], src[2]
    assert a.uid == b.uid and a.question == b.question
    assert np.array_equal(np.asarray(a.figure), np.asarray(b.figure))
    with pytest.raises(IndexError):
        src[4]


def test_config_errors():
    c = _config(on_bad_row="ignore")
    with pytest.raises(ValueError, match="on_bad_row"):
        DataPipeline.from_config(c)
    c = _config()
    with pytest.raises(ValueError, match="not divisible"):
        DataPipeline.from_config(c, shard_index=0, shard_count=3)
    with pytest.raises(ValueError, match="no source provides"):
        DataPipeline.from_config(c, schedule=preset_schedule("official"),
                                 sources=_fake_sources())


def test_bfloat16_pixels_and_jax_process_sharding():
    import ml_dtypes

    c = _config(pixel_dtype="bfloat16", shard="jax_process")  # one process: shard 0 of 1
    pipe = DataPipeline.from_config(c, schedule=MIX, sources=_fake_sources())
    assert pipe.rows == tuple(range(pipe.batch_size))
    low = next(pipe.iterator())
    full = next(DataPipeline.from_config(_config(), schedule=MIX,
                                         sources=_fake_sources()).iterator())
    assert low["pixel_values"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(low["pixel_values"], full["pixel_values"].astype(ml_dtypes.bfloat16))


def test_mapworld_source_accepts_a_world_config():
    from rewardmap_jax.mapworld.generator import get_world

    plain = mapworld_sources("tiny", "train", 4, ("TorF1",))["TorF1"][1]
    marked = mapworld_sources(get_world("tiny", highlight=True), "train", 4, ("TorF1",))[
        "TorF1"][1]
    assert plain.question == marked.question
    assert not np.array_equal(np.asarray(plain.figure), np.asarray(marked.figure))
