"""The ReasonMap map score in its two modes, hand-worked from the official rules
(github.com/fscdc/ReasonMap main.py; docs/rewards.md restates them).

Per reference plan: +1 when the endpoints match, then per (answer section, reference section)
pair route +2, departure +1, arrival +1; long templates add the number-of-via-stops term (per
section: exact +4, else max(0, 4 - |err| / ref * 4) when ref > 0; capped at 10) or the
via-stops term ((IoU * 10 + min(10, via stops found)) / 2, IoU over sections whose route
matches); capped at 10 (short) / 20 (long), plus the cap again when correct.

Before comparing, the official scorer rewrites the reference into the metro vocabulary:
China: route "地铁14号线(...)" -> "Line 14", stops + "站" (unless they end in 站); elsewhere:
stops + " Station", and the route name is derived from the ANSWER's route name by regexes
("Line A" -> "Line Li": never equal). The reference arrival is replaced by the departure when
the departure ends in 站 / "Station" (short questions in China, all questions elsewhere).
"""

from __future__ import annotations

import pytest

from rewardmap_jax.mapworld.records import Record
from rewardmap_jax.rewards import metrics as M

# --- a Chinese city ---------------------------------------------------------------------------

CN_METRO = {
    "Line 14": ["北京南站（换乘站）", "园博园站", "大瓦窑站（换乘站）"],
    "Line 9": ["大瓦窑站（换乘站）", "丰台科技园站", "科怡路站"],
}
# Map-app style, as the real `routes` are (北京南站 keeps its 站: it is part of the name).
CN_APP = [
    {"route_name": "地铁14号线(张郭庄--善各庄)", "departure_stop": "北京南站",
     "arrival_stop": "大瓦窑", "via_stops": ["园博园"], "num_via_stops": 1},
    {"route_name": "地铁9号线(郭公庄--国家图书馆)", "departure_stop": "大瓦窑",
     "arrival_stop": "科怡路", "via_stops": ["丰台科技园"], "num_via_stops": 1},
]
# The same plan already in the metro vocabulary.
CN_METRO_VOCAB = [
    {"route_name": "Line 14", "departure_stop": "北京南站", "arrival_stop": "大瓦窑站",
     "via_stops": ["园博园站"], "num_via_stops": 1},
    {"route_name": "Line 9", "departure_stop": "大瓦窑站", "arrival_stop": "科怡路站",
     "via_stops": ["丰台科技园站"], "num_via_stops": 1},
]
CN_ANSWER = [("Line 14", "北京南站", "大瓦窑站"), ("Line 9", "大瓦窑站", "科怡路站")]

# --- a non-Chinese city -------------------------------------------------------------------------

EN_METRO = {
    "Line A": ["Battistini Station", "Cornelia Station", "Termini Station (Transfer Station)"],
    "Line B": ["Termini Station (Transfer Station)", "Cavour Station", "Colosseo Station"],
}
EN_APP = [
    {"route_name": "Metro A", "departure_stop": "Battistini", "arrival_stop": "Termini",
     "via_stops": ["Cornelia"], "num_via_stops": 1},
    {"route_name": "Metro B", "departure_stop": "Termini", "arrival_stop": "Colosseo",
     "via_stops": ["Cavour"], "num_via_stops": 1},
]
EN_METRO_VOCAB = [
    {"route_name": "Line A", "departure_stop": "Battistini Station",
     "arrival_stop": "Termini Station", "via_stops": ["Cornelia Station"], "num_via_stops": 1},
    {"route_name": "Line B", "departure_stop": "Termini Station",
     "arrival_stop": "Colosseo Station", "via_stops": ["Cavour Station"], "num_via_stops": 1},
]
EN_ANSWER = [("Line A", "Battistini Station", "Termini Station"),
             ("Line B", "Termini Station", "Colosseo Station")]


def record(china: bool, plan, template="short", metro=None, ends=None):
    s1, s2 = ends or (("北京南站", "科怡路站") if china else ("Battistini Station",
                                                         "Colosseo Station"))
    return Record(uid="q", type="planning", question="?", answer=None, figure=None,
                  metro=metro or (CN_METRO if china else EN_METRO), routes={"plan": plan},
                  station_1=s1, station_2=s2, question_transfer_count=len(plan) - 1,
                  country="china" if china else "italy", city="beijing" if china else "rome",
                  template=template, source="reasonmap")


def answer(sections, extras=("", "")):
    return "--\n".join(f"Route Name: {r}\nDeparture Stop: {d}\nArrival Stop: {a}\n{x}"
                       for (r, d, a), x in zip(sections, extras, strict=False))


def both(rec, text):
    out = M.score_planning(rec, text)
    return out["acc"], out["map_score_official"], out["map_score_corrected"]


# --- short template ------------------------------------------------------------------------------


