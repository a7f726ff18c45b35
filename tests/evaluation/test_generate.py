"""Evaluation generation: every question exactly once in fixed-size batches, batches grouped by
image size, bad rows reported, and the completion cache (resume, fingerprint, torn lines)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from flax import nnx

from configs.curriculum import get_config
from rewardmap_jax.evaluation import data as D
from rewardmap_jax.evaluation import generate as G
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.rl import rollout as ro


def test_every_question_once_in_padded_batches_and_resume(tmp_path, monkeypatch):
    """5 questions of 2 types + 1 with a broken image, batches of 4: 4 + 4 + 2 real rows."""
    c = get_config("tiny")
    c.eval.batch_size = 4
    c.eval.max_new_tokens = 2
    records = D.mapworld_data("tiny", "val", 5, ("TorF1", "Counting3")).records
    broken = dataclasses.replace(records[0], uid="broken", figure=b"not a png")
    model = Qwen2_5_VL(get_preset("tiny"), nnx.Rngs(params=0))
    calls = []
    real = ro.sample
    monkeypatch.setattr(ro, "sample", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    cache = G.CompletionCache(tmp_path / "c.jsonl", {"model": "tiny"})
    out = G.generate(model, [*records, broken], c, cache=cache, progress=False)
    assert sorted(out.completions) == sorted(r.uid for r in records)  # each once
    assert [b["where"] for b in out.bad_rows] == ["broken"] and not out.stopped
    assert [p["prompt_ids"].shape[0] for p in calls] == [4, 4, 4]  # fixed batch shape
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"fingerprint": {"model": "tiny"}} and len(lines) == 11
    # Resumed from the cache: nothing left to generate.
    again = G.generate(model, records, c, cache=G.CompletionCache(tmp_path / "c.jsonl",
                                                                  {"model": "tiny"}),
                       progress=False)
    assert again.completions == out.completions and len(calls) == 3


def test_batches_are_grouped_by_image_size():
    c = get_config("tiny")
    tiny = D.mapworld_data("tiny", "val", 2, ("TorF1", "TorF2")).records  # 84 px maps
    small = D.mapworld_data("small", "val", 2, ("TorF1", "TorF2")).records  # larger maps
    mixed = [r for pair in zip(tiny, small, strict=True) for r in pair]
    spec = G.Batcher(c, "tiny", get_preset("tiny"), 4).spec
    ordered, bad = G.size_order(mixed, spec)
    assert not bad
    sizes = [G.image_size(r.figure) for r in ordered]
    assert sizes == sorted(sizes) and len(set(sizes[:4])) == len(set(sizes[4:])) == 1
    assert {r.uid for r in ordered[:4]} == {r.uid for r in tiny}


def test_cache_refuses_another_fingerprint_and_skips_torn_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = G.CompletionCache(path, {"step": 1})
    cache.add([("a", "yes"), ("b", "no")])
    with open(path, "a") as f:
        f.write('{"uid": "c", "compl')  # killed mid-write
    resumed = G.CompletionCache(path, {"step": 1})
    assert resumed.done == {"a": "yes", "b": "no"}
    resumed.add([("c", "3")])  # appended after the last complete line
    assert G.CompletionCache(path, {"step": 1}).done == {"a": "yes", "b": "no", "c": "3"}
    with pytest.raises(ValueError, match="was written for"):
        G.CompletionCache(path, {"step": 2})
