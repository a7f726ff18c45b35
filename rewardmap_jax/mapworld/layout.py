"""Grid layouts of transit lines: each line is a path of grid cells, one station per cell.

Lines move horizontally/vertically between neighbouring cells, so two lines can only meet in a
cell (a shared station = a transfer) and never cross between stations. No two lines share a
segment (a pair of neighbouring cells), so every drawn segment has exactly one colour.
"""

from __future__ import annotations

import functools

import numpy as np

Cell = tuple[int, int]  # (row, col)
_DIRS: tuple[Cell, ...] = ((0, 1), (1, 0), (0, -1), (-1, 0))


def _edge(a: Cell, b: Cell) -> tuple[Cell, Cell]:
    return (a, b) if a <= b else (b, a)


def _inside(cell: Cell, grid: int) -> bool:
    return 0 <= cell[0] < grid and 0 <= cell[1] < grid


@functools.lru_cache(maxsize=32)
def l_shaped_paths(grid: int, min_len: int, max_len: int) -> tuple[tuple[Cell, ...], ...]:
    """Every path inside the grid made of a straight run and at most one 90-degree turn,
    with `min_len`..`max_len` cells (each direction of travel listed separately)."""
    out: set[tuple[Cell, ...]] = set()
    for r0 in range(grid):
        for c0 in range(grid):
            for d1 in _DIRS:
                for turn in (1, -1):
                    d2 = (d1[1] * turn, -d1[0] * turn)
                    for n1 in range(1, grid):
                        for n2 in range(0, grid):
                            if not min_len <= n1 + n2 + 1 <= max_len:
                                continue
                            path = [(r0, c0)]
                            for d, n in ((d1, n1), (d2, n2)):
                                for _ in range(n):
                                    path.append((path[-1][0] + d[0], path[-1][1] + d[1]))
                            if all(_inside(c, grid) for c in path):
                                out.add(tuple(path))
    if not out:
        raise ValueError(
            f"no L-shaped path of {min_len}..{max_len} cells fits a {grid}x{grid} grid"
        )
    return tuple(sorted(out))


def l_shaped_path(rng: np.random.Generator, grid: int, min_len: int, max_len: int) -> list[Cell]:
    """A uniformly drawn L-shaped path (see `l_shaped_paths`)."""
    paths = l_shaped_paths(grid, min_len, max_len)
    return list(paths[int(rng.integers(len(paths)))])


def walk_path(
    rng: np.random.Generator,
    grid: int,
    min_len: int,
    max_len: int,
    run_len: tuple[int, int],
    blocked_edges: set[tuple[Cell, Cell]],
) -> list[Cell] | None:
    """A metro-like walk: straight runs of `run_len` cells joined by 90-degree turns.

    Never revisits its own cells or uses a blocked edge. Returns None if it got stuck short of
    `min_len` cells.
    """
    target = int(rng.integers(min_len, max_len + 1))
    # Start on the border heading inwards, so lines cross the city as real metro lines do.
    d = _DIRS[int(rng.integers(4))]
    along = int(rng.integers(grid))
    start = {
        (0, 1): (along, 0),
        (1, 0): (0, along),
        (0, -1): (along, grid - 1),
        (-1, 0): (grid - 1, along),
    }[d]
    path = [start]
    while len(path) < target:
        run = int(rng.integers(run_len[0], run_len[1] + 1))
        moved = 0
        for _ in range(run):
            r, c = path[-1]
            nxt = (r + d[0], c + d[1])
            if (
                not _inside(nxt, grid)
                or nxt in path
                or _edge(path[-1], nxt) in blocked_edges
                or len(path) >= target
            ):
                break
            path.append(nxt)
            moved += 1
        if len(path) >= target:
            break
        turns = [(d[1], -d[0]), (-d[1], d[0])]
        if moved == 0:
            turns.append(d)
        d = turns[int(rng.integers(len(turns)))]
        if moved == 0 and not _can_move(path, d, grid, blocked_edges):
            options = [x for x in _DIRS if _can_move(path, x, grid, blocked_edges)]
            if not options:
                break
            d = options[int(rng.integers(len(options)))]
    return path if len(path) >= min_len else None


def _can_move(path: list[Cell], d: Cell, grid: int, blocked: set[tuple[Cell, Cell]]) -> bool:
    r, c = path[-1]
    nxt = (r + d[0], c + d[1])
    return _inside(nxt, grid) and nxt not in path and _edge(path[-1], nxt) not in blocked


def path_edges(path: list[Cell]) -> set[tuple[Cell, Cell]]:
    return {_edge(a, b) for a, b in zip(path[:-1], path[1:], strict=True)}


def layout_lines(
    rng: np.random.Generator,
    *,
    kind: str,
    grid: int,
    n_lines: int,
    min_len: int,
    max_len: int,
    run_len: tuple[int, int],
    connected: bool,
    max_tries: int,
) -> list[list[Cell]] | None:
    """`n_lines` paths with no shared segment (and, if `connected`, one network). None on failure.

    `kind`: "lshape" (a straight run + one turn) or "walk" (metro-like).
    """
    paths: list[list[Cell]] = []
    used: set[tuple[Cell, Cell]] = set()
    cells: set[Cell] = set()
    for _ in range(max_tries):
        if len(paths) == n_lines:
            return paths
        if kind == "lshape":
            path = l_shaped_path(rng, grid, min_len, max_len)
        elif kind == "walk":
            path = walk_path(rng, grid, min_len, max_len, run_len, used)
        else:
            raise ValueError(f"unknown layout kind {kind!r}; expected 'lshape' or 'walk'")
        if path is None:
            continue
        edges = path_edges(path)
        if edges & used:
            continue
        if connected and paths and not cells.intersection(path):
            continue
        paths.append(path)
        used |= edges
        cells.update(path)
    return paths if len(paths) == n_lines else None
