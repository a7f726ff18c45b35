"""ReasonMap / ReasonMap-Plus evaluation metrics of one completion (host, model-free).

    score_planning(record, completion)   # {"acc", "map_score_official", "map_score_corrected"}
    score_vqa(record, completion)        # {"acc"}

Rules of the official ReasonMap evaluation (`main.py`, `tools.py`, github.com/fscdc/ReasonMap;
restated with every quirk in docs/rewards.md):

* Accuracy (`planning_accuracy`): endpoints, every route name a metro line holding both its
  stops, transfers chained. It does not read the reference plans, and the official code has no
  known bug in it, so it is the same in both scoring modes.
* Map score (`map_score`), best over every reference plan in `record.routes`: +1 when the
  endpoints match, then per (answer section, reference section) pair route +2, departure +1,
  arrival +1, and for long templates the number-of-via-stops or via-stops terms; capped at 10
  (short) / 20 (long), plus the cap again when the answer is correct (max 20 / 40).

The reference plans of the real data are in map-app style ("地铁14号线(张郭庄--善各庄)",
"坝堰", "Metro A", "Battistini"). Before comparing, the official scorer rewrites them into the
metro vocabulary the answers use ("Line 14", "坝堰站", "Battistini Station"). Two modes:

* `official` (`MODES[0]`): that rewriting exactly as the official code does it, bugs included
  (docs/rewards.md lists each bug and its effect): outside China the route-name regexes read the
  *answer's* route name (so the route is credited only for an empty or non-ASCII name); the
  reference arrival becomes the departure when the departure already ends in 站 / "Station"
  (short questions in China, every question elsewhere) and otherwise gets the suffix even when
  it has one; via-stop lists are split on "," without stripping and only when they contain 站;
  outside China the reference via list does not exist (the official code raises `NameError` or
  reuses a previous sample's list: we count no via stop); a missing "Number of Via Stops:"
  field reads the first number anywhere in the section.
* `corrected` (`MODES[1]`): the same score with those bugs fixed: a reference name already in
  the metro vocabulary is kept (so map-world references, which are, score as given), other
  references get the rewriting applied to the *reference*, with the city-specific line names
  before the generic patterns; the arrival keeps its own name; via stops are split, cleaned and
  compared for every city; a missing count or via list scores nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewardmap_jax.mapworld.records import Record
from rewardmap_jax.rewards import text as T

MODES: tuple[str, ...] = ("official", "corrected")
SHORT_CAP, LONG_CAP = 10.0, 20.0  # part caps; a correct answer adds the cap again (max 20 / 40)
NUM_VIA_FULL, VIA_CAP = 4.0, 10.0
CHINA = "china"  # `record.country` of the Chinese cities (the official `country == "china"`)
_CN_SUFFIX, _EN_SUFFIX = "站", "Station"


def is_china(record: Record) -> bool:
    return record.country == CHINA


def metric_sections(text: str, template: str) -> list[T.Section]:
    """The sections the official scorer reads: short answers take the arrival as the rest of
    the section, long ones `Arrival Stop: (.*?)\\n` plus their via field."""
    if template == "short":
        return T.parse_sections(text, T.clean_rm, lenient_keys=False)[0]
    field = "num_via" if template == "long_num_via" else "via"
    return T.parse_sections(text, T.clean_rm, False, arrival="regex", long_field=field)[0]


def planning_accuracy(sections: Sequence[T.Section], record: Record) -> bool:
    """ReasonMap accuracy: endpoints, lines exist and hold both stops, transfers chain."""
    if not sections:
        return False
    c = T.clean_rm
    if c(sections[0].departure) != c(record.station_1 or "") or c(sections[-1].arrival) != c(
        record.station_2 or ""
    ):
        return False
    metro = T.clean_metro(record.metro)
    for i, s in enumerate(sections):
        route = T.canonical_route_name(s.route)
        if route not in metro:
            return False
        stations = [c(x) for x in metro[route]]
        if c(s.departure) not in stations or c(s.arrival) not in stations:
            return False
        if i < len(sections) - 1 and c(s.arrival) != c(sections[i + 1].departure):
            return False
    return True


def direct_lines(record: Record) -> tuple[str, ...]:
    """The metro lines L on which the one-section plan "L: station_1 -> station_2" passes the
    accuracy rule above: the questions a constant line answer (copy the endpoints, always name
    L) gets right. Empty for a question that needs a transfer."""
    ends = {"departure": record.station_1 or "", "arrival": record.station_2 or ""}
    return tuple(sorted(
        line for line in record.metro
        if planning_accuracy([T.Section(route=line, strict=True, regex_ok=True, **ends)], record)
    ))


# ---------------------------------------------------------------------------------------------
# Reference names -> metro vocabulary

_DIGITS = re.compile(r"(\d+)")
_PARENS = re.compile(r"\(.*?\)")
_I = re.IGNORECASE
# The official regexes for non-Chinese route names, in the official order (`main.py`).
_METRO_X_LINE = re.compile(r"Metro\s+([A-Z0-9]{1,2})[-\s]?Line", _I)
_METRO_X = re.compile(r"Metro\s+([A-Z0-9]{1,2})", _I)
_LINEA_X = re.compile(r"Linea\s+([A-Z0-9]{1,2})", _I)
_ANY_X = re.compile(r"([A-Z0-9]{1,2})", _I)
_M_N = re.compile(r"M(\d+)", _I)
_X_LINE = re.compile(r"([A-Z0-9]{1,2})\s+Line", _I)
_X_TRAIN = re.compile(r"([A-Z0-9]{1,2})\s+Train", _I)
# City-specific names of the official code (app name -> metro line), by `record.city`.
CITY_ROUTES: dict[str, dict[str, str]] = {
    "auckland": {"West": "Western Line", "Sth": "Southern Line", "East": "Eastern Line"},
    "dubai": {"MRed2": "Red Line", "MGrn": "Green Line", "MRed1": "Red Line"},
    "kl": {
        "MRT Putrajaya Line": "Line 12", "Ampang Line": "Line 3", "LRT Kelana Jaya Line": "Line 5",
        "KTM Tanjung Malim - Pelabuhan Klang": "Line 2", "LRT Sri Petaling Line": "Line 4",
        "MRT Kajang Line": "Line 9", "KTM Batu Caves - Pulau Sebang/Tampin": "Line 1",
    },
}  # fmt: skip


def china_route(name: str) -> str:
    """"地铁14号线(张郭庄--善各庄)" -> "Line 14"; "地铁昌平线(...)" -> "昌平线" (official rule)."""
    m = _DIGITS.search(name)
    if m:
        return f"Line {int(m.group(1))}"
    return _PARENS.sub("", name).replace("地铁", "")


def official_route(name: str, city: str) -> str:
    """The official non-Chinese cascade, in its order: the generic 1-2 character pattern comes
    fourth, so it catches every name with an ASCII letter or digit ("Line 2" -> "Line Li") and
    the city rules after it are reached only by names without one."""
    for pattern in (_METRO_X_LINE, _METRO_X, _LINEA_X):
        if m := pattern.search(name):
            return "Line " + m.group(1)
    if m := _ANY_X.search(name):
        x = m.group(1)
        return "Line " + ("B" if x == "B1" and city == "rome" else x)
    if name in ("West", "Sth", "East") and city == "auckland":
        return CITY_ROUTES["auckland"][name]
    if m := _M_N.search(name):
        return "Line " + m.group(1)
    for table in ("dubai", "kl"):
        if city == table and name in CITY_ROUTES[table]:
            return CITY_ROUTES[table][name]
    for pattern in (_X_LINE, _X_TRAIN):
        if m := pattern.search(name):
            return "Line " + m.group(1)
    return name


_WHOLE = {
    "metro_x_line": re.compile(r"^Metro\s+([A-Z0-9]{1,2})[-\s]?Line$", _I),  # Los Angeles
    "metro_linea_x": re.compile(r"^(?:Metro|Linea)\s+([A-Z0-9]{1,2})$", _I),  # Rome
    "m_n_es": re.compile(r"^M(\d+)-", _I),  # Budapest "M1-es Metróvonal"
    "x_line_train": re.compile(r"^([A-Z0-9]{1,2})\s+(?:Line|Train)$", _I),  # New York
    "x": re.compile(r"^([A-Z0-9]{1,2})$", _I),  # Oslo, Geneva, Toronto, Sydney "M1", Rome "B1"
}


def corrected_route(name: str, city: str) -> str:
    """The official rewriting as its comments describe it, applied to the reference name:
    city tables first, then each pattern matched against the whole name; other names (Lisbon,
    Singapore, Miami, Washington) are kept."""
    if name in CITY_ROUTES.get(city, {}):
        return CITY_ROUTES[city][name]
    for pattern in _WHOLE.values():
        if m := pattern.search(name.strip()):
            x = m.group(1)
            return "Line " + ("B" if x.upper() == "B1" and city == "rome" else x)
    return name


def _with_suffix(name: str, china: bool) -> str:
    if china:
        return name if name.endswith(_CN_SUFFIX) else name + _CN_SUFFIX
    return name if name.endswith(_EN_SUFFIX) else name + " " + _EN_SUFFIX


def _official_ref(pred: T.Section, ref: Mapping[str, Any], record: Record, long: bool):
    """(route, departure, arrival, via stops) of one reference section, rewritten exactly as
    the official code does for this answer section."""
    china = is_china(record)
    dep, arr = str(ref["departure_stop"]), str(ref["arrival_stop"])
    suffix = _CN_SUFFIX if china else _EN_SUFFIX
    app_dep = _with_suffix(dep, china)
    if china and long:
        app_arr = _with_suffix(arr, china)
    else:  # the arrival is keyed on the departure's suffix (and never checked itself)
        app_arr = dep if dep.endswith(suffix) else arr + ("站" if china else " Station")
    if china:
        route = china_route(str(ref["route_name"]))
        via = [_with_suffix(str(v), True) for v in ref.get("via_stops") or ()]
    else:
        route = official_route(pred.route, record.city)
        via = []
    return route, app_dep, app_arr, via


class _Vocabulary:
    """A record's metro vocabulary: line names and cleaned station names."""

    def __init__(self, record: Record) -> None:
        self.china = is_china(record)
        self.city = record.city
        self.lines = set(record.metro)
        self.stations = {T.clean_rm(s) for st in T.clean_metro(record.metro).values() for s in st}

    def route(self, name: str) -> str:
        if name in self.lines:
            return name
        return china_route(name) if self.china else corrected_route(name, self.city)

    def stop(self, name: str) -> str:
        if T.clean_rm(name) in self.stations:
            return name
        return _with_suffix(name, self.china)


