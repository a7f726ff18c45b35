"""Independent ground-truth checks for map-world questions, computed from the metro dict alone.

Nothing here imports the route finder or the question builders: plans come from a brute-force
enumeration of every simple path in the station graph, counts from the metro dict's lists.
"""

from __future__ import annotations

import re

_SUFFIX = re.compile(r" \(Transfer Station\)$")


def clean_metro(metro: dict[str, list[str]]) -> dict[str, list[str]]:
    return {line: [_SUFFIX.sub("", s) for s in stations] for line, stations in metro.items()}


def brute_force_plans(metro: dict[str, list[str]], start: str, end: str) -> tuple[int, set]:
    """(fewest sections, set of plans with that many sections) over ALL simple paths.

    A path is a sequence of edges, each labelled by the line it rides; a plan is the sequence of
    maximal same-line runs: (line, departure, arrival, via stops tuple). Returns (0, set()) if
    `end` is unreachable.
    """
    adj: dict[str, list[tuple[str, str]]] = {}
    for line, stations in metro.items():
        for a, b in zip(stations[:-1], stations[1:], strict=True):
            adj.setdefault(a, []).append((b, line))
            adj.setdefault(b, []).append((a, line))
    by_len: dict[int, set] = {}

    def runs(nodes: list[str], labels: list[str]) -> tuple:
        plan = []
        i = 0
        while i < len(labels):
            j = i
            while j + 1 < len(labels) and labels[j + 1] == labels[i]:
                j += 1
            plan.append((labels[i], nodes[i], nodes[j + 1], tuple(nodes[i + 1 : j + 1])))
            i = j + 1
        return tuple(plan)

    def dfs(node: str, nodes: list[str], labels: list[str], seen: set[str]) -> None:
        if node == end:
            plan = runs(nodes, labels)
            by_len.setdefault(len(plan), set()).add(plan)
            return
        for nxt, line in adj.get(node, []):
            if nxt not in seen:
                seen.add(nxt)
                nodes.append(nxt)
                labels.append(line)
                dfs(nxt, nodes, labels, seen)
                nodes.pop()
                labels.pop()
                seen.discard(nxt)

    dfs(start, [start], [], {start})
    if not by_len:
        return 0, set()
    best = min(by_len)
    return best, by_len[best]


def plan_as_tuple(plan: list[dict]) -> tuple:
    return tuple(
        (s["route_name"], s["departure_stop"], s["arrival_stop"], tuple(s["via_stops"]))
        for s in plan
    )


def lines_through(metro: dict[str, list[str]], station: str) -> list[str]:
    return [line for line, stations in clean_metro(metro).items() if station in stations]


def transfer_station_count(metro: dict[str, list[str]]) -> int:
    seen: dict[str, int] = {}
    for stations in clean_metro(metro).values():
        for s in stations:
            seen[s] = seen.get(s, 0) + 1
    return sum(1 for n in seen.values() if n > 1)


def line_graph_min_sections(metro: dict[str, list[str]], start: str, end: str) -> int:
    """Fewest lines ridden from `start` to `end` by BFS over lines (0 if unreachable).

    Ignores the no-revisit rule, so it is a lower bound of the simple-path optimum; cheap enough
    for dense maps where enumerating every simple path is not.
    """
    lines = {k: set(v) for k, v in clean_metro(metro).items()}
    frontier = {k for k, v in lines.items() if start in v}
    seen = set(frontier)
    depth = 1
    while frontier:
        if any(end in lines[k] for k in frontier):
            return depth
        frontier = {o for k in frontier for o in lines if o not in seen and lines[o] & lines[k]}
        seen |= frontier
        depth += 1
    return 0
