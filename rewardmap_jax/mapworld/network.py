"""Transit networks: lines, stations, transfers, and the fewest-transfer route finder.

A line is a simple path of stations (ordered, no loops or branches). A *plan* (one reference
route, as ReasonMap stores them) is a list of sections, each a ride on one line:
`{route_name, departure_stop, arrival_stop, via_stops, num_via_stops}`. The stations the plan
passes (departure, via stops, transfer stations, arrival) form a simple path: no station is
visited twice. `fewest_transfer_routes` returns EVERY plan whose number of sections (transfers +
1) is minimal among such plans.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

TRANSFER_SUFFIX = " (Transfer Station)"
# Annotations the real metro JSON appends to names (ReasonMap's `stations/*/*.json`,
# github.com/fscdc/ReasonMap).
_ANNOTATION_RE = re.compile(
    r"\s*(\((Transfer|Branch-starting) Station\)|（换乘站）|（支线起始站）)\s*$"
)

_UNREACHABLE = 1 << 30

Section = dict[str, Any]
Plan = list[Section]


def clean_station_name(name: str) -> str:
    """`name` without the real data's annotations (" (Transfer Station)", ...)."""
    previous = None
    while previous != name:
        previous, name = name, _ANNOTATION_RE.sub("", name)
    return name.strip()


@dataclasses.dataclass(frozen=True)
class Line:
    """One transit line: a name, an RGB colour and its stations in travel order."""

    name: str
    color: tuple[int, int, int]
    stations: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.stations) < 2:
            raise ValueError(f"line {self.name!r} needs at least 2 stations, got {self.stations}")
        if len(set(self.stations)) != len(self.stations):
            raise ValueError(f"line {self.name!r} visits a station twice: {self.stations}")


@dataclasses.dataclass(frozen=True)
class Network:
    """Lines plus station positions (pixels, (x, y) of the station centre on the map)."""

    lines: tuple[Line, ...]
    positions: tuple[tuple[str, tuple[float, float]], ...]

    def __post_init__(self) -> None:
        names = [line.name for line in self.lines]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate line names: {names}")
        known = {name for name, _ in self.positions}
        for line in self.lines:
            missing = [s for s in line.stations if s not in known]
            if missing:
                raise ValueError(f"line {line.name!r}: stations without a position: {missing}")

    # Derived views are computed once per network (cached_property writes the instance
    # __dict__ directly, which a frozen dataclass allows).
    @functools.cached_property
    def position(self) -> dict[str, tuple[float, float]]:
        return dict(self.positions)

    @functools.cached_property
    def stations(self) -> tuple[str, ...]:
        """Station names in order of first appearance along the lines."""
        seen: dict[str, None] = {}
        for line in self.lines:
            for s in line.stations:
                seen.setdefault(s, None)
        return tuple(seen)

    @functools.cached_property
    def _lines_at(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for line in self.lines:
            for s in line.stations:
                out.setdefault(s, []).append(line.name)
        return {s: tuple(v) for s, v in out.items()}

    def line(self, name: str) -> Line:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"no line named {name!r}; lines: {[x.name for x in self.lines]}")

    def lines_through(self, station: str) -> tuple[str, ...]:
        return self._lines_at.get(station, ())

    @functools.cached_property
    def transfer_stations(self) -> tuple[str, ...]:
        return tuple(s for s in self.stations if len(self.lines_through(s)) > 1)

    def metro_dict(self, annotate: bool = True) -> dict[str, list[str]]:
        """Line name -> ordered station names, as the real metro JSON (`json` column) stores it.

        With `annotate`, transfer stations carry the real suffix " (Transfer Station)".
        """
        transfers = set(self.transfer_stations) if annotate else set()
        return {
            line.name: [s + TRANSFER_SUFFIX if s in transfers else s for s in line.stations]
            for line in self.lines
        }


