"""Parser arrays (ids, padding, widths, buckets, errors) and the reward's compile count."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.rewards import parse as P
from rewardmap_jax.rewards import reward as R
from rewardmap_jax.rewards.tables import PAD_ID, UNKNOWN_ID, TablesCache, build_tables
from tests.rewards.worlds import (
    mutate_plan,
    plan_text,
    planning,
    random_planning_record,
    random_vqa,
    vqa,
)


def test_ids_padding_and_record_rows():
    rec = planning("A", "F", 1)
    other = vqa("TorF1", 1)
    texts = [
        plan_text([("Line 1", "A Station", "B"), ("Line 9", "Nowhere", "F")]),
        "no plan",
        "\\boxed{yes}",
    ]
    a = P.parse_batch([rec, rec, other], texts, P.ParseSpec(max_sections=4))
    t = build_tables(rec)
    # vocabulary ids in metro order: A B C D E F G H; lines in key order
    assert [t.station_index[k] for k in "abcdefgh"] == list(range(8))
    np.testing.assert_array_equal(a["det_route"][0], [0, UNKNOWN_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(a["det_dep"][0], [0, UNKNOWN_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(a["det_arr"][0], [1, 5, PAD_ID, PAD_ID])
    assert (a["det_n"][0], a["det_first_dep"][0], a["det_last_arr"][0]) == (2, 0, 5)
    assert a["det_n"][1] == 0 and a["det_first_dep"][1] == PAD_ID
    np.testing.assert_array_equal(a["rec"], [0, 0, 1])  # same record object -> one row
    assert a["member"].shape == (8, 8, 64)  # R, L, V rounded up to the buckets
    assert (a["s1"][0], a["s2"][0], a["transfers"][0], a["answer"][1]) == (0, 5, 1, 1)
    assert a["vqa_code"][2] == 1 and a["format_ok"][2]
    assert a["member"][0, 1, 5] and not a["member"][0, 0, 5]  # F on Line 2, not Line 1


def test_bucket_errors_and_bad_input():
    assert P.bucket(65, (64, 256), "x") == 256
    with pytest.raises(ValueError, match="exceeds the largest configured bucket 256"):
        P.bucket(300, (64, 256), "stations per record")
    with pytest.raises(ValueError, match="2 records but 1 completions"):
        P.parse_batch([vqa("TorF1", 1)] * 2, ["x"])
    with pytest.raises(ValueError, match="empty batch"):
        P.parse_batch([], [])
    with pytest.raises(ValueError, match="completion 0 is NoneType"):
        P.parse_batch([vqa("TorF1", 1)], [None])
    bad = planning("A", "D", 0)
    bad.station_2 = None
    with pytest.raises(ValueError, match="needs station_1 and station_2"):
        P.parse_batch([bad], ["x"])
    with pytest.raises(ValueError, match=r"question_transfer_count 5 >= reward.max_sections 4"):
        P.parse_batch([planning("A", "D", 5)], ["x"], P.ParseSpec(max_sections=4))
    with pytest.raises(ValueError, match="VQA record needs an int answer"):
        P.parse_batch([vqa("Counting2", None)], ["x"])
    cfg = get_config().reward
    cfg.arrival_field = "first"
    with pytest.raises(ValueError, match="arrival_field"):
        P.ParseSpec.from_config(cfg)
    cfg = get_config().reward
    cfg.mode = "sparse"
    with pytest.raises(ValueError, match="reward.mode"):
        R.RewardParams.from_config(cfg)


def test_sections_past_the_width():
    # 20 copies of "Line 1 A->D" for A->D with 0 transfers and max_sections 16:
    # official detail = 2 + 20 * (4 - 5) = -18; ours keeps the credit of the first 16 sections
    # and the penalty of all 20: 2 + 16 * 4 - 20 * 5 = -34 (documented; never correct either way)
    rec = planning("A", "D", 0)
    a = P.parse_batch([rec], [plan_text([("Line 1", "A", "D")] * 20)], P.ParseSpec())
    assert a["det_n"][0] == 20 and a["det_last_arr"][0] == 3
    out = R.compute_rewards(a, R.RewardParams())
    assert float(out["detail"][0]) == -34.0 and float(out["accuracy"][0]) == 0.0


def test_tables_cache_reuses_by_identity():
    cache = TablesCache(max_size=2)
    rec = planning("A", "D", 0)
    assert cache.get(rec) is cache.get(rec)
    twin = dataclasses.replace(rec)
    assert cache.get(twin) is not cache.get(rec)


def _batch(seed: int, n_records: int = 256, group: int = 4):
    rng = random.Random(seed)
    records, texts = [], []
    for i in range(n_records):
        if i % 3:
            rec, plan = random_planning_record(rng, i)
            comps = [mutate_plan(rng, plan, rec.metro) for _ in range(group)]
        else:
            pairs = [random_vqa(rng, i) for _ in range(group)]
            rec, comps = pairs[0][0], [p[1] for p in pairs]
        records += [rec] * group
        texts += comps
    return records, texts


def test_batch_of_1024_compiles_once():
    spec = P.ParseSpec.from_config(get_config().reward)
    # A params value no other test uses, so this test sees its own compilations.
    params = dataclasses.replace(R.RewardParams(), correct=10.000123)
    before = R.TRACE_COUNT["compute_rewards"]
    outs = []
    for seed in range(3):
        records, texts = _batch(seed)
        assert len(texts) == 1024
        arrays = P.parse_batch(records, texts, spec)
        assert arrays["member"].shape == (256, 8, 64)  # same buckets for every batch
        outs.append(R.compute_rewards(arrays, params))
    assert R.TRACE_COUNT["compute_rewards"] - before == 1
    assert all(o["overall"].shape == (1024,) for o in outs)
    assert not np.array_equal(np.asarray(outs[0]["overall"]), np.asarray(outs[1]["overall"]))
    # A larger station bucket is one more compilation, not one per batch.
    records, texts = _batch(7)
    big = planning("A", "D", 0, metro={"Line 1": [f"S{i}" for i in range(100)]})
    big.station_1, big.station_2 = "S0", "S5"
    records[-1] = big
    arrays = P.parse_batch(records, texts, spec)
    assert arrays["member"].shape[-1] == 256
    R.compute_rewards(arrays, params)
    R.compute_rewards(P.parse_batch(records[::-1], texts[::-1], spec), params)
    assert R.TRACE_COUNT["compute_rewards"] - before == 2


def test_endpoint_missing_from_metro_and_null_lines():
    # station_2 "Z" is in no line: it still gets an id (so it can match), but no line holds it.
    metro = {"Line 1": ["A", "B"], "Line 7": None}  # parquet union columns give null lines
    rec = planning("A", "Z", 0, metro=metro)
    t = build_tables(rec)
    assert t.station_index == {"a": 0, "b": 1, "z": 2} and t.line_index == {"Line 1": 0}
    assert t.member.shape == (1, 3) and not t.member[0, 2]
    # Endpoints match (+2), -5 for the section, no +4 (Line 1 lacks Z): detail -3, not correct
    out = R.compute_rewards(
        P.parse_batch([rec], [plan_text([("Line 1", "A", "Z")])]), R.RewardParams()
    )
    assert (float(out["detail"][0]), float(out["accuracy"][0])) == (-3.0, 0.0)
    # the shared city tables are not modified by the extension
    assert build_tables(planning("A", "B", 0, metro=metro)).member.shape == (1, 2)
