"""The timing harness every benchmark that compares implementations uses.

Rules it enforces (docs/benchmarks.md): the compared implementations run interleaved in one
process (round r runs every implementation once, in an order rotated by r, so drift and load
hit all alike), at least 5 timed rounds after a warm-up, and the result reports the median with
its spread (min-max and interquartile range), per-round ratios (the median and range of
a/b measured in the same round), the process CPU seconds beside the wall seconds (CPU time is
far less sensitive to other jobs than wall time), and the load average before and after.

A loaded machine is flagged loudly on stderr and in the output (`"loaded": true`); with
`--strict` the script then exits with status 3, so a quiet benchmark pass can refuse it. Loaded
means either: the 1-minute load average *before the first call* is above `--load-limit`
(default 1.5 for the 2-core development box), or, during the timed rounds, other processes used
more than `--foreign-limit` cores on average (default 0.25). The second is measured, not
inferred from the load average (which counts the benchmark's own threads, so a long benchmark on
2 cores always ends near 2): the machine's busy CPU time from /proc/stat minus this process's
and its waited children's CPU time and the CPU time its worker processes report (`Measured`).

Each script prints one JSON object per measurement on stdout and a Markdown table row after it
(`markdown_row`), so its figures go to docs/benchmarks.md as printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

MIN_REPEATS = 5
LOAD_LIMIT = 1.5
FOREIGN_LIMIT = 0.25
EXIT_LOADED = 3


def add_arguments(ap: argparse.ArgumentParser, repeats: int = MIN_REPEATS) -> None:
    ap.add_argument("--repeats", type=int, default=repeats,
                    help=f"timed interleaved rounds (>= {MIN_REPEATS})")
    ap.add_argument("--strict", action="store_true",
                    help="exit with status 3 when the machine is loaded")
    ap.add_argument("--load-limit", type=float, default=LOAD_LIMIT,
                    help="1-minute load average (before the benchmark) above which timings "
                         "are flagged")
    ap.add_argument("--foreign-limit", type=float, default=FOREIGN_LIMIT,
                    help="mean cores used by other processes during the timed rounds above "
                         "which timings are flagged")


def limits(args: argparse.Namespace) -> dict[str, float]:
    """The loaded-machine limits of `add_arguments`, as `interleave` keywords."""
    return {"load_limit": args.load_limit, "foreign_limit": args.foreign_limit}


def check_arguments(args: argparse.Namespace) -> None:
    if args.repeats < MIN_REPEATS:
        raise SystemExit(f"--repeats {args.repeats}: at least {MIN_REPEATS} rounds are needed "
                         "for a median and a spread")


def _quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summary(xs: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Median, min, max and quartiles of `xs`, rounded."""
    q1, q3 = _quartiles(xs)
    r = lambda x: round(x, digits)  # noqa: E731
    return {"median": r(statistics.median(xs)), "min": r(min(xs)), "max": r(max(xs)),
            "q1": r(q1), "q3": r(q3)}


@dataclasses.dataclass
class Timings:
    """Interleaved timings: wall and process-CPU seconds per implementation and round."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    load_limit: float = LOAD_LIMIT
    # Mean cores other processes used during the timed rounds (None: /proc/stat unreadable).
    foreign_cores: float | None = None
    foreign_limit: float = FOREIGN_LIMIT

    def median(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def ratio(self, num: str, den: str) -> dict[str, float]:
        """Per-round wall[num] / wall[den]: median and range over rounds (same-round pairs)."""
        return summary([a / b for a, b in zip(self.wall[num], self.wall[den], strict=True)], 3)

    @property
    def loaded(self) -> bool:
        return self.why_loaded() is not None

    def why_loaded(self) -> str | None:
        """Why these timings are not a benchmark result, or None on an idle machine."""
        if self.load_before[0] > self.load_limit:
            return (f"1-minute load average {self.load_before[0]:.2f} > {self.load_limit} "
                    "before the benchmark")
        if self.foreign_cores is None:  # no /proc/stat: the load average after, as a fallback
            if self.load_after[0] > self.load_limit:
                return (f"1-minute load average {self.load_after[0]:.2f} > {self.load_limit} "
                        "after")
            return None
        if self.foreign_cores > self.foreign_limit:
            return (f"other processes used {self.foreign_cores:.2f} cores on average "
                    f"> {self.foreign_limit} during the timed rounds")
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": {k: summary(v) for k, v in self.wall.items()},
            "cpu_s": {k: summary(v) for k, v in self.cpu.items()},
            "runs_s": {k: [round(x, 4) for x in v] for k, v in self.wall.items()},
            "load": {"before": [round(x, 2) for x in self.load_before],
                     "after": [round(x, 2) for x in self.load_after],
                     "limit": self.load_limit,
                     "foreign_cores": (None if self.foreign_cores is None
                                       else round(self.foreign_cores, 3)),
                     "foreign_limit": self.foreign_limit, "loaded": self.loaded},
        }


@dataclasses.dataclass(frozen=True)
class Measured:
    """A time measured by the callee itself (e.g. in a worker process, without the IPC)."""

    wall: float
    cpu: float


def machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (/proc/stat: every state but idle and
    iowait), or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def interleave(fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 1,
               load_limit: float = LOAD_LIMIT,
               foreign_limit: float = FOREIGN_LIMIT) -> Timings:
    """Runs every fn(round) once per round, rounds interleaved and rotated; fn must block until
    its work is done (e.g. `jax.block_until_ready`). Warm-up calls get negative round numbers.
    A fn that returns a `Measured` is timed by it instead of around the call (its CPU seconds
    are its worker's, which the foreign-CPU measure then does not count as foreign)."""
    names = list(fns)
    before = os.getloadavg()  # before the benchmark's own work raises it
    for w in range(warmup):
        for name in names:
            fns[name](-1 - w)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    workers_cpu = 0.0
    busy0, own0, t_start = machine_busy_s(), own_cpu_s(), time.perf_counter()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fns[name](r)
            w, c = time.perf_counter() - t0, time.process_time() - c0
            if isinstance(out, Measured):
                w, c = out.wall, out.cpu
                workers_cpu += c
            wall[name].append(w)
            cpu[name].append(c)
    busy1, own1, elapsed = machine_busy_s(), own_cpu_s(), time.perf_counter() - t_start
    foreign = None
    if busy0 is not None and busy1 is not None and elapsed > 0:
        foreign = max(0.0, (busy1 - busy0) - (own1 - own0) - workers_cpu) / elapsed
    return Timings(wall, cpu, before, os.getloadavg(), load_limit, foreign, foreign_limit)


def markdown_row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def spread(s: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    """'median (min-max)' of a `summary`, scaled."""
    f = lambda x: f"{x * scale:.{digits}g}"  # noqa: E731
    return f"{f(s['median'])} ({f(s['min'])}-{f(s['max'])})"


def emit(result: dict[str, Any], timings: Timings | None, args: argparse.Namespace,
         row: Sequence[Any] | None = None) -> int:
    """Prints the JSON line and the Markdown row; flags a loaded machine. Returns the exit
    status (EXIT_LOADED with --strict on a loaded machine, else 0)."""
    if timings is not None:
        result = {**result, **timings.as_dict()}
    print(json.dumps(result), flush=True)
    if row is not None:
        print(markdown_row(row), flush=True)
    loaded = timings is not None and timings.loaded
    if loaded:
        print(f"\n*** LOADED MACHINE: {timings.why_loaded()}: these wall-clock figures are "
              "NOT benchmark results; re-run on an idle machine. ***\n", file=sys.stderr,
              flush=True)
    return EXIT_LOADED if loaded and args.strict else 0
