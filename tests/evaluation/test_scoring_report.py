"""Summary figures with standard errors, the report (JSON + Markdown tables) and the paired
comparison of two reports, hand-worked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rewardmap_jax.evaluation import compare as C
from rewardmap_jax.evaluation import report as R
from rewardmap_jax.evaluation import scoring as S
from rewardmap_jax.evaluation.cli import main
from tests.rewards.worlds import plan_text, planning, vqa

ROUTES_AF = {"plan1": [
    {"route_name": "Line 1", "departure_stop": "A", "arrival_stop": "B", "via_stops": [],
     "num_via_stops": 0},
    {"route_name": "Line 2", "departure_stop": "B", "arrival_stop": "F", "via_stops": [],
     "num_via_stops": 0}]}


def test_standard_errors():
    # mean .75; deviations .25, -.75, .25, .25: sum of squares .75, / 3 = .25, sqrt .5, / 2
    m, se = S.weighted_mean_se(np.array([1, 0, 1, 1.0]))
    assert (m, se) == (0.75, 0.25)
    # weighted: m = (1 * 1 + 1.5 * 0) / 2.5 = .4; SE = sqrt(2 / 1 * (1 * .6^2 + 2.25 * .4^2))
    # / 2.5 = sqrt(1.44) / 2.5 = .48
    m, se = S.weighted_mean_se(np.array([1, 0.0]), np.array([1, 1.5]))
    assert m == pytest.approx(0.4) and se == pytest.approx(0.48)
    assert S.weighted_mean_se(np.array([3.0])) == (3.0, None)


def test_scores_summary_and_project_weights():
    records = [vqa("TorF1", 1, difficulty="easy"), vqa("TorF1", 1, difficulty="hard"),
               vqa("Counting2", 3, difficulty="middle"),
               planning("A", "F", 1, routes=ROUTES_AF, difficulty="hard")]
    records[1].uid = "TorF1-hard"
    records[3].difficulty_question = "hard"
    texts = ["\\boxed{yes}", "\\boxed{no}", "<think>maybe 4</think>\\boxed{3}",
             "<think>\\boxed{x}</think>" + plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])]
    rows = S.score_completions(records, texts, answer_after="</think>")
    s = S.summarize(rows)
    # TorF1: easy right (w 1.0), hard wrong (w 1.5): .5; weighted 1 / 2.5 = .4
    assert s["plus/acc_TorF1"]["value"] == 0.5
    assert s["weighted/plus/acc_TorF1"]["value"] == pytest.approx(0.4)
    assert s["plus/acc_count"]["value"] == 1.0 and s["plus/acc_torf"]["value"] == 0.5
    # Plus overall: 2 of 3; weighted (1 + 0 + 1.2) / (1 + 1.5 + 1.2)
    assert s["plus/acc"]["value"] == pytest.approx(2 / 3)
    assert s["weighted/plus/acc"]["value"] == pytest.approx(2.2 / 3.7)
    # Map world record: corrected only; 1 + 4 + 4 = 9 -> 9 + 10 = 19.
    assert s["reasonmap/acc_short"]["value"] == 1.0
    assert s["reasonmap/map_score_short/corrected"]["value"] == 19.0
    assert "reasonmap/map_score_short/official" not in s
    assert rows[3]["weight"] == pytest.approx(1.5 * 1.5)
    assert s["accuracy/mean"] == {"value": 0.75, "se": 0.25, "n": 4}
    assert "reward/mean" not in s  # no reward function given
    with pytest.raises(ValueError, match="2 records, 1 texts"):
        S.score_completions(records[:2], texts[:1])
    # Real data: both modes.
    records[3].source = "reasonmap"
    rows = S.score_completions(records[3:], texts[3:], answer_after="</think>")
    assert {"map_score_official", "map_score_corrected"} <= set(rows[0])


def _rows(uids, acc, reward):
    return [{"uid": u, "type": "TorF1", "template": "vqa", "source": "reasonmap_plus",
             "weight": 1.0, "acc": float(a), "reward": float(r), "completion": ""}
            for u, a, r in zip(uids, acc, reward, strict=True)]


def test_report_json_and_markdown(tmp_path):
    rep = R.build_report(_rows("abcd", [1, 0, 1, 1], [10, 0, 10, 10]), tag="final", step=7,
                         model={"workdir": "runs/x"}, data={"split": "test"},
                         bad_rows=[{"where": "f.parquet row 3", "reason": "undecodable image"}])
    js, md = R.write_report(rep, tmp_path)
    assert R.load_report(js) == json.loads(json.dumps(rep))
    assert rep["counts"] == {"questions": 5, "scored": 4, "bad_rows": 1}
    text = md.read_text()
    assert text.startswith("# Evaluation: final (step 7)")
    assert "| ReasonMap-Plus (VQA) | all | Count | TorF | TorF1 |" in text
    assert "| accuracy (%) | 75.00 ± 25.00 | - | 75.00 ± 25.00 | 75.00 ± 25.00 |" in text
    assert "| TorF1 | 4 | 75.00 ± 25.00 | - | 7.50 ± 2.50 |" in text
    assert "`weight = 1  # TODO`" in text and "- f.parquet row 3: undecodable image" in text
    assert "ReasonMap (route planning)" not in text  # no planning question
    assert R.eval_metrics(rep)["eval/accuracy/TorF1"] == 0.75
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a rewardmap-eval/1"):
        R.load_report(tmp_path / "x.json")


def test_compare_is_paired_over_uids(tmp_path, capsys):
    """Questions a..d, A right/wrong/right/wrong, B right/right/right/wrong (listed in another
    order): differences 0, 1, 0, 0 -> mean .25, sample std .5, SE .5 / 2 = .25, z 1; one
    wrong->right question. Two independent samples would give SE hypot(.25, .25) = .35."""
    a = R.build_report(_rows("abcd", [1, 0, 1, 0], [10, 0, 10, 0]), tag="warm_start")
    b = R.build_report(_rows("dcba", [0, 1, 1, 1], [2, 10, 10, 10]), tag="final")
    d = C.compare(a, b)
    acc = d["plus/acc_TorF1"]
    assert (acc["n"], acc["a"], acc["b"]) == (4, 0.5, 0.75)
    assert math.isclose(acc["change"], 0.25) and math.isclose(acc["se"], 0.25)
    assert math.isclose(acc["z"], 1.0) and (acc["up"], acc["down"]) == (1, 0)
    diffs = np.array([0, 10, 0, 2.0])  # reward differences a, b, c, d
    r = d["reward/TorF1"]
    assert math.isclose(r["change"], diffs.mean())
    assert math.isclose(r["se"], diffs.std(ddof=1) / 2) and "up" not in r
    assert d["weighted/plus/acc_TorF1"]["change"] == pytest.approx(0.25)
    # The CLI: `compare A B`.
    pa, pb = R.write_report(a, tmp_path)[0], R.write_report(b, tmp_path)[0]
    assert main(["compare", str(pa), str(pb), "--out", str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert "| plus/acc_TorF1 | 4 | 50.00 | 75.00 | +25.00 ± 25.00 | +1.0 | 1 / 0 |" in out
    assert (tmp_path / "c.md").read_text() == out
    assert main(["compare", str(pa), str(tmp_path / "missing.json")]) == 1


def test_planning_majority_is_the_best_constant_line():
    # Right constant lines: A->C {Line 1}, B->F {Line 2}, E->F {Line 2}, A->F {} (a transfer):
    # always answering "Line 2" with the question's endpoints scores 2 of 4.
    records = [planning("A", "C", 0), planning("B", "F", 0), planning("E", "F", 0),
               planning("A", "F", 1)]
    rows = S.score_completions(records, [plan_text([("Line 1", "A", "C")])] * 4)
    assert [r["direct_lines"] for r in rows] == [["Line 1"], ["Line 2"], ["Line 2"], []]
    s = S.summarize(rows)
    assert s["majority/planning"] == {"value": 0.5, "se": None, "n": 4}
    assert s["accuracy/planning"]["value"] == 0.25  # the policy's own "Line 1": 1 of 4
    # Rows of reports written before `direct_lines` existed give no planning majority.
    assert "majority/planning" not in S.summarize(
        [{k: v for k, v in r.items() if k != "direct_lines"} for r in rows])
