"""Every question's ground truth re-derived independently from the record's metro dict."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rewardmap_jax.mapworld import generator, questions
from rewardmap_jax.mapworld.records import SECTION_FIELDS, TASK_TYPES, Record
from tests.mapworld.oracle import (
    brute_force_plans,
    clean_metro,
    line_graph_min_sections,
    lines_through,
    plan_as_tuple,
    transfer_station_count,
)

TINY_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "rewardmap_jax/assets/tiny_tokenizer/tokenizer.json"
)
_OPTIONS = re.compile(r"([ABCD])\) (\d+)")


def _check_common(rec: Record, world: generator.WorldConfig) -> None:
    metro = rec.metro
    assert rec.city_line_count == len(metro)
    assert rec.city_transfer_count == transfer_station_count(metro)
    score = rec.city_line_count + rec.city_transfer_count
    lo, hi = world.city_difficulty_bounds
    assert rec.difficulty_city == ("easy" if score <= lo else "middle" if score <= hi else "hard")
    row = rec.to_row()
    for field in (
        "type",
        "question",
        "answer",
        "station_1",
        "station_2",
        "difficulty_city",
        "difficulty_question",
        "question_transfer_count",
        "city_line_count",
        "city_transfer_count",
        "json",
        "routes",
        "template",
        "figure",
        "country",
        "city",
    ):
        assert field in row
    for name in (rec.station_1, rec.station_2):
        if name is not None:
            assert lines_through(metro, name), f"{name} not in the metro dict"


def _check_planning(rec: Record, brute_force: bool) -> None:
    metro = clean_metro(rec.metro)
    assert rec.answer is None and rec.template in questions.PLANNING_TEMPLATES
    got = {plan_as_tuple(p) for p in rec.routes.values()}
    assert len(got) == len(rec.routes) > 0
    if brute_force:  # every simple path: exact plan set
        best, expected = brute_force_plans(metro, rec.station_1, rec.station_2)
        assert got == expected
    else:  # dense maps: too many simple paths; check the optimum against a line-graph BFS
        best = line_graph_min_sections(metro, rec.station_1, rec.station_2)
        assert {len(p) for p in got} == {best}
    assert rec.question_transfer_count == best - 1
    assert rec.difficulty_question == ["easy", "medium", "hard"][min(best - 1, 2)]
    for plan in rec.routes.values():
        # ReasonMap's accuracy rule (rewardmap.md §2) holds for every reference plan.
        assert plan[0]["departure_stop"] == rec.station_1
        assert plan[-1]["arrival_stop"] == rec.station_2
        for k, s in enumerate(plan):
            assert tuple(s) == SECTION_FIELDS
            line = metro[s["route_name"]]
            i, j = line.index(s["departure_stop"]), line.index(s["arrival_stop"])
            between = line[min(i, j) + 1 : max(i, j)]
            assert s["via_stops"] == (between if i < j else between[::-1])
            assert s["num_via_stops"] == len(s["via_stops"])
            if k + 1 < len(plan):
                assert s["arrival_stop"] == plan[k + 1]["departure_stop"]
    text = rec.question
    assert f"from {rec.station_1} to {rec.station_2}?" in text
    for key in ("Route Name:", "Departure Stop:", "Arrival Stop:", '"--"'):
        assert key in text
    assert ("Number of Via Stops:" in text) == (rec.template == "long_num_via")
    assert ("\nVia Stops:" in text) == (rec.template == "long_via")


def _check_vqa(rec: Record) -> None:
    metro = clean_metro(rec.metro)
    assert rec.template == "vqa" and rec.routes == {}
    assert '"\\boxed{}"' in rec.question
    if rec.type == "TorF1":
        truth = any(rec.station_1 in s and rec.station_2 in s for s in metro.values())
        assert rec.answer == int(truth) and rec.station_1 != rec.station_2
        assert (
            f"{rec.station_1} Station is on the same line as {rec.station_2} Station"
            in rec.question
        )
    elif rec.type == "TorF2":
        line = re.search(r"is on the (.+)\?$", rec.question).group(1)
        assert rec.answer == int(rec.station_1 in metro[line])
    elif rec.type == "Counting1":
        assert rec.question.startswith(questions.MCQ_PREFIX)
        options = dict(_OPTIONS.findall(rec.question))
        assert list(options) == list("ABCD")
        values = [int(v) for v in options.values()]
        assert len(set(values)) == 4
        counts = {
            abs(line.index(rec.station_1) - line.index(rec.station_2)) - 1
            for line in metro.values()
            if rec.station_1 in line and rec.station_2 in line
        }
        assert len(counts) == 1, "the two stations have no single intermediate-stop count"
        assert values[rec.answer] == counts.pop()
    elif rec.type == "Counting2":
        assert rec.answer == len(lines_through(rec.metro, rec.station_1))
    elif rec.type == "Counting3":
        assert rec.answer == len(metro) and rec.station_1 is None
    assert rec.question_transfer_count == 0 and rec.difficulty_question == "easy"


@pytest.mark.parametrize(("preset", "n"), [("tiny", 600), ("small", 300), ("dense", 30)])
def test_ground_truth_of_every_type(preset, n):
    world = generator.get_world(preset)
    records = generator.generate_records(world, "test", n)
    assert collections.Counter(r.type for r in records) == {t: n // 6 for t in TASK_TYPES}
    for rec in records:
        _check_common(rec, world)
        if rec.type == "planning":
            assert rec.question_transfer_count <= world.max_question_transfers
            _check_planning(rec, brute_force=preset != "dense")
        else:
            _check_vqa(rec)


def test_answers_are_balanced_and_cover_the_range():
    recs = generator.generate_records("tiny", "train", 1200)
    by_type = collections.defaultdict(collections.Counter)
    for r in recs:
        by_type[r.type][r.answer if r.type != "planning" else r.question_transfer_count] += 1
    for t in ("TorF1", "TorF2"):
        assert 0.38 < by_type[t][1] / 200 < 0.62, by_type[t]
    assert set(by_type["Counting1"]) == {0, 1, 2, 3}
    assert min(by_type["Counting1"].values()) > 30
    assert set(by_type["Counting3"]) == {2, 3, 4}
    assert set(by_type["planning"]) == {0, 1}
    templates = collections.Counter(r.template for r in recs if r.type == "planning")
    assert set(templates) == set(questions.PLANNING_TEMPLATES)
    levels = collections.Counter(r.difficulty_city for r in recs)
    assert all(levels[k] > 150 for k in ("easy", "middle", "hard")), levels


def test_template_argument_and_answer_text():
    rec = generator.make_record("tiny", "val", 3, "planning", template="long_via")
    assert rec.template == "long_via"
    text = questions.answer_text(rec)
    blocks = text.split("\n--\n")
    first = next(iter(rec.routes.values()))
    assert len(blocks) == len(first)
    for block, s in zip(blocks, first, strict=True):
        assert block.splitlines()[:3] == [
            f"Route Name: {s['route_name']}",
            f"Departure Stop: {s['departure_stop']}",
            f"Arrival Stop: {s['arrival_stop']}",
        ]
        assert block.splitlines()[3] == "Via Stops: " + ", ".join(s["via_stops"])
    torf = generator.make_record("tiny", "val", 3, "TorF1")
    assert questions.answer_text(torf) == "\\boxed{" + ("yes" if torf.answer else "no") + "}"
    mcq = generator.make_record("tiny", "val", 3, "Counting1")
    assert questions.answer_text(mcq) == "\\boxed{" + "ABCD"[mcq.answer] + "}"


def test_tiny_answers_fit_the_tiny_token_budget():
    tokenizer = Tokenizer.from_file(str(TINY_TOKENIZER))
    worst = 0
    for i in range(150):
        for template in questions.PLANNING_TEMPLATES:
            rec = generator.make_record("tiny", "train", i, "planning", template=template)
            worst = max(worst, len(tokenizer.encode(questions.answer_text(rec)).ids))
    print(f"longest tiny planning answer: {worst} tiny-BPE tokens")
    assert worst <= 48


def test_unknown_task_type_is_rejected():
    with pytest.raises(ValueError, match="unknown task type"):
        generator.make_record("tiny", "train", 0, "Counting9")
    with pytest.raises(ValueError, match="unknown map-world preset"):
        generator.make_record("huge", "train", 0, "TorF1")