def test_short_chinese_city_app_style_reference():
    # official: +1 ends; section 1: route "地铁14号线(...)" -> "Line 14" +2, departure 北京南站
    # (already ends in 站, kept) +1, arrival: the departure ends in 站, so the reference
    # arrival becomes 北京南站 != 大瓦窑站: +0; section 2: "Line 9" +2, 大瓦窑 + 站 +1, arrival
    # 科怡路 + 站 +1. 1 + 3 + 4 = 8 -> min(10, 8) + 10 (correct) = 18.
    # corrected: the arrival keeps its name: 1 + 4 + 4 = 9 -> 19.
    assert both(record(True, CN_APP), answer(CN_ANSWER)) == (1.0, 18.0, 19.0)


def test_short_chinese_city_metro_vocabulary_reference():
    # official: routes "Line 14" / "Line 9" (digits -> the same) +2 each, departures end in 站
    # (kept) +1 each, both arrivals become their departures: +0. 1 + 3 + 3 = 7 -> 17.
    # corrected: names already in the metro vocabulary are kept: 9 -> 19.
    assert both(record(True, CN_METRO_VOCAB), answer(CN_ANSWER)) == (1.0, 17.0, 19.0)


def test_short_other_city_app_style_reference():
    # official: the route regexes read the ANSWER's "Line A": no "Metro"/"Linea" pattern, the
    # generic [A-Z0-9]{1,2} finds "Li" -> "Line Li" != "Line A": +0 (same for "Line B");
    # departures "Battistini" + " Station" +1, "Termini Station" +1; arrivals: the departures
    # do not end in "Station", so "Termini" / "Colosseo" + " Station" +1 each.
    # 1 + 2 + 2 = 5 -> 15.  corrected: "Metro A" -> "Line A" +2 each: 9 -> 19.
    assert both(record(False, EN_APP), answer(EN_ANSWER)) == (1.0, 15.0, 19.0)


def test_short_other_city_metro_vocabulary_reference():
    # official: routes +0 (as above); departures end in "Station" (kept) +1 each; so both
    # arrivals become the departures: +0. 1 + 1 + 1 = 3 -> 13.  corrected: 9 -> 19.
    assert both(record(False, EN_METRO_VOCAB), answer(EN_ANSWER)) == (1.0, 13.0, 19.0)


def test_wrong_answer_gets_no_bonus_and_wrong_endpoints_nothing():
    # Transfer at 园博园站 (not on Line 9): not correct. official, app reference: +1 ends;
    # section 1: route +2, departure +1, arrival (-> 北京南站) +0; section 2: route +2,
    # departure 园博园站 != 大瓦窑站 +0, arrival 科怡路站 +1: 1 + 3 + 3 = 7 (no bonus).
    # corrected: section 1 arrival 园博园站 != 大瓦窑站 +0: 1 + 3 + 3 = 7.
    wrong = [("Line 14", "北京南站", "园博园站"), ("Line 9", "园博园站", "科怡路站")]
    assert both(record(True, CN_APP), answer(wrong)) == (0.0, 7.0, 7.0)
    # Endpoints wrong: 0 in both modes whatever else matches.
    assert both(record(True, CN_APP), answer(CN_ANSWER[:1])) == (0.0, 0.0, 0.0)


def test_empty_route_name_is_credited_outside_china_only_by_the_official_code():
    # One section "" from Battistini to Colosseo, against the app reference's first section.
    # official: no regex matches "", so the "reference" route is "" == "" +2; departure +1;
    # arrival Termini Station != Colosseo Station +0: 1 + 3 = 4 (not correct: no bonus).
    # corrected: "Line A" != "": 1 + 1 = 2.
    text = "Route Name: \nDeparture Stop: Battistini Station\nArrival Stop: Colosseo Station"
    assert both(record(False, EN_APP), text) == (0.0, 4.0, 2.0)


# --- long templates ------------------------------------------------------------------------------


def test_long_number_of_via_stops_chinese_city():
    # Counts 1 (right) and 2 (reference 1). official: sections 4 + 4 (long questions in China
    # rewrite the arrival correctly) + 1 = 9; via counts: exact +4, |2 - 1| = 1 -> max(0,
    # 4 - 1/1 * 4) = 0; 9 + 4 = 13 -> min(20, 13) + 20 = 33. corrected: the same, 33.
    rec = record(True, CN_APP, template="long_num_via")
    text = answer(CN_ANSWER, ("Number of Via Stops: 1\n", "Number of Via Stops: 2\n"))
    assert both(rec, text) == (1.0, 33.0, 33.0)


def test_long_number_of_via_stops_other_city():
    # Both counts exact. official: sections (0 + 1 + 1) x 2 + 1 = 5, counts 4 + 4 = 8:
    # 13 -> 33. corrected: routes credited: 9 + 8 = 17 -> 37.
    rec = record(False, EN_APP, template="long_num_via")
    text = answer(EN_ANSWER, ("Number of Via Stops: 1\n", "Number of Via Stops: 1\n"))
    assert both(rec, text) == (1.0, 33.0, 37.0)


