"""The official text rules: both clean_string variants, answer extraction, sections, stops."""

from __future__ import annotations

import pytest

from rewardmap_jax.rewards import text as T


@pytest.mark.parametrize(
    "raw, rw, rm",
    [
        ("Farrer Park", "farrerpark", "farrerpark"),
        ("Farrer Park Station", "farrerpark", "farrerparkstation"),  # only RewardMap drops it
        ("Metro Center (Exit B)", "center", "center"),
        # official quirk: "Univ." -> "University", then "Univ" inside it -> "University" again
        ("Nat'l Univ. Hospital", "natluniversityersityhospital", "nat'luniv.hospital"),
        ("Tech Park", "technologypark", "techpark"),
        ("Xizhimen Road", "xizhimenlu", "xizhimenroad"),
        ("Asian Games Village", "yayuncun", "asiangamesvillage"),
        ("西直门站", "西直门", "西直门站"),
        ("西直门（换乘站）", "西直门", "西直门"),
        ("Old-Town,  *Gate*\n", "oldtowngate", "oldtowngate"),
    ],
)
def test_clean_string_variants(raw, rw, rm):
    assert T.clean_rw(raw) == rw
    assert T.clean_rm(raw) == rm


def test_clean_is_not_idempotent_like_the_official_code():
    # The official code cleans predicted stops twice; "STATION" only disappears the second time.
    assert T.clean_rw("A STATION") == "astation"
    assert T.clean_rw(T.clean_rw("A STATION")) == "a"


def test_route_aliases_and_annotations():
    assert T.canonical_route_name("八通线") == "Line 1"
    assert T.canonical_route_name("大兴线") == "Line 4"
    assert T.canonical_route_name("Line 2") == "Line 2"
    metro = {"L": ["A (Transfer Station)", "B (Branch-starting Station)", "C（支线起始站）"]}
    assert T.clean_metro(metro) == {"L": ["A", "B", "C"]}
    assert T.clean_metro({"L": ["A"], "Other city line": None}) == {"L": ["A"]}


@pytest.mark.parametrize(
    "text, answer",
    [
        ("\\boxed{Yes}", "yes"),
        ("I think \\boxed{no}. Wait, \\boxed{yes}.", "yes"),
        ("The answer is B. Because", "b"),
        ("blah\nthe final answer is 12\nextra", "12"),
        ("The correct answer is: C", "c"),
        ("no", "no"),
        ("\\boxed{x = 7}", "7"),
        ("\\boxed{7 km}", "7"),
        ("\\boxed{.}", "0"),  # a lone "." becomes "0." then "0"
        ("\\boxed{$5$}", "5"),
    ],
)
def test_extract_vqa_answer(text, answer):
    assert T.extract_vqa_answer(text) == answer


def test_answer_codes():
    assert T.answer_code("TorF1", "yes") == 1 and T.answer_code("TorF2", "no") == 0
    assert T.answer_code("TorF1", "true") == T.INVALID_ANSWER
    assert T.answer_code("Counting1", "d") == 3 and T.answer_code("Counting1", "e") == -1
    assert T.answer_code("Counting2", "+4") == 4 and T.answer_code("Counting3", "4.0") == -1
    assert T.answer_code("Counting3", "9" * 5000) == -1  # int() refuses > 4300 digits
    assert T.answer_code("Counting3", str(2**40)) == -1  # cannot be a count
    with pytest.raises(ValueError, match="not a VQA question type"):
        T.answer_code("planning", "x")


def test_parse_sections_rules():
    text = (
        "Route Name: Line 1\nDeparture Stop: A Station\nArrival Stop: B\n--\n"
        "route name: Line 2\ndeparture stop: B\narrival stop: F\n--\n\n--\nnot a section"
    )
    secs, chunks = T.parse_sections(text)
    assert chunks == 3 and len(secs) == 2
    assert secs[0] == T.Section("Line 1", "a", "b", strict=True, regex_ok=True)
    # lower-case keys: kept by the reward rule, with the official "Wrong" placeholders
    assert (secs[1].route, secs[1].departure, secs[1].strict) == ("Wrong", "Wrong", False)
    strict, _ = T.parse_sections(text, lenient_keys=False)
    assert len(strict) == 1
    long_text = "Route Name: L\nDeparture Stop: A\nArrival Stop: B\nNumber of Via Stops: 3 stops"
    (s,), _ = T.parse_sections(long_text, T.clean_rm, False, "regex", "num_via")
    assert (s.arrival, s.num_via, T.first_int(s.num_via)) == ("b", "3 stops", 3)
    (s,), _ = T.parse_sections(long_text, T.clean_rm, False, "remainder")
    assert s.arrival == "bnumberofviastops:3stops"
    # "regex" needs a newline after the arrival (official long metric); "line" does not
    (s,), _ = T.parse_sections("Route Name: L\nDeparture Stop: A\nArrival Stop: B", arrival="regex")
    assert (s.arrival, s.regex_ok) == ("Wrong", False)
    (s,), _ = T.parse_sections("Route Name: L\nDeparture Stop: A\nArrival Stop: B", arrival="line")
    assert (s.arrival, s.regex_ok) == ("b", True)
    assert T.first_int("none") == 0


def test_extract_stops_and_think():
    text = "Stops: [Campo Grande, Roma (Metro), and Areeiro, ..., Olaias.]\n4 stops"
    assert T.extract_stops(text) == ["Campo Grande", "Roma (Metro)", "Areeiro", "Olaias"]
    assert T.extract_stops("Stops: [a, b") == []
    assert T.extract_stops("no list") == []
    assert T.has_think_block("<think>x</think> \\boxed{1}")
    assert not T.has_think_block("<think>x \\boxed{1}")
    assert not T.has_think_block("\\boxed{1}<think>x</think>")
    assert not T.has_think_block("<think>a</think><think>b</think>")
