"""Per-record ground-truth tables: a record's own station/line vocabulary and its facts as ints.

A `RecordTables` is built once per `Record` (host, cached) and serves two jobs: it maps names in a
completion to ids (`station_id`, `line_id`), and it holds the ground-truth side of the reward as
small numpy arrays (line -> station membership, endpoint ids, type, difficulty, ...).

Station ids index the record's vocabulary of *cleaned* names (RewardMap `clean_string`), so two
spellings that clean to the same string share an id, exactly as the official comparisons treat
them. Line ids index the metro dict's keys, matched verbatim as the official code does.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from rewardmap_jax.mapworld.records import DIFFICULTIES, TASK_TYPES, Record
from rewardmap_jax.rewards import text as T

PAD_ID = -1  # an empty slot of a fixed-width array
UNKNOWN_ID = -2  # a name that is not in the record's vocabulary (never a crash, never a match)
PLANNING = TASK_TYPES.index("planning")
COUNTING1 = TASK_TYPES.index("Counting1")


@dataclasses.dataclass
class RecordTables:
    """Vocabulary and ground truth of one record (see the module docstring)."""

    type_id: int
    difficulty: int  # index into DIFFICULTIES (map difficulty, `difficulty_city`)
    transfers: int  # question_transfer_count
    answer: int  # VQA ground truth as stored; -1 for planning
    s1: int  # station ids of station_1/station_2 (PAD_ID when the record has none)
    s2: int
    station_index: dict[str, int]  # cleaned name -> id
    line_index: dict[str, int]  # metro key -> id
    member: np.ndarray  # (n_lines, n_stations) bool
    between: np.ndarray  # (n_stations,) bool: Counting1 intermediate stops of station_1..2
    between_found: bool  # whether a line holds both stations (else no Counting1 detail)

    @property
    def n_stations(self) -> int:
        return len(self.station_index)

    @property
    def n_lines(self) -> int:
        return len(self.line_index)

    def station_id(self, cleaned: str) -> int:
        """Id of an already-cleaned station name, `UNKNOWN_ID` if the record does not know it."""
        return self.station_index.get(cleaned, UNKNOWN_ID)

    def line_id(self, route_name: str) -> int:
        """Id of a route name as written (after the official alias rules), or `UNKNOWN_ID`."""
        return self.line_index.get(T.canonical_route_name(route_name), UNKNOWN_ID)


@dataclasses.dataclass(frozen=True)
class MetroTables:
    """The city part of the tables, shared by every record of the same metro dict (read-only)."""

    cleaned: tuple[tuple[str, ...], ...]  # cleaned station names per line, in metro order
    station_index: dict[str, int]
    line_index: dict[str, int]
    member: np.ndarray  # (n_lines, n_stations) bool


def _metro_key(metro: dict) -> tuple:
    return tuple((line, tuple(v) if v is not None else None) for line, v in metro.items())


@functools.lru_cache(maxsize=1024)
def _metro_tables(key: tuple) -> MetroTables:
    lines = [(line, stations) for line, stations in key if stations is not None]
    cleaned = tuple(tuple(T.clean_rw(T.strip_annotations(s)) for s in st) for _, st in lines)
    station_index: dict[str, int] = {}
    for names in cleaned:
        for name in names:
            station_index.setdefault(name, len(station_index))
    member = np.zeros((len(lines), len(station_index)), dtype=bool)
    for i, names in enumerate(cleaned):
        member[i, [station_index[n] for n in names]] = True
    member.setflags(write=False)
    line_index = {line: i for i, (line, _) in enumerate(lines)}
    return MetroTables(cleaned, station_index, line_index, member)


def metro_tables_cache_clear() -> None:
    """Forgets every memoised city (benchmarks measure cold parsing with it)."""
    _metro_tables.cache_clear()


def metro_tables(metro: dict[str, list[str]]) -> MetroTables:
    """Vocabulary and membership of a metro dict (memoised on its content)."""
    return _metro_tables(_metro_key(metro))


def _between(cleaned: tuple[tuple[str, ...], ...], s1: str, s2: str) -> tuple[set[str], bool]:
    """Cleaned intermediate stops of the first line holding both stations (official rule)."""
    for names in cleaned:
        if s1 in names and s2 in names:
            i1, i2 = names.index(s1), names.index(s2)
            lo, hi = min(i1, i2), max(i1, i2)
            return set(names[lo + 1 : hi]), True
    return set(), False


def build_tables(record: Record) -> RecordTables:
    """Builds the tables of one record; raises ValueError naming the record on bad input."""
    where = f"record {record.uid!r} ({record.type})"
    if record.difficulty_city not in DIFFICULTIES:
        raise ValueError(
            f"{where}: difficulty_city {record.difficulty_city!r} not in {DIFFICULTIES}"
        )
    if not isinstance(record.metro, dict):
        raise ValueError(f"{where}: metro must be a dict of line -> station list")
    is_planning = record.type == "planning"
    if is_planning and (not record.station_1 or not record.station_2):
        raise ValueError(f"{where}: a planning record needs station_1 and station_2")
    try:
        mt = metro_tables(record.metro)
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{where}: metro must map line names to lists of names ({e})") from e
    station_index = mt.station_index
    member = mt.member
    ends = [T.clean_rw(x) if x else None for x in (record.station_1, record.station_2)]
    extra = [e for e in ends if e is not None and e not in station_index]
    if extra:  # an endpoint the metro does not list: extend a private copy of the vocabulary
        station_index = dict(station_index)
        for e in extra:
            station_index.setdefault(e, len(station_index))
        member = np.zeros((len(mt.line_index), len(station_index)), dtype=bool)
        member[:, : mt.member.shape[1]] = mt.member
    s1, s2 = (station_index[e] if e is not None else PAD_ID for e in ends)
    between = np.zeros((len(station_index),), dtype=bool)
    found = False
    if record.type == "Counting1" and ends[0] is not None and ends[1] is not None:
        names, found = _between(mt.cleaned, ends[0], ends[1])
        between[[station_index[n] for n in names]] = True
    if is_planning:
        answer = -1
    elif record.answer is None or isinstance(record.answer, bool):
        raise ValueError(f"{where}: VQA record needs an int answer, got {record.answer!r}")
    else:
        answer = int(record.answer)
    transfers = int(record.question_transfer_count or 0)
    if transfers < 0:
        raise ValueError(f"{where}: question_transfer_count {transfers} < 0")
    return RecordTables(
        type_id=TASK_TYPES.index(record.type),
        difficulty=DIFFICULTIES.index(record.difficulty_city),
        transfers=transfers,
        answer=answer,
        s1=s1,
        s2=s2,
        station_index=station_index,
        line_index=mt.line_index,
        member=member,
        between=between,
        between_found=found,
    )


class TablesCache:
    """Identity-keyed cache of `RecordTables` (records are mutable dataclasses, not hashable).

    The G completions of a group share one record object, so one build serves the whole group.
    The cache keeps the record alive with its tables so an id is never reused while cached.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self._entries: dict[int, tuple[Record, RecordTables]] = {}

    def get(self, record: Record) -> RecordTables:
        hit = self._entries.get(id(record))
        if hit is not None and hit[0] is record:
            return hit[1]
        if len(self._entries) >= self.max_size:
            self._entries.clear()
        tables = build_tables(record)
        self._entries[id(record)] = (record, tables)
        return tables
