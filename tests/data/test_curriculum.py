"""Curriculum schedules and plans: stage order, exact one-pass coverage, mixture frequencies."""

from __future__ import annotations

import collections

import ml_collections as mlc
import numpy as np
import pytest

from rewardmap_jax.data import curriculum as cur
from rewardmap_jax.mapworld.records import TASK_TYPES

SIZES = {"TorF1": 40, "TorF2": 24, "Counting1": 30, "Counting2": 18, "Counting3": 8,
         "planning": 40}  # 160 records = 20 batches of 8


def _pairs(plan, mask):
    return collections.Counter(zip((TASK_TYPES[t] for t in plan.task[mask]),
                                   plan.index[mask].tolist(), strict=True))


def _all_records(types):
    return collections.Counter((t, i) for t in types for i in range(SIZES[t]))


def test_official_visits_each_stage_once_in_order():
    plan = cur.build_plan(cur.preset_schedule("official"), SIZES, batch_size=8, seed=3)
    assert plan.num_steps == 20 and plan.num_elements == 160
    assert np.all(np.diff(plan.stage) >= 0)  # stages in order, never revisited
    groups = [("TorF1", "TorF2"), ("Counting2", "Counting3"), ("Counting1",), ("planning",)]
    for k, types in enumerate(groups):
        got = _pairs(plan, plan.stage == k)
        assert got == _all_records(types)  # every record of the stage exactly once
    # shuffled within the stage: TorF1 and TorF2 interleave, indices not sorted
    first = [TASK_TYPES[t] for t in plan.task[:64]]
    assert set(first) == {"TorF1", "TorF2"} and first != sorted(first)
    # stage sizes 64, 26, 30, 40 elements: step 11 (elements 88..95) straddles stages 1 and 2
    # and counts as stage 1 (its first element's stage)
    assert [plan.stage_name_at(s) for s in (0, 7, 8, 11, 12, 14, 15, 19)] == [
        "torf", "torf", "global_local_count", "global_local_count", "mcq_count", "mcq_count",
        "planning", "planning"]
    assert plan.stage_start == (0, 8, 12, 15)
    assert plan.stage[88:96].tolist() == [1, 1, 2, 2, 2, 2, 2, 2]
    # the same seed gives the same plan; another seed another shuffle
    again = cur.build_plan(cur.preset_schedule("official"), SIZES, batch_size=8, seed=3)
    other = cur.build_plan(cur.preset_schedule("official"), SIZES, batch_size=8, seed=4)
    assert np.array_equal(again.index, plan.index) and np.array_equal(again.task, plan.task)
    assert not np.array_equal(other.index, plan.index)


@pytest.mark.parametrize(
    "preset, groups",
    [
        ("coarse", [("TorF1", "TorF2", "Counting1", "Counting2", "Counting3"), ("planning",)]),
        ("fine_grained", [("TorF1",), ("TorF2",), ("Counting3",), ("Counting2",), ("Counting1",),
                          ("planning",)]),
        ("shuffled", [TASK_TYPES]),
    ],
)
def test_other_one_pass_presets(preset, groups):
    plan = cur.build_plan(cur.preset_schedule(preset), SIZES, batch_size=8, seed=0)
    assert np.all(np.diff(plan.stage) >= 0)
    for k, types in enumerate(groups):
        assert _pairs(plan, plan.stage == k) == _all_records(types)


def test_partial_last_batch_is_dropped():
    sizes = dict(SIZES, planning=43)
    plan = cur.build_plan(cur.preset_schedule("official"), sizes, batch_size=8)
    assert plan.num_elements == 160 and plan.num_steps == 20


def _chi2(counts, probs):
    n = counts.sum()
    keep = probs > 0
    exp = n * probs[keep]
    return float(((counts[keep] - exp) ** 2 / exp).sum()), int(keep.sum() - 1)


