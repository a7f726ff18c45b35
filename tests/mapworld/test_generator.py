"""Determinism, split disjointness, preset geometry and rendering of the procedural map world."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rewardmap_jax.mapworld import generator, render
from rewardmap_jax.mapworld.records import TASK_TYPES


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _fingerprint(record) -> str:
    row = record.to_row(figure=hashlib.sha256(_png(record.figure)).hexdigest())
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_same_arguments_same_bytes_whatever_the_call_order(preset):
    args = [("train", i, t) for i in (0, 7, 123) for t in TASK_TYPES]
    generator.clear_cache()
    first = [_fingerprint(generator.make_record(preset, *a)) for a in args]
    generator.clear_cache()
    generator.generate_records(preset, "train", 30, start=50)  # warm the cache with other maps
    second = [_fingerprint(generator.make_record(preset, *a)) for a in reversed(args)]
    assert first == second[::-1]
    # A different world seed gives different questions.
    other = generator.get_world(preset, seed=1)
    assert _fingerprint(generator.make_record(other, *args[0])) != first[0]


def test_records_differ_across_indices():
    prints = {
        _fingerprint(generator.make_record("tiny", "train", i, "planning")) for i in range(20)
    }
    assert len(prints) > 15


def test_train_and_heldout_maps_are_disjoint():
    world = generator.get_world("tiny")
    digests = {}
    for split in generator.SPLITS:
        digests[split] = {
            generator.network_digest(generator.generate_city(world, split, i).network)
            for i in range(150)
        }
    assert not digests["train"] & digests["test"]
    assert not digests["train"] & digests["val"]
    assert not digests["val"] & digests["test"]
    with pytest.raises(ValueError, match="unknown split"):
        generator.make_record(world, "dev", 0, "TorF1")


def _cell_of(xy, world):
    x, y = xy
    col, row = x / world.cell - 0.5, y / world.cell - 0.5
    assert col == int(col) and row == int(row), f"station at {xy} is not on a cell centre"
    return int(row), int(col)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_small_world_geometry(preset):
    world = generator.get_world(preset)
    for i in range(60):
        city = generator.generate_city(world, "train", i)
        net = city.network
        assert city.image.size == (world.image_size, world.image_size)
        assert city.image.mode == "RGB"
        assert world.min_lines <= len(net.lines) <= world.max_lines
        pos = net.position
        edges = []
        for line in net.lines:
            assert world.min_stations <= len(line.stations) <= world.max_stations
            assert line.name.endswith(" Line") and len(line.name.split()) == 2
            cells = [_cell_of(pos[s], world) for s in line.stations]
            steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cells[:-1], cells[1:], strict=True)]
            assert all(abs(dr) + abs(dc) == 1 for dr, dc in steps), "not neighbouring cells"
            turns = sum(1 for a, b in zip(steps[:-1], steps[1:], strict=True) if a != b)
            assert turns <= 1, "not L-shaped"
            edges += [frozenset(e) for e in zip(cells[:-1], cells[1:], strict=True)]
        assert len(edges) == len(set(edges)), "two lines share a segment"
        names = net.stations
        assert all(len(n) == 1 and n in world.alphabet for n in names)
        assert len({_cell_of(pos[n], world) for n in names}) == len(names)
        assert len({line.color for line in net.lines}) == len(net.lines)


def test_dense_world_is_a_metro_like_map_with_legend():
    world = generator.get_world("dense")
    city = generator.generate_city(world, "test", 0)
    net = city.network
    assert city.image.size == (world.image_size + world.legend_width, world.image_size)
    assert len(net.lines) >= world.min_lines
    assert len(net.stations) > 80
    assert len(net.transfer_stations) >= len(net.lines) - 1  # connected network
    assert max(len(n) for n in net.stations) > 10  # long place names
    legend = np.asarray(city.image)[:, world.image_size + 1 :]
    for line in net.lines:  # each line colour appears in the legend panel
        assert np.all(legend == np.array(line.color, dtype=np.uint8), axis=-1).any(), line.name


def test_render_draws_line_colours_and_station_markers():
    world = generator.get_world("tiny")
    city = generator.generate_city(world, "train", 3)
    pixels = np.asarray(city.image)
    for line in city.network.lines:
        assert np.all(pixels == np.array(line.color, dtype=np.uint8), axis=-1).sum() > 20
    for _, (x, y) in city.network.positions:  # white marker centre, black rim to its left
        assert tuple(pixels[int(y), int(x)]) == (255, 255, 255)
        rim = pixels[int(y), int(x - world.cell * 0.25) : int(x)]
        assert (rim.sum(axis=-1) == 0).any()


def test_highlight_marks_only_the_named_stations():
    world = generator.get_world("tiny", highlight=True)
    plain = generator.get_world("tiny")
    rec = generator.make_record(world, "train", 5, "TorF1")
    base = generator.make_record(plain, "train", 5, "TorF1")
    assert (rec.station_1, rec.station_2, rec.question) == (
        base.station_1,
        base.station_2,
        base.question,
    )
    diff = np.any(np.asarray(rec.figure) != np.asarray(base.figure), axis=-1)
    pos = generator.get_city(plain, "train", int(rec.city.rsplit("-", 1)[1])).network.position
    touched = set()
    for y, x in zip(*np.nonzero(diff), strict=True):
        touched.add((int(y // world.cell), int(x // world.cell)))
    named = {
        (int(pos[s][1] // world.cell), int(pos[s][0] // world.cell))
        for s in (rec.station_1, rec.station_2)
    }
    assert named <= touched and touched <= named | _neighbours(named, world.grid)
    c3 = generator.make_record(world, "train", 5, "Counting3")  # names no station: no marker
    assert c3.station_1 is None
    assert np.array_equal(
        np.asarray(c3.figure),
        np.asarray(generator.make_record(plain, "train", 5, "Counting3").figure),
    )


def _neighbours(cells, grid):
    return {
        (r + dr, c + dc)
        for r, c in cells
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if 0 <= r + dr < grid and 0 <= c + dc < grid
    }


def test_figure_is_a_private_copy():
    rec = generator.make_record("tiny", "train", 1, "TorF2")
    rec.figure.paste((0, 0, 0), (0, 0, 84, 84))
    again = generator.make_record("tiny", "train", 1, "TorF2")
    assert np.asarray(again.figure).max() == 255


def test_thousand_questions_across_all_types_are_fast():
    world = dataclasses.replace(generator.get_world("tiny"), seed=12345)  # cold cache
    generator.clear_cache()
    t0 = time.perf_counter()
    records = generator.generate_records(world, "train", 1000)
    elapsed = time.perf_counter() - t0
    print(f"1000 tiny questions (all types, cold cache): {elapsed:.2f} s")
    assert len(records) == 1000 and {r.type for r in records} == set(TASK_TYPES)
    assert elapsed < 10.0


def test_render_is_fast_for_tiny_maps():
    world = generator.get_world("tiny")
    net = generator.generate_city(world, "train", 0).network
    t0 = time.perf_counter()
    for _ in range(200):
        render.render_map(net, world)
    per_map = (time.perf_counter() - t0) / 200
    print(f"render tiny map: {per_map * 1e3:.2f} ms")
    assert per_map < 0.01


def test_invalid_world_configs_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="layout='spiral'"):
        generator.get_world("tiny", layout="spiral")
    with pytest.raises(ValueError, match="alphabet of 4 < 3x3 cells"):
        generator.get_world("tiny", alphabet="EFHK")
    with pytest.raises(ValueError, match="max_lines 8 > palette_size 6"):
        generator.get_world("tiny", max_lines=8)
    with pytest.raises(ValueError, match="lines 3..2"):
        generator.get_world("tiny", min_lines=3, max_lines=2)
    cramped = generator.get_world("tiny", min_stations=5, max_stations=5, min_lines=4, max_tries=5)
    with pytest.raises(RuntimeError, match="do not fit its grid"):
        generator.generate_city(cramped, "train", 0)


def test_rendering_from_threads_matches_serial_rendering():
    world = generator.get_world("small")
    nets = [generator.generate_city(world, "val", i).network for i in range(16)]
    serial = [np.asarray(render.render_map(n, world)) for n in nets]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda n: np.asarray(render.render_map(n, world)), nets * 4))
    for k, image in enumerate(threaded):
        assert np.array_equal(image, serial[k % 16])
