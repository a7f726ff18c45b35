"""Real-format fixtures (ReasonMap, -Plus, -Train parquet) flow through the same pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.data.curriculum import Schedule, Stage
from rewardmap_jax.data.image_processing import ImageProcessorConfig, open_figure, preprocess
from rewardmap_jax.data.pipeline import BadRowError, DataPipeline
from rewardmap_jax.mapworld import loaders
from rewardmap_jax.mapworld.records import TASK_TYPES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _config(**data):
    c = get_config("tiny")
    # These tests are about the official one-pass schedule, not the tiny demo's stages.
    c.curriculum.preset = "official"
    c.curriculum.stages = ()
    c.data.shard = "none"
    c.data.source = "reasonmap"
    c.data.batch_size = 4
    for k, v in data.items():
        c.data[k] = v
    return c


def test_reasonmap_train_through_the_official_curriculum():
    c = _config(reasonmap_train_dir=str(FIXTURES / "reasonmap_train"))
    pipe = DataPipeline.from_config(c, with_targets=True)
    batches = list(pipe.iterator())
    assert len(batches) == pipe.num_steps == 3  # 12 records, 2 per type
    records = [r for b in batches for r in b["records"]]
    assert len({r.uid for r in records}) == 12
    assert all(r.source == "reasonmap_train" for r in records)
    stage = {"TorF1": 0, "TorF2": 0, "Counting2": 1, "Counting3": 1, "Counting1": 2, "planning": 3}
    assert np.all(np.diff([stage[r.type] for r in records]) >= 0)
    icfg = ImageProcessorConfig(min_pixels=c.data.min_pixels, max_pixels=c.data.max_pixels)
    for b in batches:  # same keys and dtypes as map-world batches; pixels from the files
        assert b["input_ids"].dtype == np.int32 and b["pixel_values"].dtype == np.float32
        for i, r in enumerate(b["records"]):
            rows, grid = preprocess(open_figure(r.figure, 10**8), icfg)
            off, n = b["patch_offsets"][i], b["num_patches"][i]
            assert np.array_equal(b["pixel_values"][off : off + n], rows)
            assert np.array_equal(b["image_grid_thw"][i], grid)
            assert TASK_TYPES[b["task_id"][i]] == r.type


def test_eval_split_reads_plus_and_reasonmap():
    c = _config(reasonmap_plus_dir=str(FIXTURES / "reasonmap_plus"),
                reasonmap_dir=str(FIXTURES / "reasonmap"))
    c.curriculum.preset = "shuffled"
    pipe = DataPipeline.from_config(c, split="test")
    sizes = {t: len(s) for t, s in pipe.sources.items()}
    assert sizes == {"TorF1": 2, "TorF2": 2, "Counting1": 2, "Counting2": 2, "Counting3": 2,
                     "planning": 8}
    batches = list(pipe.iterator())
    sources = {r.source for b in batches for r in b["records"]}
    assert len(batches) == 4 and sources == {"reasonmap", "reasonmap_plus"}


def test_bad_fixture_rows_raise_or_are_skipped_at_load():
    c = _config(reasonmap_train_dir=str(FIXTURES / "bad" / "train_bad.parquet"))
    with pytest.raises(loaders.BadRowError, match=r"train_bad.parquet: row \d"):
        DataPipeline.from_config(c)
    c = _config(reasonmap_train_dir=str(FIXTURES / "bad" / "train_bad.parquet"),
                on_bad_row="skip", batch_size=1)
    pipe = DataPipeline.from_config(c, schedule=Schedule((Stage("torf2", {"TorF2": 1.0}),)))
    assert sum(len(s) for s in pipe.sources.values()) == 1  # 4 bad rows left out
    assert len(list(pipe.iterator())) == 1


def test_file_going_bad_mid_stream(tmp_path):
    root = tmp_path / "train"
    shutil.copytree(FIXTURES / "reasonmap_train", root)
    for on_bad_row in ("skip", "raise"):
        c = _config(reasonmap_train_dir=str(root), on_bad_row=on_bad_row)
        c.curriculum.preset = "shuffled"
        pipe = DataPipeline.from_config(c)  # loads and checks every figure
        victim = pipe.sources["planning"][0]
        Path(victim.figure).write_bytes(b"truncated")  # breaks after loading
        it = pipe.iterator()
        if on_bad_row == "raise":
            with pytest.raises(BadRowError, match=f"uid {victim.uid}: ValueError: cannot decode"):
                list(it)
            continue
        uids = [r.uid for b in it for r in b["records"]]
        assert victim.uid not in uids
        assert it.get_state()["bad_rows"] >= 1
        shutil.rmtree(root)
        shutil.copytree(FIXTURES / "reasonmap_train", root)


def test_evaluation_keeps_every_record():
    c = _config(reasonmap_plus_dir=str(FIXTURES / "reasonmap_plus"),
                reasonmap_dir=str(FIXTURES / "reasonmap"))
    c.curriculum.preset = "shuffled"
    pipe = DataPipeline.from_config(c, split="test", drop_remainder=False)
    batches = list(pipe.iterator())
    assert len(batches) == 5  # 18 records, batch 4
    assert [int(b["valid"].sum()) for b in batches] == [4, 4, 4, 4, 2]
    valid = [r.uid for b in batches for r, v in zip(b["records"], b["valid"], strict=True) if v]
    assert len(valid) == len(set(valid)) == 18
    assert all(b["input_ids"].shape[0] == 4 for b in batches)
