"""Host side of the reward: completion text -> fixed-width integer arrays (numpy).

`parse_batch(records, completions, spec)` returns one flat dict of numpy arrays that the jitted
reward (`reward.compute_rewards`) consumes. Names are mapped to ids in each record's own vocabulary
(`tables.RecordTables`); an unknown name becomes `UNKNOWN_ID`, an empty slot `PAD_ID`.

Widths: `S` sections, `K` Counting1 stops, `L` lines, `V` stations and `R` distinct records per
batch. `S`/`K` are fixed by config; `L`, `V` and `R` are rounded up to configured buckets, so the
jitted reward compiles once per bucket combination, not once per batch.

Arrays (B completions; `rec` indexes the R record rows):
  prediction: det_route/det_dep/det_arr (B,S) int32, det_n (B,) int32 (true section count, may
    exceed S), det_first_dep/det_last_arr (B,) int32 (from the true first/last section), and the
    same five with the `acc_` prefix for the case-sensitive accuracy view; vqa_code (B,) int32;
    stops (B,K) int32, stops_n (B,) int32; format_ok (B,) bool; rec (B,) int32.
  ground truth (per record row): type_id, difficulty, transfers, answer, s1, s2 (R,) int32,
    between_found (R,) bool, member (R,L,V) bool, between (R,V) bool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.rewards import text as T
from rewardmap_jax.rewards.tables import PAD_ID, RecordTables, TablesCache

ARRIVAL_MODES = ("remainder", "line", "auto")


@dataclasses.dataclass(frozen=True)
class ParseSpec:
    """Parser settings (from `config.reward`, see `ParseSpec.from_config`)."""

    max_sections: int = 16
    max_stops: int = 32
    station_buckets: tuple[int, ...] = (64, 256, 1024, 4096)
    line_buckets: tuple[int, ...] = (8, 32, 128)
    min_record_bucket: int = 8
    # "remainder" (official reward) | "line" (first line only) | "auto" (line for long templates)
    arrival: str = "remainder"
    require_think: bool = False
    think_open: str = "<think>"
    think_close: str = "</think>"

    @classmethod
    def from_config(cls, cfg: Any) -> ParseSpec:
        """Reads the `reward` config section (missing keys keep the defaults)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
        d = cls()
        spec = cls(
            max_sections=int(get("max_sections", d.max_sections)),
            max_stops=int(get("max_stops", d.max_stops)),
            station_buckets=tuple(int(x) for x in get("station_buckets", d.station_buckets)),
            line_buckets=tuple(int(x) for x in get("line_buckets", d.line_buckets)),
            min_record_bucket=int(get("min_record_bucket", d.min_record_bucket)),
            arrival=str(get("arrival_field", d.arrival)),
            require_think=bool(get("format_require_think", d.require_think)),
            think_open=str(get("think_open", d.think_open)),
            think_close=str(get("think_close", d.think_close)),
        )
        if spec.arrival not in ARRIVAL_MODES:
            raise ValueError(
                f"reward.arrival_field must be one of {ARRIVAL_MODES}, got {spec.arrival!r}"
            )
        return spec


