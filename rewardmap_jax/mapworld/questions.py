"""Question generators for every ReasonMap / ReasonMap-Plus type, with exact ground truth.

Each builder draws from a numpy Generator and returns a `Question` (text, answer, named
stations, reference routes, template, transfer count). The text carries the full answer-format
instructions, as the real `question` column does (rewardmap.md §3, §8): planning answers are
"Route Name / Departure Stop / Arrival Stop" blocks separated by "--"; VQA answers go in
\\boxed{}. Answers are balanced where the map allows (TorF yes/no 50:50, Counting1 option
position uniform, Counting2 and planning pick the count/transfer value first).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.network import Network, Plan, fewest_transfer_routes, routes_dict
from rewardmap_jax.mapworld.records import Record

PLANNING_TEMPLATES: tuple[str, ...] = ("short", "long_num_via", "long_via")
OPTION_LETTERS = "ABCD"
_SAMPLE_TRIES = 200  # rejection-sampling attempts before falling back to enumeration

_PLAN_INTRO = (
    "According to the subway map, how do I get from {s1} to {s2}? Give the route as one block "
    'per line you ride, with blocks separated by "--". Write each block exactly as:\n'
)
_PLAN_FIELDS = {
    "short": "Route Name: <line name>\nDeparture Stop: <station>\nArrival Stop: <station>",
    "long_num_via": (
        "Route Name: <line name>\nDeparture Stop: <station>\nArrival Stop: <station>\n"
        "Number of Via Stops: <number of stops passed between departure and arrival>"
    ),
    "long_via": (
        "Route Name: <line name>\nDeparture Stop: <station>\nArrival Stop: <station>\n"
        "Via Stops: <the stops passed between departure and arrival, separated by commas>"
    ),
}
_BOX = 'put your final answer {what} in one "\\boxed{{}}". '
TORF_PREFIX = "Please answer yes or no and " + _BOX.format(what="(yes or no)")
COUNT_PREFIX = "Please " + _BOX.format(what="(a number)")
# Verbatim prefix of the real Counting1 prompt (rewardmap.md §3).
MCQ_PREFIX = (
    "Please solve the multiple choice problem and put your answer (one of ABCD) in one "
    '"\\boxed{}". '
)


@dataclasses.dataclass
class Question:
    type: str
    question: str
    answer: int | None
    station_1: str | None = None
    station_2: str | None = None
    routes: dict[str, Plan] = dataclasses.field(default_factory=dict)
    template: str = "vqa"
    transfers: int = 0  # fewest transfers of a planning question; 0 for VQA types


def question_difficulty(transfers: int) -> str:
    """Question difficulty from its transfer count: 0 easy, 1 medium, 2+ hard."""
    return "easy" if transfers == 0 else "medium" if transfers == 1 else "hard"


def planning_question_text(s1: str, s2: str, template: str) -> str:
    if template not in _PLAN_FIELDS:
        raise ValueError(f"unknown planning template {template!r}; expected {PLANNING_TEMPLATES}")
    return _PLAN_INTRO.format(s1=s1, s2=s2) + _PLAN_FIELDS[template]


def format_plan(plan: Sequence[dict[str, Any]], template: str) -> str:
    """A plan written in the answer format `template` asks for (a reference completion)."""
    blocks = []
    for s in plan:
        block = (
            f"Route Name: {s['route_name']}\nDeparture Stop: {s['departure_stop']}\n"
            f"Arrival Stop: {s['arrival_stop']}"
        )
        if template == "long_num_via":
            block += f"\nNumber of Via Stops: {s['num_via_stops']}"
        elif template == "long_via":
            block += "\nVia Stops: " + ", ".join(s["via_stops"])
        blocks.append(block)
    return "\n--\n".join(blocks)


def answer_text(record: Record) -> str:
    """The reference completion of `record` (first plan for planning, \\boxed{...} for VQA)."""
    if record.type == "planning":
        if not record.routes:
            raise ValueError(f"record {record.uid}: planning record without routes")
        return format_plan(next(iter(record.routes.values())), record.template)
    if record.answer is None:
        raise ValueError(f"record {record.uid}: {record.type} record without an answer")
    if record.type in ("TorF1", "TorF2"):
        value = "yes" if record.answer == 1 else "no"
    elif record.type == "Counting1":
        value = OPTION_LETTERS[record.answer]
    else:
        value = str(record.answer)
    return f"\\boxed{{{value}}}"


def pairs_by_transfers(network: Network) -> dict[int, list[tuple[str, str]]]:
    """Connected unordered station pairs bucketed by transfers on the line graph.

    The line-graph count is a lower bound of the simple-path optimum and nearly always equal;
    the record's own transfer count always comes from `fewest_transfer_routes`.
    """
    lines = [set(ln.stations) for ln in network.lines]
    n = len(lines)
    dist = np.full((n, n), n + 1, dtype=np.int64)
    for i in range(n):
        dist[i, i] = 0
        for j in range(n):
            if i != j and lines[i] & lines[j]:
                dist[i, j] = 1
    for k in range(n):  # Floyd-Warshall: n <= 12 lines
        dist = np.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
    on = {s: [i for i in range(n) if s in lines[i]] for s in network.stations}
    stations = network.stations
    buckets: dict[int, list[tuple[str, str]]] = {}
    for a, b in itertools.combinations(stations, 2):
        k = int(min(dist[i, j] for i in on[a] for j in on[b]))
        if k <= n:
            buckets.setdefault(k, []).append((a, b))
    return buckets


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def planning(
    network: Network,
    rng: np.random.Generator,
    template: str | None,
    max_transfers: int,
    pair_buckets: dict[int, list[tuple[str, str]]],
    templates: Sequence[str] = PLANNING_TEMPLATES,
) -> Question:
    template = template or _pick(rng, templates)
    ks = [k for k in sorted(pair_buckets) if k <= max_transfers] or [min(pair_buckets)]
    a, b = _pick(rng, pair_buckets[_pick(rng, ks)])
    if rng.random() < 0.5:
        a, b = b, a
    plans = fewest_transfer_routes(network, a, b)
    return Question(
        type="planning",
        question=planning_question_text(a, b, template),
        answer=None,
        station_1=a,
        station_2=b,
        routes=routes_dict(plans),
        template=template,
        transfers=len(plans[0]) - 1,
    )


def _shares_line(network: Network, a: str, b: str) -> bool:
    return any(a in ln.stations and b in ln.stations for ln in network.lines)


def torf1(network: Network, rng: np.random.Generator) -> Question:
    stations = network.stations
    want_yes = bool(rng.random() < 0.5)
    pair = None
    if not want_yes:
        for _ in range(_SAMPLE_TRIES):  # rejection sampling: cheap on dense maps
            i, j = rng.choice(len(stations), size=2, replace=False)
            if not _shares_line(network, stations[int(i)], stations[int(j)]):
                pair = (stations[int(i)], stations[int(j)])
                break
        if pair is None:
            no_pairs = [
                (a, b)
                for a, b in itertools.permutations(stations, 2)
                if not _shares_line(network, a, b)
            ]
            pair = _pick(rng, no_pairs) if no_pairs else None
    if pair is None:
        line = _pick(rng, network.lines)
        i, j = rng.choice(len(line.stations), size=2, replace=False)
        pair = (line.stations[int(i)], line.stations[int(j)])
    a, b = pair
    truth = int(_shares_line(network, a, b))
    text = (
        TORF_PREFIX
        + f"According to the subway map, is it true that {a} Station is on the same line as "
        f"{b} Station?"
    )
    return Question("TorF1", text, truth, station_1=a, station_2=b)


def torf2(network: Network, rng: np.random.Generator) -> Question:
    want_yes = bool(rng.random() < 0.5)
    line = _pick(rng, network.lines)
    off = [s for s in network.stations if s not in line.stations]
    station = _pick(rng, off) if (not want_yes and off) else _pick(rng, line.stations)
    truth = int(station in line.stations)
    text = (
        TORF_PREFIX
        + f"According to the subway map, is it true that {station} Station is on the {line.name}?"
    )
    return Question("TorF2", text, truth, station_1=station)


def _gap_counts(network: Network, a: str, b: str) -> set[int]:
    """Intermediate-stop counts between `a` and `b` on every line that carries both."""
    return {
        abs(ln.stations.index(a) - ln.stations.index(b)) - 1
        for ln in network.lines
        if a in ln.stations and b in ln.stations
    }


def counting1(network: Network, rng: np.random.Generator) -> Question:
    # Two lines may share two stations with different gaps; such a pair has no single answer.
    for _ in range(_SAMPLE_TRIES):
        line = _pick(rng, network.lines)
        n = len(line.stations)
        gap = int(rng.integers(1, n))
        i = int(rng.integers(0, n - gap))
        a, b = line.stations[i], line.stations[i + gap]
        if len(_gap_counts(network, a, b)) == 1:
            break
    else:
        raise RuntimeError(f"no unambiguous Counting1 pair on lines {network.metro_dict(False)}")
    if rng.random() < 0.5:
        a, b = b, a
    count = gap - 1
    near = [c for c in range(count - 3, count + 4) if c >= 0 and c != count]
    picks = list(rng.permutation(near)[:3])
    extra = count + 4
    while len(picks) < 3:
        picks.append(extra)
        extra += 1
    correct = int(rng.integers(4))
    options = [int(x) for x in picks]
    options.insert(correct, count)
    listed = " ".join(f"{OPTION_LETTERS[k]}) {v}" for k, v in enumerate(options))
    text = (
        MCQ_PREFIX
        + f"According to the subway map, how many intermediate stops are there between {a} "
        f"Station and {b} Station (except for this two stops)? {listed}"
    )
    return Question("Counting1", text, correct, station_1=a, station_2=b)


def counting2(network: Network, rng: np.random.Generator) -> Question:
    counts: dict[int, list[str]] = {}
    for s in network.stations:
        counts.setdefault(len(network.lines_through(s)), []).append(s)
    value = _pick(rng, sorted(counts))
    station = _pick(rng, counts[value])
    text = (
        COUNT_PREFIX
        + f"According to the subway map, how many lines pass through {station} Station?"
    )
    return Question("Counting2", text, value, station_1=station)


def counting3(network: Network, rng: np.random.Generator) -> Question:
    del rng  # the question is fixed per map
    text = COUNT_PREFIX + "According to the subway map, how many lines are there in the map?"
    return Question("Counting3", text, len(network.lines))


def build_question(
    task_type: str,
    network: Network,
    rng: np.random.Generator,
    *,
    template: str | None = None,
    templates: Sequence[str] = PLANNING_TEMPLATES,
    max_transfers: int = 1,
    pair_buckets: dict[int, list[tuple[str, str]]] | None = None,
) -> Question:
    """A `task_type` question about `network` (see `records.TASK_TYPES`); planning questions
    use `template`, else one drawn from `templates`."""
    if task_type == "planning":
        buckets = pair_buckets if pair_buckets is not None else pairs_by_transfers(network)
        return planning(network, rng, template, max_transfers, buckets, templates)
    builders = {
        "TorF1": torf1,
        "TorF2": torf2,
        "Counting1": counting1,
        "Counting2": counting2,
        "Counting3": counting3,
    }
    if task_type not in builders:
        raise ValueError(f"unknown task type {task_type!r}")
    return builders[task_type](network, rng)