def test_long_via_stops_chinese_city():
    # Via lists "园博园站" and "科怡路站, 丰台科技园站"; reference (+ 站): [园博园站],
    # [丰台科技园站]. official: split on "," unstripped: "园博园站" found +1; "科怡路站" and
    # " 丰台科技园站" (leading space) not found. Routes match in both sections, so
    # union = {园博园站, 丰台科技园站, 科怡路站, " 丰台科技园站"} (4), intersection {园博园站}:
    # IoU 1/4; via term (2.5 + 1) / 2 = 1.75; 9 + 1.75 = 10.75 -> 30.75.
    # corrected: cleaned pieces: 2 found; union {园博园站, 丰台科技园站, 科怡路站},
    # intersection {园博园站, 丰台科技园站}: IoU 2/3; via term (20/3 + 2) / 2 = 13/3;
    # 9 + 13/3 -> + 20.
    rec = record(True, CN_APP, template="long_via")
    text = answer(CN_ANSWER, ("Via Stops: 园博园站\n", "Via Stops: 科怡路站, 丰台科技园站\n"))
    acc, official, corrected = both(rec, text)
    assert acc == 1.0 and official == pytest.approx(30.75)
    assert corrected == pytest.approx(29 + 13 / 3)


def test_long_via_stops_other_city():
    # official: no 站 in the lists, so no via stop is read, and outside China the reference
    # has no via list (the official code's NameError case): term 0; 5 -> 25.
    # corrected: "Cornelia" + " Station" matches, "Cavour Station" too: 2 found, IoU 2/2 = 1:
    # (10 + 2) / 2 = 6; 9 + 6 = 15 -> 35.
    rec = record(False, EN_APP, template="long_via")
    text = answer(EN_ANSWER, ("Via Stops: Cornelia Station\n", "Via Stops: Cavour Station\n"))
    assert both(rec, text) == (1.0, 25.0, 35.0)


def test_missing_count_reads_the_first_number_of_the_section_officially():
    # Long "Number of Via Stops" question answered without the field: officially the count is
    # the first number anywhere in the section, here the 1 of "Line 1", equal to the
    # reference's 1: +4. 1 + (2 + 1 + 1) + 4 = 9 -> 29. corrected: no count, no credit: 25.
    metro = {"Line 1": ["甲站", "乙站", "丙站"]}
    plan = [{"route_name": "地铁1号线(甲--丙)", "departure_stop": "甲", "arrival_stop": "丙",
             "via_stops": ["乙"], "num_via_stops": 1}]
    rec = record(True, plan, template="long_num_via", metro=metro, ends=("甲站", "丙站"))
    text = answer([("Line 1", "甲站", "丙站")])
    assert both(rec, text) == (1.0, 29.0, 25.0)


def test_best_plan_wins_and_cap():
    # Two plans: the metro-vocabulary copy (official 17) and the app one (official 18): best 18.
    rec = record(True, CN_APP)
    rec.routes = {"a": CN_METRO_VOCAB, "b": CN_APP}
    assert both(rec, answer(CN_ANSWER)) == (1.0, 18.0, 19.0)


# --- name rewriting -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "city", "corrected", "official"), [
    ("Metro A Line", "los_angeles", "Line A", "Line A"),
    ("Metro B-Line", "los_angeles", "Line B", "Line B"),
    ("Metro B", "rome", "Line B", "Line B"),
    ("Linea C", "rome", "Line C", "Line C"),
    ("B1", "rome", "Line B", "Line B"),
    ("M2-es Metróvonal", "budapest", "Line 2", "Line M2"),  # official: generic rule first
    ("MGrn", "dubai", "Green Line", "Line MG"),
    ("Ampang Line", "kl", "Line 3", "Line Am"),
    ("West", "auckland", "Western Line", "Line We"),
    ("5 Train", "new_york", "Line 5", "Line 5"),
    ("Q Train", "new_york", "Line Q", "Line Q"),
    ("M1", "sydney", "Line M1", "Line M1"),
    ("12", "geneva", "Line 12", "Line 12"),
    ("North South Line", "singapore", "North South Line", "Line No"),
    ("Metrorail Orange Line", "miami", "Metrorail Orange Line", "Line Me"),
    ("Azul", "lisboa", "Azul", "Line Az"),
])
def test_route_name_rewriting(name, city, corrected, official):
    assert M.corrected_route(name, city) == corrected
    assert M.official_route(name, city) == official


def test_chinese_route_rewriting():
    assert M.china_route("地铁14号线(张郭庄--善各庄)") == "Line 14"
    assert M.china_route("地铁2号线(8号线)") == "Line 2"
    assert M.china_route("地铁04号线") == "Line 4"
    assert M.china_route("地铁昌平线(昌平西山口--蓟门桥)") == "昌平线"
