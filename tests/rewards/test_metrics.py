"""ReasonMap / ReasonMap-Plus metrics, hand-worked on `worlds.hand_metro()`:

Line 1: A - B - C - D,   Line 2: E - B - F,   Line 3: F - G - H
"""

from __future__ import annotations

import json

import pytest

from rewardmap_jax.rewards import metrics as M
from rewardmap_jax.rewards import report
from tests.rewards.worlds import plan_text, planning, section, vqa


def ref(line, dep, arr, via=()):
    return {
        "route_name": line,
        "departure_stop": dep,
        "arrival_stop": arr,
        "via_stops": list(via),
        "num_via_stops": len(via),
    }


ROUTES_AF = {
    "plan1": [ref("Line 1", "A", "B"), ref("Line 2", "B", "F")],
    "plan2": [ref("Line 3", "A", "F")],
}
ROUTES_AD = {"plan1": [ref("Line 1", "A", "D", via=("B", "C"))]}


def test_short_accuracy_and_map_score():
    rec = planning("A", "F", 1, routes=ROUTES_AF)
    good = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])
    # plan1: 1 (endpoints) + (2 + 1 + 1) + (2 + 1 + 1) = 9 -> min(10, 9) + 10 (correct) = 19
    # plan2: 1 + (0 + 1 + 0) = 2 -> 2 + 10 = 12; best = 19
    assert M.score_planning(rec, good) == {"acc": 1.0, "map_score": 19.0}
    # wrong transfer (C then B): not correct; plan1: 1 + (2 + 1 + 0) + (2 + 1 + 1) = 8
    near = plan_text([("Line 1", "A", "C"), ("Line 2", "B", "F")])
    assert M.score_planning(rec, near) == {"acc": 0.0, "map_score": 8.0}
    # wrong endpoint: 0; no sections: 0
    assert M.score_planning(rec, plan_text([("Line 1", "A", "B")])) == {"acc": 0.0, "map_score": 0}
    assert M.score_planning(rec, "Take Line 1.")["map_score"] == 0.0
    # The metric keys are case-sensitive (ReasonMap rule): lower-case keys are no section.
    assert M.score_planning(rec, good.replace("Route Name", "route name"))["acc"] == 0.0


def test_short_map_score_caps_at_ten_plus_ten():
    routes = {"p": [ref("Line 1", "A", "B"), ref("Line 2", "B", "F"), ref("Line 3", "F", "H")]}
    rec = planning("A", "H", 2, routes=routes)
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F"), ("Line 3", "F", "H")])
    # 1 + 3 * 4 = 13 -> min(10, 13) = 10, + 10 = 20 (the maximum)
    assert M.score_planning(rec, ans)["map_score"] == 20.0


@pytest.mark.parametrize(
    "n_via, expected",
    [
        # 1 + (2 + 1 + 1) = 5; error 0 -> +4; 9 + 20 (correct) = 29
        (2, 29.0),
        # error |3 - 2| = 1 -> 4 - 1/2 * 4 = 2; 5 + 2 + 20 = 27
        (3, 27.0),
        # error 2 -> 4 - 2/2 * 4 = 0; 5 + 0 + 20 = 25
        (0, 25.0),
    ],
)
def test_long_num_via_map_score(n_via, expected):
    rec = planning("A", "D", 0, template="long_num_via", routes=ROUTES_AD)
    ans = section("Line 1", "A", "D", f"Number of Via Stops: {n_via}\n")
    assert M.score_planning(rec, ans) == {"acc": 1.0, "map_score": expected}


def test_long_via_map_score():
    rec = planning("A", "D", 0, template="long_via", routes=ROUTES_AD)
    ans = section("Line 1", "A", "D", "Via Stops: B, X\n")
    # 1 + (2 + 1 + 1) = 5; via matches: B -> 1; IoU {b} / {b, c, x} = 1/3
    # via score = (10/3 + 1) / 2; total = 5 + 13/6 + 20 (correct)
    assert M.score_planning(rec, ans)["map_score"] == pytest.approx(5 + 13 / 6 + 20)
    # long answers read the arrival per line: the same answer is correct under the metric
    assert M.score_planning(rec, ans)["acc"] == 1.0


def test_evaluate_completions_and_weights(tmp_path):
    records = [
        vqa("TorF1", 1, difficulty="easy"),
        vqa("TorF1", 1, difficulty="hard"),
        vqa("Counting2", 3, difficulty="middle"),
        planning("A", "F", 1, routes=ROUTES_AF, difficulty="hard"),
    ]
    records[3].difficulty_question = "hard"
    texts = [
        "\\boxed{yes}",
        "\\boxed{no}",
        "<think>maybe 4</think>\\boxed{3}",
        "<think>\\boxed{x}</think>" + plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")]),
    ]
    rep = M.evaluate_completions(records, texts, answer_after="</think>")
    s = rep["summary"]
    # TorF1: easy right (w 1.0), hard wrong (w 1.5): acc 0.5, weighted 1.0 / 2.5 = 0.4
    assert s["plus/acc_TorF1"] == 0.5 and s["plus/weighted_acc_TorF1"] == pytest.approx(0.4)
    assert s["plus/acc_count"] == 1.0 and s["plus/acc_torf"] == 0.5
    # overall Plus: 2 of 3; weighted (1 + 0 + 1.2) / (1 + 1.5 + 1.2)
    assert s["plus/acc"] == pytest.approx(2 / 3)
    assert s["plus/weighted_acc"] == pytest.approx(2.2 / 3.7)
    assert s["reasonmap/acc_short"] == 1.0 and s["reasonmap/map_score_short"] == 19.0
    assert s["count/reasonmap/acc_short"] == 1 and s["plus/acc_Counting1"] is None
    assert rep["samples"][3]["weight"] == pytest.approx(1.5 * 1.5)
    # Markdown and JSON writers
    md = report.markdown_table(rep, title="eval")
    assert "| plus/acc_TorF1 | 50.00% | 2 |" in md
    assert "| reasonmap/map_score_short | 19.00 | 1 |" in md
    assert "| plus/acc_Counting1 | - | 0 |" in md
    path = report.write_json(rep, str(tmp_path / "out" / "report.json"))
    assert json.load(open(path))["summary"]["plus/acc_TorF1"] == 0.5
    report.write_markdown(rep, str(tmp_path / "report.md"))
    assert (tmp_path / "report.md").read_text() == md.replace("### eval\n\n", "")
    with pytest.raises(ValueError, match="2 records, 1 texts"):
        M.evaluate_completions(records[:2], texts[:1])
