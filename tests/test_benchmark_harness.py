"""`benchmarks/harness.py`: interleaving, and the loaded-machine verdict from the CPU other
processes used (the load average counts the benchmark's own threads)."""

from __future__ import annotations

import itertools

import pytest

from benchmarks import harness


def _fake_clock(monkeypatch, busy: list[float], own: list[float], wall: list[float],
                load=(0.2, 0.2, 0.2)):
    monkeypatch.setattr(harness, "machine_busy_s", iter(busy).__next__)
    monkeypatch.setattr(harness, "own_cpu_s", iter(own).__next__)
    clock = itertools.chain(wall, itertools.repeat(wall[-1]))
    monkeypatch.setattr(harness.time, "perf_counter", clock.__next__)
    monkeypatch.setattr(harness.os, "getloadavg", lambda: load)


def test_rounds_are_interleaved_and_rotated():
    order = []
    fns = {n: (lambda r, n=n: order.append((n, r))) for n in "abc"}
    tm = harness.interleave(fns, repeats=3, warmup=1)
    assert order[:3] == [("a", -1), ("b", -1), ("c", -1)]
    assert order[3:] == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1),
                         ("c", 2), ("a", 2), ("b", 2)]
    assert {k: len(v) for k, v in tm.wall.items()} == {"a": 3, "b": 3, "c": 3}


def test_own_cpu_is_not_foreign(monkeypatch):
    # 10 s of rounds; the machine was busy 20 CPU-s, all of it this process: idle otherwise,
    # although the load average after is ~2 (the benchmark's own two threads).
    _fake_clock(monkeypatch, busy=[100.0, 120.0], own=[5.0, 25.0], wall=[0.0] * 3 + [10.0])
    tm = harness.interleave({"a": lambda r: None}, repeats=1, warmup=0)
    assert tm.foreign_cores == pytest.approx(0.0)
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (2.0, 1.0, 0.5))
    assert not tm.loaded


def test_other_processes_make_it_loaded(monkeypatch):
    # 20 busy CPU-s in 10 s, 12 of them this process's, 3 its worker's: 0.5 cores foreign.
    _fake_clock(monkeypatch, busy=[0.0, 20.0], own=[0.0, 12.0], wall=[0.0] * 3 + [10.0])
    tm = harness.interleave({"a": lambda r: harness.Measured(wall=1.0, cpu=3.0)},
                            repeats=1, warmup=0)
    assert tm.foreign_cores == pytest.approx(0.5)
    assert tm.loaded and "0.50 cores" in tm.why_loaded()
    assert tm.wall["a"] == [1.0] and tm.cpu["a"] == [3.0]
    tm.foreign_limit = 0.6
    assert not tm.loaded


def test_a_high_load_before_the_benchmark_is_loaded(monkeypatch):
    _fake_clock(monkeypatch, busy=[0.0, 0.0], own=[0.0, 0.0], wall=[0.0] * 3 + [1.0],
                load=(3.0, 3.0, 3.0))
    tm = harness.interleave({"a": lambda r: None}, repeats=1, warmup=0)
    assert tm.loaded and "before the benchmark" in tm.why_loaded()


def test_too_few_repeats_are_refused():
    import argparse

    ap = argparse.ArgumentParser()
    harness.add_arguments(ap)
    with pytest.raises(SystemExit):
        harness.check_arguments(ap.parse_args(["--repeats", "3"]))
