"""Completions -> per-question scores -> summary figures with standard errors.

    rows = score_completions(records, completions, reward_fn=..., answer_after="</think>")
    summary = summarize(rows)          # {figure name: {"value", "se", "n"}}

One accuracy everywhere: the ReasonMap rule for route planning and the ReasonMap-Plus rule for
the VQA types (`rewardmap_jax.rewards.metrics`). The map score comes in the two modes of
`metrics.MODES`: real data (any record whose `source` is not the map world) is scored both
ways, map-world data only `corrected` (its references are already in the metro vocabulary, the
official rewriting would only damage them). `reward` is the configured training reward, a
separate figure (never an accuracy).

Figure names (also the keys of the metrics writer, under `eval/`):

| name | over |
| --- | --- |
| `reasonmap/acc_short`, `reasonmap/acc_long` | planning questions of each template |
| `reasonmap/map_score_{short,long}/{official,corrected}` | the same questions |
| `plus/acc`, `plus/acc_count`, `plus/acc_torf`, `plus/acc_<type>` | the VQA questions |
| `accuracy/<type>`, `accuracy/mean` | every question (planning: short and long together) |
| `reward/<type>`, `reward/mean` | every question, when a reward function is given |
| `majority/<type>` | the best constant answer's rate (chance level), no SE; planning: `summarize` |
| `weighted/<any reasonmap/ or plus/ name>` | the same, difficulty-weighted (below) |

Difficulty weights are the project's own: the papers report "weighted" figures but publish no
weights, and the official code has `weight = 1  # TODO`. A question weighs
`map[difficulty_city] * question[difficulty_question]` (the question factor for planning only),
with both scales 1.0 / 1.2 / 1.5 (the RewardMap reward's map weights); reports record them.

Standard errors: for a mean, std(ddof=1) / sqrt(n); for a weighted mean m = sum(w x) / sum(w),
sqrt(n / (n - 1) * sum(w^2 (x - m)^2)) / sum(w) (the same formula when all weights are equal).
None when n < 2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.rewards import metrics

PROJECT_WEIGHTS: dict[str, dict[str, float]] = {
    "map": {"easy": 1.0, "middle": 1.2, "hard": 1.5},
    "question": {"easy": 1.0, "medium": 1.2, "hard": 1.5},
}
WEIGHTED = "weighted/"
MAPWORLD = "mapworld"


def modes_for(record: Record) -> tuple[str, ...]:
    """Map-score modes of a record: both for real data, `corrected` for the map world."""
    return ("corrected",) if record.source == MAPWORLD else metrics.MODES


def sample_weight(record: Record, weights: Mapping[str, Mapping[str, float]]) -> float:
    w = float(weights["map"][record.difficulty_city])
    if record.type == "planning":
        w *= float(weights["question"].get(record.difficulty_question, 1.0))
    return w


def answer_text(completion: str, answer_after: str | None) -> str:
    """The part of a completion that is scored: after the last `answer_after` marker (the
    official evaluation does this for thinking models), else all of it."""
    return completion.split(answer_after)[-1].strip() if answer_after else completion


def score_completions(
    records: Sequence[Record],
    completions: Sequence[str],
    *,
    reward_fn: Callable[[Sequence[Record], Sequence[str]], Mapping[str, Any]] | None = None,
    answer_after: str | None = None,
    weights: Mapping[str, Mapping[str, float]] = PROJECT_WEIGHTS,
) -> list[dict[str, Any]]:
    """One row per question: uid, type, template, source, weight, acc, map_score_<mode> and
    direct_lines (planning: `metrics.direct_lines`), answer (VQA), reward (with `reward_fn`, on
    the whole completion) and the completion."""
    if len(records) != len(completions):
        raise ValueError(f"score_completions: {len(records)} records, {len(completions)} texts")
    rewards = None
    if reward_fn is not None and records:
        rewards = np.asarray(reward_fn(list(records), list(completions))["overall"], np.float64)
    rows = []
    for i, (r, c) in enumerate(zip(records, completions, strict=True)):
        if not isinstance(c, str):
            raise ValueError(f"completion {i} ({r.uid}) is not a string")
        text = answer_text(c, answer_after)
        row: dict[str, Any] = {"uid": r.uid, "type": r.type, "template": r.template,
                               "source": r.source, "city": r.city,
                               "weight": sample_weight(r, weights)}
        if r.type == "planning":
            row.update(metrics.score_planning(r, text, modes_for(r)))
            row["direct_lines"] = list(metrics.direct_lines(r))
        else:
            row.update(metrics.score_vqa(r, text), answer=r.answer)
        if rewards is not None:
            row["reward"] = float(rewards[i])
        row["completion"] = c
        rows.append(row)
    return rows


def sample_figures(row: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(figure name, value) pairs one question contributes to (see the module table)."""
    t, acc = row["type"], float(row["acc"])
    if t == "planning":
        kind = "short" if row["template"] == "short" else "long"
        yield f"reasonmap/acc_{kind}", acc
        for mode in metrics.MODES:
            if f"map_score_{mode}" in row:
                yield f"reasonmap/map_score_{kind}/{mode}", float(row[f"map_score_{mode}"])
    else:
        yield f"plus/acc_{t}", acc
        yield ("plus/acc_count" if t.startswith("Counting") else "plus/acc_torf"), acc
        yield "plus/acc", acc
    yield f"accuracy/{t}", acc
    yield "accuracy/mean", acc
    if "reward" in row:
        yield f"reward/{t}", float(row["reward"])
        yield "reward/mean", float(row["reward"])


