"""Hand-worked reward rules on the network of `worlds.hand_metro()`:

    Line 1: A - B - C - D,   Line 2: E - B - F,   Line 3: F - G - H   (B, F transfer stations)

Each test writes its arithmetic out: reward = (10*acc + 0.5*detail) * weight.
"""

from __future__ import annotations

import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.rewards import make_reward_fn
from tests.rewards.worlds import plan_text, planning, section, vqa


def score(records, completions, **overrides):
    cfg = get_config().reward
    for k, v in overrides.items():
        cfg[k] = v
    return make_reward_fn(cfg)(records, completions)


def one(record, completion, key="overall", **overrides):
    return float(score([record], [completion], **overrides)[key][0])


def test_zero_transfer_correct_answer_detail_is_one():
    # detail = +2 (endpoints) - 5 (section 0, index >= 0 transfers) + 4 (Line 1 holds A and D) = 1
    # reward = (10 + 0.5 * 1) * 1.0 (easy, no transfers) = 10.5
    out = score([planning("A", "D", 0)], [plan_text([("Line 1", "A", "D")])])
    assert out["detail"][0] == 1.0
    assert out["accuracy"][0] == 1.0
    assert out["overall"][0] == pytest.approx(10.5)


def test_one_transfer_correct_answer_detail_is_four():
    # section 0 (Line 1 A->B): +3 (line exists, transfers > 0) +1 (B = next departure, 1 <= 1)
    # section 1 (Line 2 B->F): -5 (index 1 >= 1 transfer) +3
    # detail = 2 + 3 + 1 - 5 + 3 = 4; weight = 1.0 (easy) + 0.5 (transfers) = 1.5
    # reward = (10 + 0.5 * 4) * 1.5 = 18.0; on a middle map (1.2 + 0.5) it is 12 * 1.7 = 20.4
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])
    out = score([planning("A", "F", 1)], [ans])
    assert out["detail"][0] == 4.0
    assert out["weight"][0] == pytest.approx(1.5)
    assert out["overall"][0] == pytest.approx(18.0)
    assert one(planning("A", "F", 1, difficulty="middle"), ans) == pytest.approx(20.4)


def test_extra_sections_are_penalized():
    # A->D with 0 transfers answered in two valid chained Line 1 sections (still correct):
    # detail = 2 + (-5 + 4) + (-5 + 4) = 0 (no transfer credit: 1 <= 0 is false)
    # reward = 10 + 0 = 10, below the direct answer's 10.5
    two = plan_text([("Line 1", "A", "B"), ("Line 1", "B", "D")])
    out = score([planning("A", "D", 0)], [two])
    assert out["accuracy"][0] == 1.0
    assert out["detail"][0] == 0.0
    assert out["overall"][0] == pytest.approx(10.0)
    # Four repeats of the direct section: ends match; 4 * (-5 + 4) = -4; detail = 2 - 4 = -2,
    # no lower bound; not correct (D != next departure A); reward = 0.5 * -2 = -1.0
    four = plan_text([("Line 1", "A", "D")] * 4)
    out = score([planning("A", "D", 0)], [four])
    assert (out["accuracy"][0], out["detail"][0]) == (0.0, -2.0)
    assert out["overall"][0] == pytest.approx(-1.0)


def test_wrong_endpoints_get_no_detail():
    # Arrival C instead of D: no endpoint credit, no section credit at all; not correct -> 0
    out = score([planning("A", "D", 0)], [plan_text([("Line 1", "A", "C")])])
    assert (out["accuracy"][0], out["detail"][0], out["overall"][0]) == (0.0, 0.0, 0.0)
    # Same for a departure that is not station_1, even with transfers that chain
    ans = plan_text([("Line 1", "C", "B"), ("Line 2", "B", "F")])
    out = score([planning("A", "F", 1)], [ans])
    assert (out["detail"][0], out["overall"][0]) == (0.0, 0.0)


def test_zero_transfer_credit_needs_the_line_with_both_endpoints():
    # Line 2 does not hold A or D: detail = 2 - 5 + 0 = -3; not correct; reward = 0.5 * -3 = -1.5
    assert one(planning("A", "D", 0), plan_text([("Line 2", "A", "D")])) == pytest.approx(-1.5)