def bucket(n: int, buckets: Sequence[int], what: str) -> int:
    """Smallest bucket >= n; a clear error when n exceeds the largest bucket."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(
        f"{what}: {n} exceeds the largest configured bucket {max(buckets)}; "
        f"add a larger bucket to the reward config"
    )


def _pow2_at_least(n: int, lo: int) -> int:
    b = max(lo, 1)
    while b < n:
        b *= 2
    return b


@dataclasses.dataclass
class ParsedCompletion:
    """What the reward needs from one completion (ids in its record's vocabulary)."""

    det: list[tuple[int, int, int]]  # (route, dep, arr) per section, reward (lenient) view
    acc: list[tuple[int, int, int]]  # same, accuracy (case-sensitive) view
    vqa_code: int
    stops: list[int]
    format_ok: bool


def parse_completion(
    completion: str, record: Record, tables: RecordTables, spec: ParseSpec
) -> ParsedCompletion:
    """Parses one completion against its record (never raises on any text)."""
    think_ok = (not spec.require_think) or T.has_think_block(
        completion, spec.think_open, spec.think_close
    )
    if record.type == "planning":
        arrival = spec.arrival
        if arrival == "auto":
            arrival = "line" if record.template.startswith("long") else "remainder"
        sections, n_chunks = T.parse_sections(completion, T.clean_rw, True, arrival)
        det, acc = [], []
        for s in sections:
            ids = (
                tables.line_id(s.route),
                tables.station_id(T.clean_rw(s.departure)),
                tables.station_id(T.clean_rw(s.arrival)),
            )
            det.append(ids)
            if s.strict:
                acc.append(ids)
        well_formed = (
            bool(sections)
            and len(sections) == n_chunks
            and all(s.strict and s.regex_ok for s in sections)
        )
        return ParsedCompletion(det, acc, T.INVALID_ANSWER, [], well_formed and think_ok)
    answer = T.extract_vqa_answer(completion)
    code = T.answer_code(record.type, answer)
    stops: list[int] = []
    if record.type == "Counting1":
        stops = [tables.station_id(T.clean_rw(p)) for p in T.extract_stops(completion)]
    boxed_once = completion.count("oxed{") == 1
    ok = boxed_once and code != T.INVALID_ANSWER and think_ok
    return ParsedCompletion([], [], code, stops, ok)


_GT_FIELDS = ("type_id", "difficulty", "transfers", "answer", "s1", "s2")
# Ground-truth keys of `parse_batch` (leading dim R record rows; member (R, L, V), between
# (R, V)); every other key is per completion (leading dim B).
TABLE_KEYS = (*_GT_FIELDS, "between_found", "member", "between")


def _fill_sections(out: dict, prefix: str, b: int, secs: list[tuple[int, int, int]], S: int):
    n = len(secs)
    out[f"{prefix}_n"][b] = n
    if n == 0:
        return
    out[f"{prefix}_first_dep"][b] = secs[0][1]
    out[f"{prefix}_last_arr"][b] = secs[-1][2]
    kept = np.asarray(secs[:S], dtype=np.int32)
    out[f"{prefix}_route"][b, : len(kept)] = kept[:, 0]
    out[f"{prefix}_dep"][b, : len(kept)] = kept[:, 1]
    out[f"{prefix}_arr"][b, : len(kept)] = kept[:, 2]


def parse_batch(
    records: Sequence[Record],
    completions: Sequence[str],
    spec: ParseSpec | None = None,
    cache: TablesCache | None = None,
) -> dict[str, np.ndarray]:
    """Parses B completions (completion i answers records[i]) into the reward's arrays.

    Records that are the same object share one ground-truth row (`rec`). See the module
    docstring for the layout. Raises ValueError on mismatched lengths or malformed records.
    """
    spec = spec or ParseSpec()
    cache = cache or TablesCache()
    if len(records) != len(completions):
        raise ValueError(f"parse_batch: {len(records)} records but {len(completions)} completions")
    if not completions:
        raise ValueError("parse_batch: empty batch (no completions)")
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            raise ValueError(f"parse_batch: completion {i} is {type(c).__name__}, not str")
    B, S, K = len(completions), spec.max_sections, spec.max_stops
    rows: dict[int, int] = {}
    row_tables: list[RecordTables] = []
    rec = np.zeros((B,), dtype=np.int32)
    for i, r in enumerate(records):
        key = id(r)
        if key not in rows:
            rows[key] = len(row_tables)
            row_tables.append(cache.get(r))
        rec[i] = rows[key]
    for t, r in zip(row_tables, (records[i] for i in _first_index(records)), strict=True):
        if t.transfers >= S:
            raise ValueError(
                f"record {r.uid!r}: question_transfer_count {t.transfers} >= reward.max_sections "
                f"{S}; raise max_sections"
            )
    R = _pow2_at_least(len(row_tables), spec.min_record_bucket)
    L = bucket(max(t.n_lines for t in row_tables), spec.line_buckets, "lines per record")
    V = bucket(max(t.n_stations for t in row_tables), spec.station_buckets, "stations per record")

    out: dict[str, np.ndarray] = {"rec": rec}
    for p in ("det", "acc"):
        for f in ("route", "dep", "arr"):
            out[f"{p}_{f}"] = np.full((B, S), PAD_ID, np.int32)
        out[f"{p}_n"] = np.zeros((B,), np.int32)
        out[f"{p}_first_dep"] = np.full((B,), PAD_ID, np.int32)
        out[f"{p}_last_arr"] = np.full((B,), PAD_ID, np.int32)
    out["vqa_code"] = np.full((B,), T.INVALID_ANSWER, np.int32)
    out["stops"] = np.full((B, K), PAD_ID, np.int32)
    out["stops_n"] = np.zeros((B,), np.int32)
    out["format_ok"] = np.zeros((B,), bool)

    for b in range(B):
        r = records[b]
        pc = parse_completion(completions[b], r, row_tables[rec[b]], spec)
        _fill_sections(out, "det", b, pc.det, S)
        _fill_sections(out, "acc", b, pc.acc, S)
        out["vqa_code"][b] = pc.vqa_code
        if pc.stops:
            out["stops_n"][b] = len(pc.stops)
            kept = pc.stops[:K]
            out["stops"][b, : len(kept)] = kept
        out["format_ok"][b] = pc.format_ok

    for f in _GT_FIELDS:
        out[f] = np.full((R,), PAD_ID, np.int32)
    out["between_found"] = np.zeros((R,), bool)
    out["member"] = np.zeros((R, L, V), bool)
    out["between"] = np.zeros((R, V), bool)
    for j, t in enumerate(row_tables):
        for f in _GT_FIELDS:
            out[f][j] = getattr(t, f)
        out["between_found"][j] = t.between_found
        out["member"][j, : t.n_lines, : t.n_stations] = t.member
        out["between"][j, : t.n_stations] = t.between
    return out


def _first_index(records: Sequence[Record]) -> list[int]:
    """Index of the first occurrence of each distinct record object, in order of appearance."""
    seen: set[int] = set()
    first = []
    for i, r in enumerate(records):
        if id(r) not in seen:
            seen.add(id(r))
            first.append(i)
    return first


TYPE_NAMES = TASK_TYPES
