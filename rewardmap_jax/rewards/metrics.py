"""ReasonMap / ReasonMap-Plus evaluation metrics (host, model-free).

* ReasonMap accuracy (short / long) and map score (short max 20, long max 40, best over every
  reference plan in `record.routes`), with the ReasonMap `clean_string` ([RM] main.py rules).
* ReasonMap-Plus accuracy per type (same answer extraction as the reward), Count / TorF splits.
* Difficulty-weighted versions. The papers do not publish their weight matrix, so the default
  weights are the RewardMap reward's own map weights (easy/middle/hard = 1.0/1.2/1.5) times the
  same scale for question difficulty (easy/medium/hard = 1.0/1.2/1.5); pass `weights` to change.

Deviations from [RM] main.py, all because our records carry reference plans already in the metro
vocabulary (the official code normalises map-app names instead; see docs/rewards.md):
  reference route/stop names are compared as stored (cleaned), without the app-name regexes (which
  in the official code read the *prediction's* route name, and copy the departure stop into the
  arrival stop when the departure ends in "Station"), and via stops are split and cleaned for
  every city, not only Chinese ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import PLUS_TYPES, Record
from rewardmap_jax.rewards import text as T

DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    "map": {"easy": 1.0, "middle": 1.2, "hard": 1.5},
    "question": {"easy": 1.0, "medium": 1.2, "hard": 1.5},
}
SHORT_CAP, LONG_CAP = 10.0, 20.0  # part caps; a correct answer adds the cap again (max 20 / 40)
NUM_VIA_FULL, VIA_CAP = 4.0, 10.0


def _metric_sections(text: str, template: str) -> list[T.Section]:
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


def _plan_score(sections: Sequence[T.Section], plan: Sequence[Mapping[str, Any]], long: bool):
    """Map score of one answer against one reference plan, before the cap and accuracy bonus."""
    c = T.clean_rm
    score, num_via_score, via_map_score = 1.0, 0.0, 0.0
    union: set[str] = set()
    inter: set[str] = set()
    for s, ref in zip(sections, plan, strict=False):
        ref_route = str(ref.get("route_name", ""))
        if c(ref_route) == c(s.route):
            score += 2
        if c(str(ref.get("departure_stop", ""))) == c(s.departure):
            score += 1
        if c(str(ref.get("arrival_stop", ""))) == c(s.arrival):
            score += 1
        if not long:
            continue
        if s.num_via is not None:
            ref_n = int(ref.get("num_via_stops", 0) or 0)
            err = abs(T.first_int(s.num_via) - ref_n)
            if err == 0:
                num_via_score += NUM_VIA_FULL
            elif ref_n != 0:
                num_via_score += max(0.0, NUM_VIA_FULL - err / ref_n * NUM_VIA_FULL)
        else:
            pred_via = [c(v) for v in (s.via or "").split(",") if c(v)]
            ref_via = [c(str(v)) for v in ref.get("via_stops", []) or []]
            via_map_score += sum(1 for v in pred_via if v in ref_via)
            if c(ref_route) == c(s.route):
                union.update(ref_via, pred_via)
                inter.update(set(ref_via) & set(pred_via))
    if long:
        iou = len(inter) / len(union) if union else 0.0
        score += (iou * VIA_CAP + min(VIA_CAP, via_map_score)) / 2 + min(VIA_CAP, num_via_score)
    return score


def map_score(sections: Sequence[T.Section], record: Record, acc: bool) -> float:
    """Best map score over the record's reference plans (0 when it has none or no sections)."""
    if not sections:
        return 0.0
    long = record.template != "short"
    cap = LONG_CAP if long else SHORT_CAP
    c = T.clean_rm
    ends = c(sections[0].departure) == c(record.station_1 or "") and c(sections[-1].arrival) == c(
        record.station_2 or ""
    )
    best = 0.0
    for plan in (record.routes or {}).values():
        score = _plan_score(sections, plan, long) if ends else 0.0
        score = min(cap, score) + (cap if acc else 0.0)
        best = max(best, score)
    return best


def score_planning(record: Record, completion: str) -> dict[str, float]:
    """Accuracy and map score of one planning completion."""
    sections = _metric_sections(completion, record.template)
    acc = planning_accuracy(sections, record)
    return {"acc": float(acc), "map_score": map_score(sections, record, acc)}


def score_vqa(record: Record, completion: str) -> dict[str, float]:
    """ReasonMap-Plus accuracy of one VQA completion (the official extraction rules)."""
    code = T.answer_code(record.type, T.extract_vqa_answer(completion))
    return {"acc": float(code != T.INVALID_ANSWER and code == record.answer)}


def sample_weight(record: Record, weights: Mapping[str, Mapping[str, float]]) -> float:
    w = float(weights["map"][record.difficulty_city])
    if record.type == "planning":
        w *= float(weights["question"].get(record.difficulty_question, 1.0))
    return w


def _mean(values: list[float], w: list[float] | None = None) -> float | None:
    if not values:
        return None
    if w is None:
        return float(np.mean(values))
    return float(np.average(values, weights=w))


def evaluate_completions(
    records: Sequence[Record],
    completions: Sequence[str],
    weights: Mapping[str, Mapping[str, float]] | None = None,
    answer_after: str | None = None,
) -> dict[str, Any]:
    """Scores completions (completion i answers records[i]); returns summary + per-sample rows.

    Args:
      weights: {"map": {easy, middle, hard}, "question": {easy, medium, hard}} difficulty weights
        for the weighted metrics (default `DEFAULT_WEIGHTS`).
      answer_after: if set (e.g. "</think>"), only text after its last occurrence is scored, as
        the official evaluation does for thinking models.

    Returns:
      {"summary": {metric: value or None, "count/...": n}, "samples": [per-sample dicts]}.
    """
    if len(records) != len(completions):
        raise ValueError(f"evaluate_completions: {len(records)} records, {len(completions)} texts")
    weights = weights or DEFAULT_WEIGHTS
    groups: dict[str, tuple[list[float], list[float]]] = {}
    samples = []

    def add(name: str, value: float, w: float) -> None:
        vals, ws = groups.setdefault(name, ([], []))
        vals.append(value)
        ws.append(w)

    for i, (r, text) in enumerate(zip(records, completions, strict=True)):
        if not isinstance(text, str):
            raise ValueError(f"evaluate_completions: completion {i} is not a string")
        if answer_after:
            text = text.split(answer_after)[-1].strip()
        w = sample_weight(r, weights)
        if r.type == "planning":
            s = score_planning(r, text)
            kind = "short" if r.template == "short" else "long"
            add(f"reasonmap/acc_{kind}", s["acc"], w)
            add(f"reasonmap/map_score_{kind}", s["map_score"], w)
        else:
            s = score_vqa(r, text)
            add(f"plus/acc_{r.type}", s["acc"], w)
            add("plus/acc_count" if r.type.startswith("Counting") else "plus/acc_torf", s["acc"], w)
            add("plus/acc", s["acc"], w)
        samples.append({"uid": r.uid, "type": r.type, "template": r.template, "weight": w, **s})

    summary: dict[str, Any] = {}
    for name in sorted(groups):
        vals, ws = groups[name]
        summary[name] = _mean(vals)
        head, _, tail = name.partition("/")
        summary[f"{head}/weighted_{tail}"] = _mean(vals, ws)
        summary[f"count/{name}"] = len(vals)
    for t in PLUS_TYPES:
        summary.setdefault(f"plus/acc_{t}", None)
    summary["weights"] = {k: dict(v) for k, v in weights.items()}
    return {"summary": summary, "samples": samples}