def test_unknown_route_name_gets_no_route_credit():
    # section 0: +3 +1 (B chains, 1 <= 1); section 1 "Line 9" unknown: -5 only
    # detail = 2 + 4 - 5 = 1; weight 1.5; reward = 0.5 * 1 * 1.5 = 0.75 (not correct)
    ans = plan_text([("Line 1", "A", "B"), ("Line 9", "B", "F")])
    assert one(planning("A", "F", 1), ans) == pytest.approx(0.75)


def test_transfer_credit_needs_matching_transfer_station():
    # Line 1 A->C then Line 2 B->F: C != B, so no +1 and not correct
    # detail = 2 + 3 + (-5 + 3) = 3; reward = 0.5 * 3 * 1.5 = 2.25
    ans = plan_text([("Line 1", "A", "C"), ("Line 2", "B", "F")])
    out = score([planning("A", "F", 1)], [ans])
    assert (out["accuracy"][0], out["detail"][0]) == (0.0, 3.0)
    assert out["overall"][0] == pytest.approx(2.25)


def test_extra_section_allowance_removes_the_planning_traps():
    """The official rule charges every plan's last section -5. For a policy that cannot yet
    find the line, that makes a well-formed wrong plan worth less than an unparseable answer,
    and a one-section answer to a 1-transfer question worth more than a wrong two-section
    plan. `extra_section_allowance=1` (a deviation) charges only sections beyond the
    transfers + 1 a plan needs."""
    a_d, a_f = planning("A", "D", 0), planning("A", "F", 1)
    wrong_line = plan_text([("Line 2", "A", "D")])
    one_section = plan_text([("Line 1", "A", "F")])
    wrong_transfer = plan_text([("Line 1", "A", "C"), ("Line 2", "B", "F")])
    # Official: wrong line 0.5 * (2 - 5 + 0) = -1.5 < 0 (unparseable); on A->F one section
    # 0.5 * (2 + 3) * 1.5 = 3.75 > the wrong two-section plan's 0.5 * (2 + 3 - 5 + 3) * 1.5 = 2.25.
    assert one(a_d, wrong_line) == pytest.approx(-1.5)
    assert one(a_d, "no plan") == 0.0
    assert one(a_f, one_section) == pytest.approx(3.75)
    assert one(a_f, wrong_transfer) == pytest.approx(2.25)
    # Allowance 1: wrong line 0.5 * (2 + 0) = 1.0 > 0; one section still 3.75, the wrong
    # two-section plan 0.5 * (2 + 3 + 3) * 1.5 = 6.0 > 3.75; correct plans gain the 5 back:
    # 0-transfer 10 + 0.5 * (2 + 4) = 13, 1-transfer (10 + 0.5 * (2 + 3 + 1 + 3)) * 1.5 = 21.75.
    kw = {"extra_section_allowance": 1}
    assert one(a_d, wrong_line, **kw) == pytest.approx(1.0)
    assert one(a_f, one_section, **kw) == pytest.approx(3.75)
    assert one(a_f, wrong_transfer, **kw) == pytest.approx(6.0)
    assert one(a_d, plan_text([("Line 1", "A", "D")]), **kw) == pytest.approx(13.0)
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])
    assert one(a_f, ans, **kw) == pytest.approx(21.75)
    # A third section on a 1-transfer question still pays: official detail
    # 2 + (3 + 1) + (-5 + 3) + (-5 + 3) = 2; allowance 1 charges the third section only, 7.
    three = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F"), ("Line 3", "F", "G")])
    assert one(planning("A", "G", 1), three, "detail", **kw) == pytest.approx(
        one(planning("A", "G", 1), three, "detail") + 5.0)
    with pytest.raises(ValueError, match="extra_section_allowance"):
        one(a_d, wrong_line, extra_section_allowance=2)


def test_detail_is_capped_at_ten():
    # A->H with a stated transfer count of 3, answered in 3 chained sections:
    # 2 + (3 + 1) + (3 + 1) + 3 = 13 -> capped to 10; reward = (10 + 5) * 1.5 = 22.5
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F"), ("Line 3", "F", "H")])
    out = score([planning("A", "H", 3)], [ans])
    assert out["detail"][0] == 10.0
    assert out["overall"][0] == pytest.approx(22.5)