# chi-square critical values at p = 0.001
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def test_weighted_stage_frequencies_match_schedule():
    sched = cur.Schedule((
        cur.Stage("a", {"TorF1": 0.5, "Counting3": 0.3, "planning": 0.2}, steps=300),
        cur.Stage("b", {"Counting1": 1.0, "Counting2": 3.0}, steps=200),
    ))
    plan = cur.build_plan(sched, SIZES, batch_size=16, seed=1)
    assert plan.num_steps == 500
    for k, stage in enumerate(sched.stages):
        counts = np.bincount(plan.task[plan.stage == k], minlength=6)
        p = stage.probs()
        assert counts[p == 0].sum() == 0  # no task outside the stage
        stat, df = _chi2(counts, p)
        assert stat < CHI2_CRIT[df], (stage.name, counts, stat)
        n = counts.sum()  # and a per-task binomial 4-sigma bound
        assert np.all(np.abs(counts - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1e-9)
    assert plan.weights_at(0) == pytest.approx({"TorF1": 0.5, "Counting3": 0.3, "planning": 0.2})
    assert plan.stage_name_at(299) == "a" and plan.stage_name_at(300) == "b"


def test_weighted_draws_cover_each_source_once_per_epoch():
    sched = cur.Schedule((cur.Stage("a", {"Counting3": 1.0}, steps=5),))
    plan = cur.build_plan(sched, SIZES, batch_size=8, seed=0)  # 40 draws = 5 epochs of 8
    idx = plan.index.reshape(5, 8)
    for epoch in idx:
        assert sorted(epoch.tolist()) == list(range(8))
    assert not all(np.array_equal(idx[0], e) for e in idx[1:])  # reshuffled each epoch


def test_soft_mixing_blends_across_boundaries():
    sched = cur.preset_schedule("soft", stage_steps=200, overlap=100)
    plan = cur.build_plan(sched, SIZES, batch_size=32, seed=2)
    # boundary torf -> counts at step 200: linear ramp over steps 150..249
    assert plan.weights_at(100) == pytest.approx({"TorF1": 0.5, "TorF2": 0.5})
    assert plan.weights_at(200) == pytest.approx(
        {"TorF1": 0.25, "TorF2": 0.25, "Counting2": 0.25, "Counting3": 0.25})
    w = plan.weights_at(175)
    assert w["TorF1"] == pytest.approx(0.375) and w["Counting2"] == pytest.approx(0.125)
    # measured: inside the ramp both stages' tasks appear in the expected proportion
    steps = np.arange(plan.num_elements) // 32
    for lo, hi in ((150, 200), (200, 250)):
        sel = (steps >= lo) & (steps < hi)
        torf = np.isin(plan.task[sel], [0, 1]).mean()
        expect = np.mean([sum(plan.weights_at(s).get(t, 0) for t in ("TorF1", "TorF2"))
                          for s in range(lo, hi)])
        n = sel.sum()
        assert abs(torf - expect) <= 4 * np.sqrt(expect * (1 - expect) / n)
    assert np.isin(plan.task[steps < 150], [0, 1]).all()  # before the ramp: stage 1 only
    assert plan.stage_name_at(199) == "torf" and plan.stage_name_at(200) == "global_local_count"


def test_sharding_partitions_each_global_batch():
    plan = cur.build_plan(cur.preset_schedule("shuffled"), SIZES, batch_size=8)
    for step in range(3):
        got = sorted(plan.global_element(step * 4 + j, shard, 2)
                     for shard in range(2) for j in range(4))
        assert got == list(range(step * 8, step * 8 + 8))


def test_plan_cycle_repeats_with_new_shuffles():
    c = cur.PlanCycle(cur.preset_schedule("shuffled"), SIZES, 8, seed=0, repeat=True)
    n = c.first.num_elements
    first = [c.element(g)[:2] for g in range(n)]
    second = [c.element(g)[:2] for g in range(n, 2 * n)]
    assert sorted(first) == sorted(second) and first != second
    assert c.element(n)[3] == 1 and c.num_steps is None
    once = cur.PlanCycle(cur.preset_schedule("shuffled"), SIZES, 8, seed=0, repeat=False)
    with pytest.raises(IndexError, match="past the end"):
        once.element(n)


def test_schedule_from_config_and_errors():
    cfg = mlc.ConfigDict({"preset": "official", "stages": (), "overlap": 0, "stage_steps": 10})
    assert [s.name for s in cur.schedule_from_config(cfg).stages][0] == "torf"
    cfg.stages = ({"name": "x", "weights": {"TorF1": 1.0}, "steps": 3},
                  {"name": "y", "weights": {"planning": 2.0}, "steps": -1})
    sched = cur.schedule_from_config(cfg)
    assert [s.steps for s in sched.stages] == [3, cur.ONE_PASS]
    plan = cur.build_plan(sched, SIZES, batch_size=8)
    assert plan.num_steps == 3 + 5 and set(plan.task[:24]) == {0}
    with pytest.raises(ValueError, match="unknown task type"):
        cur.Stage("bad", {"Counting9": 1.0})
    with pytest.raises(ValueError, match="must be > 0"):
        cur.Stage("bad", {"TorF1": 0.0})
    with pytest.raises(ValueError, match="soft mixing"):
        cur.Schedule((cur.Stage("a", {"TorF1": 1.0}),), overlap=4)
    with pytest.raises(ValueError, match="source is empty or missing"):
        cur.build_plan(cur.preset_schedule("official"), {"TorF1": 3}, batch_size=2)
    with pytest.raises(ValueError, match="unknown curriculum preset"):
        cur.preset_schedule("nope")


def test_keeping_the_partial_last_batch_for_evaluation():
    sizes = dict(SIZES, planning=43)  # 163 records, batch 8 -> 20 full batches + 3
    plan = cur.build_plan(cur.preset_schedule("official"), sizes, batch_size=8,
                          drop_remainder=False)
    assert plan.num_steps == 21 and plan.valid.sum() == 163 and not plan.valid[-5:].any()
    kept = _pairs(plan, plan.valid)
    assert sum(kept.values()) == 163 and max(kept.values()) == 1
    assert kept == collections.Counter((t, i) for t in TASK_TYPES for i in range(sizes[t]))
    with pytest.raises(ValueError, match="repeating"):
        cur.PlanCycle(cur.preset_schedule("official"), sizes, 8, repeat=True,
                      drop_remainder=False)
