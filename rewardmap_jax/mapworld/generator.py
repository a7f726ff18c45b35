"""The procedural map world: presets, seeded city generation, map cache and random-access records.

`make_record(world, split, index, task_type)` is a pure function of its arguments (same record,
same image bytes, whatever was generated before), so a Grain source can call it by index. Each
split draws its maps from its own seed stream AND keeps only maps whose content hash falls in its
bucket, so train and held-out maps never coincide, even in worlds small enough to repeat maps.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rewardmap_jax.mapworld import layout, names, questions, render
from rewardmap_jax.mapworld.network import Line, Network
from rewardmap_jax.mapworld.records import TASK_TYPES, Record

SPLITS: tuple[str, ...] = ("train", "val", "test")
_MAP_STREAM = 0  # last entropy word of a map seed
_QUESTION_STREAM = 1  # last entropy word of a question seed


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """A family of procedural cities (hashable: it keys the map cache).

    Geometry: the map is `image_size` px square, cut into a `grid` x `grid` lattice of cells; each
    station sits at a cell centre. `legend` adds a `legend_width` px panel on the right.
    City difficulty: score = lines + transfer stations; score <= bounds[0] easy, <= bounds[1]
    middle, else hard (the real labels rank cities by lines and transfers, rewardmap.md §1).
    """

    name: str = "tiny"
    seed: int = 0
    image_size: int = 84
    grid: int = 3
    layout: str = "lshape"  # lshape | walk
    min_lines: int = 2
    max_lines: int = 4
    min_stations: int = 3  # per line
    max_stations: int = 5
    run_len: tuple[int, int] = (2, 4)  # walk layout: cells per straight run
    connected: bool = False
    # letter: a random distinct letter per station; grid: the letter of the station's cell,
    # alphabet[row * grid + col] on every map (a name a model can learn from where the station
    # is, without reading the glyph); place: invented place names.
    labels: str = "letter"  # letter | grid | place
    alphabet: str = "EFHKMNPRT"
    second_word_prob: float = 0.3  # place names: chance of a second word ("... Park")
    line_naming: str = "color"  # color | number
    palette_size: int = 6  # line colours come from the first N of names.PALETTE
    legend: bool = False
    legend_width: int = 0
    highlight: bool = False  # ring on the 1st named station, square on the 2nd
    label_scale: float = 0.42  # label font size / cell size
    line_width_scale: float = 0.18
    station_radius_scale: float = 0.16
    max_question_transfers: int = 1
    # Planning answer formats asked (any of questions.PLANNING_TEMPLATES, drawn uniformly).
    planning_templates: tuple[str, ...] = ("short", "long_num_via", "long_via")
    transfer_style: str = "ring"  # ring (bold open ring) | dot (filled black disc)
    city_difficulty_bounds: tuple[int, int] = (4, 6)
    train_maps: int = 4000
    eval_maps: int = 400
    cache_maps: int = 4096
    max_tries: int = 400  # layout attempts per city

    def __post_init__(self) -> None:
        choices = {
            "layout": ("lshape", "walk"),
            "labels": ("letter", "grid", "place"),
            "line_naming": ("color", "number"),
            "transfer_style": ("ring", "dot"),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"world {self.name!r}: {field}={getattr(self, field)!r} not in {allowed}"
                )
        problems = []
        if not 1 <= self.min_lines <= self.max_lines:
            problems.append(f"lines {self.min_lines}..{self.max_lines}")
        if not 2 <= self.min_stations <= self.max_stations:
            problems.append(f"stations per line {self.min_stations}..{self.max_stations}")
        if self.max_lines > min(self.palette_size, len(names.PALETTE)):
            problems.append(f"max_lines {self.max_lines} > palette_size {self.palette_size}")
        if self.letter_labels and len(set(self.alphabet)) < self.grid * self.grid:
            problems.append(
                f"alphabet of {len(set(self.alphabet))} < {self.grid}x{self.grid} cells"
            )
        bad = [t for t in self.planning_templates if t not in questions.PLANNING_TEMPLATES]
        if bad or not self.planning_templates:
            problems.append(f"planning_templates {self.planning_templates} (choose from "
                            f"{questions.PLANNING_TEMPLATES})")
        if self.city_difficulty_bounds[0] > self.city_difficulty_bounds[1]:
            problems.append(f"city_difficulty_bounds {self.city_difficulty_bounds} not ordered")
        if min(self.train_maps, self.eval_maps, self.image_size, self.grid) < 1:
            problems.append("train_maps, eval_maps, image_size and grid must be >= 1")
        if problems:
            raise ValueError(f"world {self.name!r}: invalid config: " + "; ".join(problems))

    @property
    def letter_labels(self) -> bool:
        """One-letter station names (`letter` or `grid`), drawn in the cell's corner."""
        return self.labels in ("letter", "grid")

    @property
    def cell(self) -> float:
        return self.image_size / self.grid

    def pool_size(self, split: str) -> int:
        return self.train_maps if split == "train" else self.eval_maps


