"""Aggregates of the ablation's metric rows: mean +- standard error over seeds, paired arm
differences, and the tables the CLI prints and `scripts/make_reproduction.py` writes.

A row (one run, `ablation.py`) holds `final` (`collect.summarize_report`); `metrics(row)`
flattens it to named scalars:

    planning/accuracy, planning/reward                       (reward = full RewardMap reward)
    planning/accuracy@transfers=0, planning/reward@transfers=0, ... @transfers=1
    planning/accuracy@map=easy, planning/reward@map=easy, ... middle, hard
    <Plus task>/accuracy, <Plus task>/reward                  (TorF1 ... Counting3)

Standard error over seeds: std(ddof=1) / sqrt(n_seeds). Paired differences (`paired`) compare
two arms seed by seed: the runs of one seed share their warm start, so the difference of the
per-seed values removes the warm start's own variation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import DIFFICULTIES, PLUS_TYPES


def metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The named scalars of one run's final held-out evaluation (see the module docstring)."""
    f = row["final"]
    out: dict[str, float] = {}
    for task in f["accuracy"]:
        out[f"{task}/accuracy"] = f["accuracy"][task]
        if task in f.get("reward_full", {}):
            out[f"{task}/reward"] = f["reward_full"][task]
    for axis, label in (("transfers", "transfers"), ("difficulty", "map")):
        for value, g in f.get("planning", {}).get(axis, {}).items():
            out[f"planning/accuracy@{label}={value}"] = g["accuracy"]
            out[f"planning/reward@{label}={value}"] = g["reward_full"]
    return out


def planning_metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Planning metrics present in any row, in a fixed reading order."""
    seen = set().union(*(metrics(r) for r in rows)) if rows else set()
    names = ["planning/accuracy", "planning/reward"]
    for kind in ("accuracy", "reward"):
        names += [f"planning/{kind}@transfers={k}" for k in ("0", "1", "2", "3")]
        names += [f"planning/{kind}@map={d}" for d in DIFFICULTIES]
    return [n for n in names if n in seen]


def plus_metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen = set().union(*(metrics(r) for r in rows)) if rows else set()
    return [f"{t}/{k}" for t in PLUS_TYPES for k in ("accuracy", "reward") if f"{t}/{k}" in seen]


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) over finite values; SE nan for n < 2."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if not len(x):
        return math.nan, math.nan, 0
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se, len(x)


def by_arm(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["arm"], {})[int(r["seed"])] = r
    return out


def arm_stats(rows: Iterable[Mapping[str, Any]], name: str) -> dict[str, tuple[float, float, int]]:
    """{arm: (mean, SE, n seeds)} of metric `name`."""
    return {arm: mean_se([metrics(r).get(name, math.nan) for r in seeds.values()])
            for arm, seeds in by_arm(rows).items()}


def paired(rows: Iterable[Mapping[str, Any]], arm: str, base: str, name: str
           ) -> tuple[float, float, int]:
    """Seed-paired difference arm - base of metric `name`: (mean, SE, n common seeds)."""
    groups = by_arm(rows)
    a, b = groups.get(arm, {}), groups.get(base, {})
    diffs = [metrics(a[s]).get(name, math.nan) - metrics(b[s]).get(name, math.nan)
             for s in sorted(set(a) & set(b))]
    return mean_se(diffs)


def fmt(stat: tuple[float, float, int], digits: int = 3) -> str:
    m, se, n = stat
    if not n:
        return "-"
    if not math.isfinite(se):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def one_line(row: Mapping[str, Any]) -> str:
    m = metrics(row)
    parts = [f"planning acc {m.get('planning/accuracy', math.nan):.3f} "
             f"reward {m.get('planning/reward', math.nan):.2f}"]
    parts += [f"{t} {m[f'{t}/accuracy']:.3f}" for t in PLUS_TYPES if f"{t}/accuracy" in m]
    return "; ".join(parts)


def summary_text(rows: Sequence[Mapping[str, Any]], order: Sequence[str]) -> str:
    """Plain-text table: arm x main metrics, mean ± SE over seeds."""
    names = ["planning/accuracy", "planning/reward"] + [
        n for n in plus_metric_names(rows) if n.endswith("/accuracy")]
    stats = {n: arm_stats(rows, n) for n in names}
    arms = [a for a in order if a in by_arm(rows)]
    short = {"planning/accuracy": "planning acc", "planning/reward": "planning reward"}
    head = f"{'arm':12s} seeds " + " ".join(
        f"{short.get(n, n.split('/')[0]):>15s}" for n in names)
    lines = [head]
    for arm in arms:
        n_seeds = len(by_arm(rows)[arm])
        cells = " ".join(f"{fmt(stats[n][arm], 2 if 'reward' in n else 3):>15s}" for n in names)
        lines.append(f"{arm:12s} {n_seeds:5d} {cells}")
    return "\n".join(lines)
