"""Metric rows from a run's held-out report: the full-reward re-scoring (hand-worked rewards of
reference and wrong plans) and the planning breakdown by transfers and map difficulty."""

from __future__ import annotations

import math

import pytest

from configs.curriculum import get_config
from rewardmap_jax.config_utils import config_to_dict
from rewardmap_jax.experiments import collect, tables
from rewardmap_jax.mapworld.generator import get_world, make_record
from rewardmap_jax.mapworld.questions import answer_text

MAP_WEIGHT = {"easy": 1.0, "middle": 1.2, "hard": 1.5}


def _report(world, n=24):
    plans = [make_record(world, "val", i, "planning") for i in range(n)]
    torf = [make_record(world, "val", i, "TorF1") for i in range(4)]
    # Even questions get the reference answer, odd ones an answer whose endpoints are wrong.
    texts = [answer_text(r) if i % 2 == 0 else
             "Route Name: Red Line\nDeparture Stop: Q\nArrival Stop: Q" for i, r in
             enumerate(plans)]
    torf_texts = [answer_text(r) for r in torf]
    accs = [float(i % 2 == 0) for i in range(n)] + [1.0] * len(torf)
    samples = [{"uid": r.uid, "type": r.type, "acc": a, "reward": 0.0, "completion": t}
               for r, t, a in zip(plans + torf, texts + torf_texts, accs, strict=True)]
    report = {"tag": "final", "step": 7, "samples": samples}
    return report, plans


def test_full_reward_rescoring_matches_the_hand_worked_rule():
    world = get_world("route", highlight=True)
    config = config_to_dict(get_config("tiny"))
    config["reward"]["mode"] = "baseline"  # the run's own reward does not matter
    report, plans = _report(world)
    row = collect.summarize_report(report, world, collect.full_reward_fn(config))
    got = row["per_question"]["planning"]["reward_full"]
    for i, (rec, reward) in enumerate(zip(plans, got, strict=True)):
        w = MAP_WEIGHT[rec.difficulty_city]
        if i % 2:  # wrong endpoints: no correctness, no detail
            want = 0.0
        elif rec.question_transfer_count == 0:  # detail 2 - 5 + 4 = 1
            want = (10 + 0.5 * 1) * w
        else:  # detail 2 + (3 + 1) + (-5 + 3) = 4, weight + 0.5 for a transfer
            want = (10 + 0.5 * 4) * (w + 0.5)
        assert reward == pytest.approx(want, abs=1e-3), (rec.uid, rec.question_transfer_count)
    assert row["accuracy"]["planning"] == 0.5
    assert row["reward_full"]["TorF1"] == pytest.approx(
        sum(10 * MAP_WEIGHT[make_record(world, "val", i, "TorF1").difficulty_city]
            for i in range(4)) / 4, abs=1e-4)


def test_planning_breakdown_counts_every_question_once():
    world = get_world("route", highlight=True)
    config = config_to_dict(get_config("tiny"))
    report, plans = _report(world)
    row = collect.summarize_report(report, world, collect.full_reward_fn(config))
    split = row["planning"]
    for axis, key in (("transfers", lambda r: str(r.question_transfer_count)),
                      ("difficulty", lambda r: r.difficulty_city)):
        assert sum(g["n"] for g in split[axis].values()) == len(plans)
        for value, g in split[axis].items():
            idx = [i for i, r in enumerate(plans) if key(r) == value]
            assert g["n"] == len(idx)
            assert g["accuracy"] == pytest.approx(sum(i % 2 == 0 for i in idx) / len(idx))
    m = tables.metrics({"final": row})
    assert m["planning/accuracy"] == 0.5
    assert math.isfinite(m["planning/reward@transfers=1"])


def test_uids_of_another_world_are_refused():
    with pytest.raises(ValueError, match="not from map world"):
        collect.record_of("tiny/val/3/planning", get_world("route"))


def test_chance_levels_match_constant_answers_scored_by_the_accuracy_rule():
    from rewardmap_jax.experiments.collect import chance_levels
    from rewardmap_jax.mapworld.generator import get_world, make_record
    from rewardmap_jax.rewards import metrics

    world = get_world("route", highlight=True)
    idx = list(range(40))
    chance = chance_levels(world, "val", {"planning": {"index": idx},
                                          "TorF1": {"index": idx}})
    plans = [make_record(world, "val", i, "planning") for i in idx]
    names = {line for r in plans for line in r.metro}

    def best(records):  # every constant line, each answer scored as text by the official rule
        return max(sum(metrics.score_planning(
            r, f"Route Name: {name}\nDeparture Stop: {r.station_1}\nArrival Stop: "
               f"{r.station_2}")["acc"] for r in records) / len(records) for name in names)

    assert chance["planning/accuracy"] == pytest.approx(best(plans))
    assert 0 < chance["planning/accuracy"] < 1
    for k in (0, 1):
        subset = [r for r in plans if r.question_transfer_count == k]
        assert chance[f"planning/accuracy@transfers={k}"] == pytest.approx(best(subset))
    assert chance["planning/accuracy@transfers=1"] == 0.0  # no one line joins the endpoints
    answers = [make_record(world, "val", i, "TorF1").answer for i in idx]
    assert chance["TorF1/accuracy"] == max(answers.count(a) for a in set(answers)) / 40