def _corrected_ref(ref: Mapping[str, Any], vocab: _Vocabulary):
    return (vocab.route(str(ref["route_name"])), vocab.stop(str(ref["departure_stop"])),
            vocab.stop(str(ref["arrival_stop"])),
            [vocab.stop(str(v)) for v in ref.get("via_stops") or ()])


def _plan_score(sections: Sequence[T.Section], plan: Sequence[Mapping[str, Any]],
                record: Record, mode: str, vocab: _Vocabulary | None) -> float:
    """Map score of one answer against one reference plan, before the cap and accuracy bonus
    (the endpoints already match)."""
    c = T.clean_rm
    long = record.template != "short"
    official = mode == "official"
    score, num_via_score, via_map_score = 1.0, 0.0, 0.0
    union: set[str] = set()
    inter: set[str] = set()
    for s, ref in zip(sections, plan, strict=False):
        if official:
            route, dep, arr, ref_via = _official_ref(s, ref, record, long)
        else:
            route, dep, arr, ref_via = _corrected_ref(ref, vocab)
        route_ok = c(route) == c(s.route)
        score += 2.0 * route_ok + (c(dep) == c(s.departure)) + (c(arr) == c(s.arrival))
        if not long:
            continue
        if record.template == "long_num_via":
            if not official and not s.long_found:
                continue
            ref_n = int(ref.get("num_via_stops") or 0)
            err = abs(T.first_int(s.num_via or "") - ref_n)
            if err == 0:
                num_via_score += NUM_VIA_FULL
            elif ref_n != 0:
                num_via_score += max(0.0, NUM_VIA_FULL - err / ref_n * NUM_VIA_FULL)
            continue
        if official:  # raw pieces, split only when the list mentions 站
            pred_via = (s.via or "").split(",") if "站" in (s.via or "") else []
        else:
            pred_via = [c(v) for v in (s.via or "").split(",") if c(v)] if s.long_found else []
            ref_via = [c(v) for v in ref_via]
        via_map_score += sum(1 for v in pred_via if v in ref_via)
        if route_ok:
            union.update(ref_via, pred_via)
            inter.update(set(ref_via) & set(pred_via))
    if long:
        iou = len(inter) / len(union) if union else 0.0
        score += (iou * VIA_CAP + min(VIA_CAP, via_map_score)) / 2 + min(VIA_CAP, num_via_score)
    return score