def test_accuracy_and_detail_use_their_own_key_checks():
    # The accuracy rule keeps only sections with case-sensitive keys; the detail rule also keeps
    # lower-case ones. The trailing lower-case section is invisible to accuracy (correct: +10)
    # but is the detail's last section, whose arrival (no "Arrival Stop:" to split on) is the
    # whole cleaned section text != D, so detail = 0. reward = 10.
    ans = section("Line 1", "A", "D") + "--\nroute name: Line 1\ndeparture stop: D\narrival stop: D"
    out = score([planning("A", "D", 0)], [ans])
    assert (out["accuracy"][0], out["detail"][0], out["overall"][0]) == (1.0, 0.0, 10.0)


def test_names_are_cleaned_like_the_official_code():
    # "A Station" -> "a"; "B (Transfer Station)" in the metro -> "b"; "8-F" style dashes vanish.
    ans = plan_text([("Line 1", "A Station", "b"), ("Line 2", "B  station", "F (Exit 2)")])
    out = score([planning("A", "F", 1)], [ans])
    assert out["accuracy"][0] == 1.0 and out["detail"][0] == 4.0
    # Route names are matched verbatim (only the Beijing aliases are rewritten): "line 1" fails.
    out = score([planning("A", "D", 0)], [plan_text([("line 1", "A", "D")])])
    assert out["accuracy"][0] == 0.0
    # Alias: any route name containing 八通 is Line 1 -> correct.
    out = score([planning("A", "D", 0)], [plan_text([("八通线", "A", "D")])])
    assert out["accuracy"][0] == 1.0


def test_difficulty_weights_and_transfer_bonus():
    ans = plan_text([("Line 1", "A", "D")])
    # 0 transfers: weight = map weight only: 10.5 * {1.0, 1.2, 1.5}
    for d, w in (("easy", 1.0), ("middle", 1.2), ("hard", 1.5)):
        assert one(planning("A", "D", 0, difficulty=d), ans) == pytest.approx(10.5 * w)
    # VQA: map weight only, never the transfer bonus: 10 * 1.5 = 15
    assert one(vqa("TorF1", 1, difficulty="hard"), "\\boxed{yes}") == pytest.approx(15.0)


def test_baseline_mode():
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])
    rec = planning("A", "F", 1, difficulty="hard")
    # baseline: weight 1, no detail -> 10
    assert one(rec, ans, mode="baseline") == pytest.approx(10.0)
    # the official code's own "baseline" keeps the detail: 10 + 0.5 * 4 = 12
    assert one(rec, ans, mode="baseline", baseline_keeps_detail=True) == pytest.approx(12.0)


def test_format_term_option():
    rec = planning("A", "D", 0, difficulty="middle")
    good = plan_text([("Line 1", "A", "D")])
    # format_weight 1: (10 + 0.5 + 1) * 1.2 = 13.8; off by default: 10.5 * 1.2 = 12.6
    assert one(rec, good, format_weight=1.0) == pytest.approx(13.8)
    assert one(rec, good) == pytest.approx(12.6)
    # A stray non-section chunk makes the plan ill-formed: no format term, 12.6 again
    assert one(rec, good + "--\nsome text", format_weight=1.0) == pytest.approx(12.6)
    # VQA: one \boxed{} with a valid answer, even if wrong: format 1, correct 0 -> 1.0
    assert one(vqa("TorF1", 1), "\\boxed{no}", format_weight=1.0) == pytest.approx(1.0)
    assert one(vqa("TorF1", 1), "\\boxed{no} \\boxed{no}", "format_ok") == 0.0
    # require a thinking block
    rec0 = vqa("TorF1", 1)
    assert one(rec0, "\\boxed{yes}", "format_ok", format_require_think=True) == 0.0
    think = "<think>B is on Line 1</think>\\boxed{yes}"
    assert one(rec0, think, "format_ok", format_require_think=True) == 1.0


def test_counting1_stop_list_option():
    # A..D on Line 1: intermediate stops {B, C}. "Stops: [B, C, B, X]": +0.5 +0.5 -0.5 (repeat)
    # -0.5 (wrong) = 0; "Stops: [B, C, X]": 0.5; answer \boxed{B} = option 1 = 2 stops: correct
    rec = vqa("Counting1", 1)
    text = "Stops: [B, C, X]\n\\boxed{B}"
    assert one(rec, text) == pytest.approx(10.0)  # disabled by default (official)
    assert one(rec, text, "detail", counting1_detail=True) == pytest.approx(0.5)
    assert one(rec, text, counting1_detail=True) == pytest.approx(10.25)
    rep = "Stops: [B, C, B, X]\n\\boxed{B}"
    assert one(rec, rep, "detail", counting1_detail=True) == pytest.approx(0.0)


