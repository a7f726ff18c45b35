"""The `route` preset (the demo's planning world) and the world options it is built from:
`planning_templates` and `transfer_style`. The other presets are unchanged by them."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from rewardmap_jax.mapworld import generator, questions
from rewardmap_jax.mapworld.records import TASK_TYPES


def test_route_world_asks_short_plans_with_at_most_one_transfer():
    world = generator.get_world("route")
    transfers = collections.Counter()
    for i in range(300):
        rec = generator.make_record(world, "train", i, "planning")
        assert rec.template == "short"
        assert "Number of Via Stops" not in rec.question and "Via Stops" not in rec.question
        transfers[rec.question_transfer_count] += 1
        # The reference answer is one section per ride: transfers + 1 sections.
        assert questions.answer_text(rec).count("Route Name:") == rec.question_transfer_count + 1
    assert set(transfers) == {0, 1}
    assert min(transfers.values()) > 0.35 * 300  # both kinds well represented


def test_route_world_keeps_every_official_question_type():
    world = generator.get_world("route", highlight=True)
    for t in TASK_TYPES:
        for i in range(20):
            rec = generator.make_record(world, "val", i, t)
            assert rec.type == t and questions.answer_text(rec)


def test_route_world_is_connected_and_splits_map_difficulty_in_thirds():
    world = generator.get_world("route")
    counts = collections.Counter()
    for i in range(600):
        city = generator.get_city(world, "train", i)
        net = city.network
        assert 2 <= len(net.lines) <= 3
        # connected: every station reachable from the first (planning never lacks a route)
        seen, todo = set(), [net.stations[0]]
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            for ln in net.lines:
                if s in ln.stations:
                    todo.extend(ln.stations)
        assert seen == set(net.stations)
        counts[generator.city_difficulty(world, len(net.lines),
                                         len(net.transfer_stations))] += 1
    assert all(0.2 < counts[d] / 600 < 0.5 for d in ("easy", "middle", "hard")), counts


def test_transfer_stations_are_filled_discs_in_the_route_world():
    world = generator.get_world("route")
    city = generator.generate_city(world, "train", 4)
    pixels = np.asarray(city.image)
    transfers = set(city.network.transfer_stations)
    assert transfers
    for name, (x, y) in city.network.positions:
        centre = tuple(pixels[int(y), int(x)])
        assert centre == ((0, 0, 0) if name in transfers else (255, 255, 255)), name


def test_planning_templates_option_restricts_the_templates():
    world = generator.get_world("tiny", planning_templates=("long_via",))
    for i in range(10):
        assert generator.make_record(world, "train", i, "planning").template == "long_via"
    # An explicit template still wins.
    rec = generator.make_record(world, "train", 0, "planning", template="short")
    assert rec.template == "short"


@pytest.mark.parametrize("field,value,match", [
    ("planning_templates", ("medium",), "planning_templates"),
    ("planning_templates", (), "planning_templates"),
    ("transfer_style", "star", "transfer_style='star'"),
])
def test_bad_route_options_are_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        generator.get_world("route", **{field: value})


def test_grid_labels_name_every_station_after_its_cell():
    world = generator.get_world("route_grid")
    letter_of = {(r, c): world.alphabet[r * world.grid + c]
                 for r in range(world.grid) for c in range(world.grid)}
    for i in range(50):
        net = generator.get_city(world, "train", i).network
        for name, (x, y) in net.positions:
            assert name == letter_of[(int(y // world.cell), int(x // world.cell))]
    # The rest of the world is `route`'s: the same question kinds, 0-1 transfers.
    rec = generator.make_record(world, "val", 3, "planning")
    assert rec.template == "short" and rec.question_transfer_count in (0, 1)


def test_letter_labels_differ_between_maps():
    # The `letter` default draws names at random: the same cell carries different letters.
    world = generator.get_world("route")
    names_at_centre = {
        name for i in range(30)
        for name, (x, y) in generator.get_city(world, "train", i).network.positions
        if (int(y // world.cell), int(x // world.cell)) == (1, 1)}
    assert len(names_at_centre) > 3
