"""ReasonMap / ReasonMap-Plus metrics, hand-worked on `worlds.hand_metro()` (references
already in the metro vocabulary, as map-world records have them: mode `corrected`):

Line 1: A - B - C - D,   Line 2: E - B - F,   Line 3: F - G - H
"""

from __future__ import annotations

import pytest

from rewardmap_jax.rewards import metrics as M
from tests.rewards.worlds import plan_text, planning, section


def score(rec, text):
    out = M.score_planning(rec, text, modes=("corrected",))
    return {"acc": out["acc"], "map_score": out["map_score_corrected"]}


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
    assert score(rec, good) == {"acc": 1.0, "map_score": 19.0}
    # wrong transfer (C then B): not correct; plan1: 1 + (2 + 1 + 0) + (2 + 1 + 1) = 8
    near = plan_text([("Line 1", "A", "C"), ("Line 2", "B", "F")])
    assert score(rec, near) == {"acc": 0.0, "map_score": 8.0}
    # wrong endpoint: 0; no sections: 0
    assert score(rec, plan_text([("Line 1", "A", "B")])) == {"acc": 0.0, "map_score": 0}
    assert score(rec, "Take Line 1.")["map_score"] == 0.0
    # The metric keys are case-sensitive (ReasonMap rule): lower-case keys are no section.
    assert score(rec, good.replace("Route Name", "route name"))["acc"] == 0.0


def test_short_map_score_caps_at_ten_plus_ten():
    routes = {"p": [ref("Line 1", "A", "B"), ref("Line 2", "B", "F"), ref("Line 3", "F", "H")]}
    rec = planning("A", "H", 2, routes=routes)
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F"), ("Line 3", "F", "H")])
    # 1 + 3 * 4 = 13 -> min(10, 13) = 10, + 10 = 20 (the maximum)
    assert score(rec, ans)["map_score"] == 20.0


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
    assert score(rec, ans) == {"acc": 1.0, "map_score": expected}


def test_long_via_map_score():
    rec = planning("A", "D", 0, template="long_via", routes=ROUTES_AD)
    ans = section("Line 1", "A", "D", "Via Stops: B, X\n")
    # 1 + (2 + 1 + 1) = 5; via matches: B -> 1; IoU {b} / {b, c, x} = 1/3
    # via score = (10/3 + 1) / 2; total = 5 + 13/6 + 20 (correct)
    assert score(rec, ans)["map_score"] == pytest.approx(5 + 13 / 6 + 20)
    # long answers read the arrival per line: the same answer is correct under the metric
    assert score(rec, ans)["acc"] == 1.0


def test_direct_lines_are_the_constant_answers_the_accuracy_rule_accepts():
    # hand_metro: Line 1 A-B-C-D, Line 2 E-B-F, Line 3 F-G-H (B, F annotated as transfers).
    assert M.direct_lines(planning("A", "C", 0)) == ("Line 1",)
    assert M.direct_lines(planning("B", "F", 0)) == ("Line 2",)  # annotations cleaned
    assert M.direct_lines(planning("C", "A", 0)) == ("Line 1",)  # order is not checked
    assert M.direct_lines(planning("A", "F", 1)) == ()  # needs a transfer
    shared = {"Red": ["A", "B", "C"], "Blue": ["C", "B", "A", "D"], "Green": ["A", "D"]}
    assert M.direct_lines(planning("A", "B", 0, metro=shared)) == ("Blue", "Red")
