"""The route finder against hand-worked plans and a brute force over every simple path."""

from __future__ import annotations

import numpy as np
import pytest

from rewardmap_jax.mapworld import generator
from rewardmap_jax.mapworld.network import (
    Line,
    Network,
    clean_station_name,
    fewest_transfer_routes,
    routes_dict,
)
from tests.mapworld.oracle import brute_force_plans, plan_as_tuple

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _network(lines: dict[str, list[str]]) -> Network:
    names = list(dict.fromkeys(s for st in lines.values() for s in st))
    positions = tuple((n, (float(i), 0.0)) for i, n in enumerate(names))
    colours = [RED, BLUE, GREEN, (9, 9, 9)]
    return Network(
        tuple(Line(k, colours[i], tuple(v)) for i, (k, v) in enumerate(lines.items())), positions
    )


# Red A-B-C-D, Blue E-B-F, Green F-G-D: a triangle of lines meeting at B, D and F.
TRIANGLE = {"Red": ["A", "B", "C", "D"], "Blue": ["E", "B", "F"], "Green": ["F", "G", "D"]}


def test_same_line_route_reverse_direction_lists_via_stops_in_travel_order():
    plans = fewest_transfer_routes(_network(TRIANGLE), "D", "A")
    assert plans == [
        [
            {
                "route_name": "Red",
                "departure_stop": "D",
                "arrival_stop": "A",
                "via_stops": ["C", "B"],
                "num_via_stops": 2,
            }
        ]
    ]


def test_one_transfer_hand_worked():
    net = _network(TRIANGLE)
    assert fewest_transfer_routes(net, "A", "E") == [
        [
            {
                "route_name": "Red",
                "departure_stop": "A",
                "arrival_stop": "B",
                "via_stops": [],
                "num_via_stops": 0,
            },
            {
                "route_name": "Blue",
                "departure_stop": "B",
                "arrival_stop": "E",
                "via_stops": [],
                "num_via_stops": 0,
            },
        ]
    ]
    # C -> F: two 1-transfer plans, via B (2 stops ridden) before via D (3 stops ridden).
    plans = fewest_transfer_routes(net, "C", "F")
    assert [
        [(s["route_name"], s["departure_stop"], s["arrival_stop"]) for s in p] for p in plans
    ] == [
        [("Red", "C", "B"), ("Blue", "B", "F")],
        [("Red", "C", "D"), ("Green", "D", "F")],
    ]
    assert plans[1][1]["via_stops"] == ["G"]
    assert list(routes_dict(plans)) == ["plan_1", "plan_2"]


def test_two_transfers_and_unreachable():
    lines = {"Red": ["A", "B"], "Blue": ["B", "C"], "Green": ["C", "D"], "Grey": ["X", "Y"]}
    net = _network(lines)
    plans = fewest_transfer_routes(net, "A", "D")
    assert [[s["route_name"] for s in p] for p in plans] == [["Red", "Blue", "Green"]]
    assert fewest_transfer_routes(net, "A", "Y") == []


def test_errors_name_the_problem():
    net = _network(TRIANGLE)
    with pytest.raises(KeyError, match="'Z'"):
        fewest_transfer_routes(net, "A", "Z")
    with pytest.raises(ValueError, match="same station"):
        fewest_transfer_routes(net, "A", "A")
    with pytest.raises(ValueError, match="twice"):
        Line("Loop", RED, ("A", "B", "A"))


def test_metro_dict_annotates_transfers_and_cleaning_strips_them():
    metro = _network(TRIANGLE).metro_dict()
    assert metro["Blue"] == ["E", "B (Transfer Station)", "F (Transfer Station)"]
    assert clean_station_name("B (Transfer Station)") == "B"
    assert clean_station_name("X (Branch-starting Station)") == "X"
    assert clean_station_name("天安门（换乘站）") == "天安门"


def _check_against_brute_force(net: Network, metro: dict[str, list[str]], rng, n_pairs: int):
    stations = list(net.stations)
    checked = 0
    for _ in range(n_pairs):
        a, b = rng.choice(len(stations), size=2, replace=False)
        a, b = stations[int(a)], stations[int(b)]
        plans = fewest_transfer_routes(net, a, b)
        best, expected = brute_force_plans(metro, a, b)
        got = [plan_as_tuple(p) for p in plans]
        assert len(got) == len(set(got)), "duplicate plans"
        assert set(got) == expected, (a, b, metro)
        if plans:
            assert {len(p) for p in plans} == {best}
            checked += 1
    return checked


def test_shared_segments_are_handled_like_the_brute_force():
    # Two lines run side by side over B-C (a shared segment): either line may carry that ride.
    lines = {"Red": ["A", "B", "C", "D"], "Blue": ["E", "B", "C", "F"], "Green": ["D", "G", "F"]}
    net = _network(lines)
    rng = np.random.default_rng(0)
    assert _check_against_brute_force(net, lines, rng, 40) > 0


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_route_finder_matches_brute_force_on_generated_maps(preset):
    world = generator.get_world(preset)
    rng = np.random.default_rng(1)
    checked = 0
    for map_index in range(40):
        city = generator.generate_city(world, "train", map_index)
        metro = city.network.metro_dict(annotate=False)
        checked += _check_against_brute_force(city.network, metro, rng, 6)
    assert checked > 100