def make_section(line: Line, departure: str, arrival: str) -> Section:
    """The section riding `line` from `departure` to `arrival` (via stops in travel order)."""
    i, j = line.stations.index(departure), line.stations.index(arrival)
    step = 1 if j > i else -1
    via = list(line.stations[i + step : j : step])
    return {
        "route_name": line.name,
        "departure_stop": departure,
        "arrival_stop": arrival,
        "via_stops": via,
        "num_via_stops": len(via),
    }


def _line_hops_to(network: Network, end: str) -> dict[str, int]:
    """Line name -> fewest sections needed from boarding that line to reach `end`.

    A lower bound for the simple-path plans (it ignores the no-revisit rule), used for pruning.
    """
    hops = {line.name: 1 for line in network.lines if end in line.stations}
    frontier = list(hops)
    while frontier:
        nxt = []
        for name in frontier:
            stations = set(network.line(name).stations)
            for other in network.lines:
                if other.name not in hops and stations.intersection(other.stations):
                    hops[other.name] = hops[name] + 1
                    nxt.append(other.name)
        frontier = nxt
    return hops


def fewest_transfer_routes(
    network: Network, start: str, end: str, max_plans: int | None = None
) -> list[Plan]:
    """Every plan from `start` to `end` with the fewest transfers (empty if unreachable).

    Plans are sorted by (total stops ridden, section tuple) so the order is deterministic.
    `max_plans` truncates the sorted list (None keeps all).
    """
    stations = set(network.stations)
    for name in (start, end):
        if name not in stations:
            raise KeyError(f"station {name!r} is not on any line")
    if start == end:
        raise ValueError(f"start and end are the same station {start!r}")
    hops = _line_hops_to(network, end)
    start_bound = min(
        (hops.get(n, _UNREACHABLE) for n in network.lines_through(start)), default=_UNREACHABLE
    )
    if start_bound >= _UNREACHABLE:
        return []
    index = {line.name: {s: i for i, s in enumerate(line.stations)} for line in network.lines}
    lines_at = {s: [ln for ln in network.lines if s in index[ln.name]] for s in stations}

    for n_sections in range(start_bound, len(stations)):
        plans: list[Plan] = []
        _extend(end, n_sections, hops, index, lines_at, start, None, {start}, [], plans)
        if plans:
            plans.sort(key=_plan_sort_key)
            return plans if max_plans is None else plans[:max_plans]
    return []


def _extend(
    end: str,
    n_sections: int,
    hops: dict[str, int],
    index: dict[str, dict[str, int]],
    lines_at: dict[str, list[Line]],
    cur: str,
    prev_line: str | None,
    visited: set[str],
    sections: Plan,
    out: list[Plan],
) -> None:
    """Depth-first search of plans with exactly `n_sections` sections; appends them to `out`."""
    remaining = n_sections - len(sections)  # sections still to ride, this one included
    for line in lines_at[cur]:
        if line.name == prev_line or hops.get(line.name, _UNREACHABLE) > remaining:
            continue
        i = index[line.name][cur]
        for step in (1, -1):
            j = i + step
            while 0 <= j < len(line.stations):
                t = line.stations[j]
                if t in visited:
                    break  # the ride would revisit a station; so would any longer one
                section = make_section(line, cur, t)
                if t == end:
                    if remaining == 1:
                        out.append([*sections, section])
                    break  # a simple path cannot pass through `end`
                if remaining > 1:
                    passed = set(line.stations[min(i, j) : max(i, j) + 1])
                    _extend(
                        end,
                        n_sections,
                        hops,
                        index,
                        lines_at,
                        t,
                        line.name,
                        visited | passed,
                        [*sections, section],
                        out,
                    )
                j += step


def _plan_sort_key(plan: Plan) -> tuple:
    stops = sum(s["num_via_stops"] + 1 for s in plan)
    return (stops, tuple((s["route_name"], s["departure_stop"], s["arrival_stop"]) for s in plan))


def plan_transfers(plan: Sequence[Section]) -> int:
    return len(plan) - 1


def routes_dict(plans: Sequence[Plan]) -> dict[str, Plan]:
    """Plans keyed like the real `routes` column (`plan_1`, `plan_2`, ...)."""
    return {f"plan_{k + 1}": list(p) for k, p in enumerate(plans)}