# Route planning a small model can learn (docs/planning.md): 2-3 connected lines on the
# tiny grid in 4 colours, drawn thick (more line pixels per image token) with small station
# dots, transfers as filled discs, short-template questions with 0-1 transfers.
_ROUTE = WorldConfig(
    name="route",
    min_lines=2,
    max_lines=3,
    connected=True,
    palette_size=4,
    line_width_scale=0.3,
    station_radius_scale=0.1,
    planning_templates=("short",),
    transfer_style="dot",
    city_difficulty_bounds=(3, 5),
)

PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(),
    "small": WorldConfig(
        name="small",
        image_size=112,
        grid=4,
        max_stations=7,
        alphabet="EFGHJKLMNPRSTUWY",
        city_difficulty_bounds=(3, 5),
    ),
    "route": _ROUTE,
    # `route` with every station named after its cell (`labels="grid"`): a 1-transfer plan's
    # transfer station, which no question names, can then be given from where the black disc
    # is, without reading its letter (docs/mapworld.md).
    "route_grid": dataclasses.replace(_ROUTE, name="route_grid", labels="grid"),
    "dense": WorldConfig(
        name="dense",
        image_size=1280,
        grid=14,
        layout="walk",
        min_lines=7,
        max_lines=11,
        min_stations=10,
        max_stations=20,
        run_len=(3, 7),
        connected=True,
        labels="place",
        line_naming="number",
        palette_size=12,
        legend=True,
        legend_width=240,
        label_scale=0.16,
        line_width_scale=0.09,
        station_radius_scale=0.08,
        max_question_transfers=3,
        city_difficulty_bounds=(25, 35),
        # Like ReasonMap's 30 cities: a few big maps, many questions each; the whole pool
        # fits the cache (~6 MB per map).
        train_maps=32,
        eval_maps=8,
        cache_maps=48,
    ),
}


def get_world(world: WorldConfig | str, **overrides: Any) -> WorldConfig:
    """A preset by name (or a config), with dataclass fields overridden."""
    if isinstance(world, str):
        if world not in PRESETS:
            raise ValueError(f"unknown map-world preset {world!r}; choose one of {list(PRESETS)}")
        world = PRESETS[world]
    return dataclasses.replace(world, **overrides) if overrides else world