def test_arrival_field_option_for_long_answers():
    # Official: the arrival is everything after "Arrival Stop:", so a long-template section's
    # arrival is "D\nNumber of Via Stops: 2" -> no match -> 0. With arrival_field="line": 10.5.
    ans = section("Line 1", "A", "D", "Number of Via Stops: 2")
    rec = planning("A", "D", 0, template="long_num_via")
    assert one(rec, ans) == 0.0
    assert one(rec, ans, arrival_field="line") == pytest.approx(10.5)
    assert one(rec, ans, arrival_field="auto") == pytest.approx(10.5)
    # "auto" keeps the official rule for short-template records: 0 again
    short = planning("A", "D", 0, template="short")
    assert one(short, ans, arrival_field="auto") == 0.0


@pytest.mark.parametrize(
    "task, truth, text, expected",
    [
        ("TorF1", 1, "\\boxed{yes}", 1),
        ("TorF1", 1, "\\boxed{Yes}", 1),
        ("TorF2", 0, "The answer is no.", 1),
        ("TorF2", 0, "the final answer is No\nbecause", 1),
        ("TorF1", 1, "\\boxed{no} wait \\boxed{yes}", 1),  # last \boxed{} wins
        ("TorF1", 1, "\\boxed{yes} wait \\boxed{no}", 0),
        ("TorF1", 1, "yes and no", 0),
        ("Counting1", 2, "\\boxed{C}", 1),
        ("Counting1", 2, "\\boxed{c}", 1),
        ("Counting1", 2, "\\boxed{C) 25}", 0),
        ("Counting2", 3, "\\boxed{3}", 1),
        ("Counting2", 3, "\\boxed{ 3 }.", 1),
        ("Counting2", 3, "\\boxed{3.0}", 0),
        ("Counting2", 3, "\\boxed{x = 3}", 1),  # value after "="
        ("Counting3", 6, "The answer is 6.", 1),
        ("Counting3", 6, "\\boxed{\\text{6}}", 0),  # official quirk: leaves "{6}"
        ("TorF1", 0, "\\boxed{\\text{no}", 0),  # unclosed: the whole text is kept -> "{no"
        ("Counting3", 10, "\\boxed{1_0}", 1),  # Python int() semantics, as the official code
        ("Counting3", 6, "\\boxed{99999999999999999999}", 0),
    ],
)
def test_vqa_correctness(task, truth, text, expected):
    assert one(vqa(task, truth), text, "accuracy") == expected


def test_components_add_up():
    recs = [planning("A", "F", 1, difficulty="hard"), vqa("Counting2", 3, difficulty="middle")]
    texts = [plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")]), "\\boxed{3}"]
    out = score(recs, texts, format_weight=0.5)
    total = (out["correct_reward"] + out["detail_reward"] + out["format_reward"]) * out["weight"]
    np.testing.assert_allclose(out["overall"], total, rtol=1e-6)
    # planning: (10 + 2 + 0.5) * 2.0 = 25; Counting2: (10 + 0 + 0.5) * 1.2 = 12.6
    np.testing.assert_allclose(out["overall"], [25.0, 12.6], rtol=1e-6)


def test_every_constant_comes_from_the_config():
    rec = planning("A", "F", 1)
    ans = plan_text([("Line 1", "A", "B"), ("Line 2", "B", "F")])
    # 2 + 3 + 1 - 5 + 3 = 4 with the official constants; now endpoint 1, route 2 (transfers),
    # transfer 0.5, penalty 4: 1 + (2 + 0.5) + (-4 + 2) = 1.5
    custom = dict(endpoint_credit=1.0, route_credit_transfer=2.0, transfer_credit=0.5)
    assert one(rec, ans, "detail", extra_section_penalty=4.0, **custom) == pytest.approx(1.5)
    # direct credit 6 on a 0-transfer question: 2 - 5 + 6 = 3
    direct = plan_text([("Line 1", "A", "D")])
    assert one(planning("A", "D", 0), direct, "detail", route_credit_direct=6.0) == 3.0
    # Counting1 step 1.0: "Stops: [B, C, X]" = 1 + 1 - 1 = 1
    c1 = vqa("Counting1", 1)
    text = "Stops: [B, C, X]\n\\boxed{B}"
    assert one(c1, text, "detail", counting1_detail=True, counting1_step=1.0) == 1.0