def weighted_mean_se(x: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float | None]:
    """(mean, standard error) of `x`, weighted by `w` when given (module docstring)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    m = float(np.sum(w * x) / np.sum(w))
    if n < 2:
        return m, None
    se = math.sqrt(n / (n - 1) * float(np.sum(w**2 * (x - m) ** 2))) / float(np.sum(w))
    return m, se


def group_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[list[str], list[float],
                                                                      list[float]]]:
    """{figure name: (uids, values, weights)} over `rows`."""
    groups: dict[str, tuple[list[str], list[float], list[float]]] = {}
    for row in rows:
        for name, value in sample_figures(row):
            uids, vals, ws = groups.setdefault(name, ([], [], []))
            uids.append(row["uid"])
            vals.append(value)
            ws.append(float(row["weight"]))
    return groups


def sort_key(name: str) -> tuple[int, str]:
    order = ("reasonmap/", "plus/", "accuracy/", "majority/", "reward/")
    base = name.removeprefix(WEIGHTED)
    head = next((i for i, p in enumerate(order) if base.startswith(p)), len(order))
    return head * 2 + name.startswith(WEIGHTED), name


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{figure: {"value", "se", "n"}} for every figure some question contributes to, the
    difficulty-weighted `weighted/...` versions of the ReasonMap and Plus figures, and
    `majority/<type>`, what the best constant answer scores on the evaluated questions (the
    chance level): for a VQA type the rate of its most common ground truth; for planning the
    rate of the line that most questions' `direct_lines` hold (a policy that copies the
    endpoints and always names that line)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (_, vals, ws) in group_rows(rows).items():
        value, se = weighted_mean_se(np.array(vals))
        out[name] = {"value": value, "se": se, "n": len(vals)}
        if name.startswith(("reasonmap/", "plus/")):
            value, se = weighted_mean_se(np.array(vals), np.array(ws))
            out[WEIGHTED + name] = {"value": value, "se": se, "n": len(vals)}
    for t in task_types(rows):
        if t == "planning":  # each question: the constant line answers that are right
            hits = [r["direct_lines"] for r in rows if r["type"] == t and "direct_lines" in r]
        else:
            hits = [(r["answer"],) for r in rows if r["type"] == t and "answer" in r]
        if hits:
            out[f"majority/{t}"] = {"value": best_constant_rate(hits), "se": None,
                                    "n": len(hits)}
    return dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def best_constant_rate(hits: Sequence[Iterable[Any]]) -> float:
    """The share of questions the best constant answer gets right, given each question's set
    of right answers (`hits`, one per question; VQA: its ground truth, planning: its
    `direct_lines`)."""
    counts = Counter(a for h in hits for a in set(h))
    return max(counts.values(), default=0) / len(hits) if hits else 0.0


def task_types(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {r["type"] for r in rows}
    return [t for t in TASK_TYPES if t in present]