def map_score(sections: Sequence[T.Section], record: Record, acc: bool,
              mode: str = "corrected") -> float:
    """Best map score over the record's reference plans (0 when it has none or no sections)."""
    if mode not in MODES:
        raise ValueError(f"map score mode must be one of {MODES}, got {mode!r}")
    if not sections:
        return 0.0
    cap = SHORT_CAP if record.template == "short" else LONG_CAP
    c = T.clean_rm
    ends = c(sections[0].departure) == c(record.station_1 or "") and c(sections[-1].arrival) == c(
        record.station_2 or ""
    )
    vocab = _Vocabulary(record) if mode == "corrected" else None
    best = 0.0
    for plan in (record.routes or {}).values():
        score = _plan_score(sections, plan, record, mode, vocab) if ends else 0.0
        best = max(best, min(cap, score) + (cap if acc else 0.0))
    return best


def score_planning(record: Record, completion: str,
                   modes: Sequence[str] = MODES) -> dict[str, float]:
    """Accuracy and map score (one per mode: `map_score_<mode>`) of one planning completion."""
    sections = metric_sections(completion, record.template)
    acc = planning_accuracy(sections, record)
    out = {"acc": float(acc)}
    for mode in modes:
        out[f"map_score_{mode}"] = map_score(sections, record, acc, mode)
    return out


def score_vqa(record: Record, completion: str) -> dict[str, float]:
    """ReasonMap-Plus accuracy of one VQA completion (the official extraction rules)."""
    code = T.answer_code(record.type, T.extract_vqa_answer(completion))
    return {"acc": float(code != T.INVALID_ANSWER and code == record.answer)}