@dataclasses.dataclass
class City:
    """One generated map: its network, rendered base image (read-only) and cached facts."""

    world: WorldConfig
    split: str
    map_index: int
    network: Network
    image: Image.Image
    name: str
    _pairs: dict[int, list[tuple[str, str]]] | None = None

    @property
    def pair_buckets(self) -> dict[int, list[tuple[str, str]]]:
        if self._pairs is None:
            self._pairs = questions.pairs_by_transfers(self.network)
        return self._pairs


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def network_digest(network: Network) -> str:
    """SHA-256 of the network's canonical JSON (lines, colours, stations, positions)."""
    payload = {
        "lines": [[ln.name, list(ln.color), list(ln.stations)] for ln in network.lines],
        "positions": [[n, list(p)] for n, p in network.positions],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_network(world: WorldConfig, rng: np.random.Generator) -> Network | None:
    """One random network of `world`'s family (None if the layout failed; retry with a new rng)."""
    n_lines = int(rng.integers(world.min_lines, world.max_lines + 1))
    paths = layout.layout_lines(
        rng,
        kind=world.layout,
        grid=world.grid,
        n_lines=n_lines,
        min_len=world.min_stations,
        max_len=world.max_stations,
        run_len=world.run_len,
        connected=world.connected,
        max_tries=world.max_tries,
    )
    if paths is None:
        return None
    cells = list(dict.fromkeys(c for path in paths for c in path))
    if world.labels == "letter":
        labels = names.letter_names(rng, world.alphabet, len(cells))
    elif world.labels == "grid":
        labels = [world.alphabet[r * world.grid + c] for r, c in cells]
    elif world.labels == "place":
        labels = names.place_names(rng, len(cells), world.second_word_prob)
    else:
        raise ValueError(f"unknown label kind {world.labels!r}; "
                         "expected 'letter', 'grid' or 'place'")
    name_of = dict(zip(cells, labels, strict=True))
    styles = names.line_styles(rng, n_lines, world.line_naming, world.palette_size)
    lines = tuple(
        Line(name, color, tuple(name_of[c] for c in path))
        for (name, color), path in zip(styles, paths, strict=True)
    )
    cell = world.cell
    positions = tuple((name_of[(r, c)], ((c + 0.5) * cell, (r + 0.5) * cell)) for r, c in cells)
    return Network(lines, positions)


def generate_city(world: WorldConfig, split: str, map_index: int) -> City:
    """City `map_index` of `split` (deterministic; not cached: see `get_city`)."""
    sid = _split_id(split)
    for attempt in range(world.max_tries):
        rng = np.random.default_rng([world.seed, sid, map_index, attempt, _MAP_STREAM])
        network = build_network(world, rng)
        if network is None:
            continue
        if int(network_digest(network)[:8], 16) % len(SPLITS) != sid:
            continue  # this map belongs to another split's bucket
        return City(
            world=world,
            split=split,
            map_index=map_index,
            network=network,
            image=render.render_map(network, world),
            name=f"{world.name}-{split}-{map_index}",
        )
    raise RuntimeError(
        f"world {world.name!r}: no valid city {map_index} of split {split!r} after "
        f"{world.max_tries} attempts; the preset's lines do not fit its grid"
    )


class _CityCache:
    """Thread-safe LRUs of cities, one per world (each holds `world.cache_maps` cities)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worlds: dict[WorldConfig, collections.OrderedDict[tuple[str, int], City]] = {}

    def get(self, world: WorldConfig, split: str, map_index: int) -> City:
        key = (split, map_index)
        with self._lock:
            items = self._worlds.setdefault(world, collections.OrderedDict())
            city = items.get(key)
            if city is not None:
                items.move_to_end(key)
                return city
        city = generate_city(world, split, map_index)
        with self._lock:
            items[key] = city
            while len(items) > max(world.cache_maps, 1):
                items.popitem(last=False)
        return city

    def clear(self) -> None:
        with self._lock:
            self._worlds.clear()


_CACHE = _CityCache()


def get_city(world: WorldConfig | str, split: str, map_index: int) -> City:
    """City `map_index` of `split`, from the process-wide map cache."""
    return _CACHE.get(get_world(world), split, map_index)


def clear_cache() -> None:
    _CACHE.clear()


def city_difficulty(world: WorldConfig, line_count: int, transfer_count: int) -> str:
    score = line_count + transfer_count
    easy_max, middle_max = world.city_difficulty_bounds
    return "easy" if score <= easy_max else "middle" if score <= middle_max else "hard"


def make_record(
    world: WorldConfig | str,
    split: str,
    index: int,
    task_type: str,
    template: str | None = None,
) -> Record:
    """Question `index` of `task_type` on `split` (a pure function of its arguments).

    The map is drawn from the split's pool of `world.pool_size(split)` maps; planning questions
    pick their template (`short`, `long_num_via`, `long_via`) from the seed unless `template`
    is given. `figure` is a PIL RGB image (a fresh copy; highlighted if the world asks for it).
    """
    world = get_world(world)
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")
    sid = _split_id(split)
    rng = np.random.default_rng(
        [world.seed, sid, index, TASK_TYPES.index(task_type), _QUESTION_STREAM]
    )
    city = get_city(world, split, int(rng.integers(world.pool_size(split))))
    q = questions.build_question(
        task_type,
        city.network,
        rng,
        template=template,
        templates=world.planning_templates,
        max_transfers=world.max_question_transfers,
        pair_buckets=city.pair_buckets,
    )
    if world.highlight and q.station_1 is not None:
        figure = render.highlight_stations(
            city.image, city.network, world, q.station_1, q.station_2
        )
    else:
        figure = city.image.copy()
    net = city.network
    transfers = len(net.transfer_stations)
    return Record(
        uid=f"{world.name}/{split}/{index}/{task_type}",
        type=task_type,
        question=q.question,
        answer=q.answer,
        figure=figure,
        metro=net.metro_dict(),
        routes=q.routes,
        station_1=q.station_1,
        station_2=q.station_2,
        difficulty_city=city_difficulty(world, len(net.lines), transfers),
        difficulty_question=questions.question_difficulty(q.transfers),
        question_transfer_count=q.transfers,
        city_line_count=len(net.lines),
        city_transfer_count=transfers,
        country="Mapworld",
        city=city.name,
        template=q.template,
        source="mapworld",
    )


def generate_records(
    world: WorldConfig | str,
    split: str,
    n: int,
    task_types: Sequence[str] = TASK_TYPES,
    start: int = 0,
) -> list[Record]:
    """`n` records; record i has type `task_types[i % len(task_types)]` and index `start + i`."""
    if not task_types:
        raise ValueError("task_types is empty")
    return [make_record(world, split, start + i, task_types[i % len(task_types)]) for i in range(n)]
