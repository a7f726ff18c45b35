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
per-seed values removes the warm start's own variation. A paired difference is judged by
Student's t over the seeds (`t_value`, `t_crit`, `classify`).

Question-level pairs (`question_paired`): each row's `final.per_question` keeps every held-out
question's 0/1 accuracy and full reward by its index; two arms are paired question by question
within a seed, on the questions (world, task, index) both were asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from rewardmap_jax.mapworld.records import DIFFICULTIES, PLUS_TYPES

# The planning subsets of a row (`collect.planning_groups`): row axis -> metric label.
PLANNING_AXES = {"transfers": "transfers", "difficulty": "map"}


def metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The named scalars of one run's final held-out evaluation (see the module docstring)."""
    f = row["final"]
    out: dict[str, float] = {}
    for task in f["accuracy"]:
        out[f"{task}/accuracy"] = f["accuracy"][task]
        if task in f.get("reward_full", {}):
            out[f"{task}/reward"] = f["reward_full"][task]
    for axis, label in PLANNING_AXES.items():
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


def paired_values(rows: Iterable[Mapping[str, Any]], arm: str, base: str, name: str
                  ) -> dict[int, float]:
    """{seed: arm - base of metric `name`} over the seeds both arms ran where both have a
    finite value."""
    groups = by_arm(rows)
    a, b = groups.get(arm, {}), groups.get(base, {})
    out = {}
    for s in sorted(set(a) & set(b)):
        d = metrics(a[s]).get(name, math.nan) - metrics(b[s]).get(name, math.nan)
        if math.isfinite(d):
            out[s] = d
    return out


def paired(rows: Iterable[Mapping[str, Any]], arm: str, base: str, name: str
           ) -> tuple[float, float, int]:
    """Seed-paired difference arm - base of metric `name`: (mean, SE, n common seeds)."""
    return mean_se(list(paired_values(rows, arm, base, name).values()))


# Two-sided 95% critical values of Student's t by degrees of freedom (seeds - 1): with 2-3
# seeds the standard error is itself a rough estimate, so |t| >= 2 would claim far too much.
_T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
           9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t_crit(n: int) -> float:
    """The two-sided 95% critical |t| for a mean over n paired seeds (df = n - 1); a df between
    tabulated ones takes the next lower one's value (larger: conservative)."""
    df = n - 1
    known = [d for d in _T_CRIT if d <= df]
    return _T_CRIT[max(known)] if df <= 30 else 1.96


def t_value(stat: tuple[float, float, int]) -> float:
    """mean / SE of a (mean, SE, n) paired difference; nan below 2 seeds, +-inf at SE 0."""
    m, se, n = stat
    if n < 2 or not math.isfinite(se):
        return math.nan
    return m / se if se > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))


def classify(stat: tuple[float, float, int]) -> str:
    """"holds" (t >= the critical value), "reversed" (t <= minus it), "unresolved", or
    "not measured" (fewer than 2 seeds) for a paired difference whose expected sign is +."""
    t = t_value(stat)
    if math.isnan(t):
        return "not measured"
    crit = t_crit(stat[2])
    if t >= crit:
        return "holds"
    if t <= -crit:
        return "reversed"
    return "unresolved"


def label(name: str) -> str:
    """A metric name in words: "planning/accuracy@transfers=1" -> "planning accuracy @
    transfers=1"."""
    task, rest = name.split("/", 1)
    return f"{task} {rest}".replace("@", " @ ")


def digits(name: str) -> int:
    """Decimals a metric is shown with: rewards 2, accuracies 3."""
    return 2 if "/reward" in name else 3


def question_values(row: Mapping[str, Any], name: str) -> dict[str, float] | None:
    """{question uid: value} of metric `name` (`<task>/accuracy` or `<task>/reward`, the full
    reward) in one row's per-question results; None when the row does not keep it (a split
    such as `@transfers=1` is not stored per question). The uid is `world/task/index`."""
    task, _, kind = name.partition("/")
    key = {"accuracy": "accuracy", "reward": "reward_full"}.get(kind)
    entry = row.get("final", {}).get("per_question", {}).get(task)
    if key is None or entry is None or key not in entry or "index" not in entry:
        return None
    world = row.get("world", "?")
    return {f"{world}/{task}/{i}": float(v) for i, v in zip(entry["index"], entry[key],
                                                            strict=True)}


class QuestionPairs(NamedTuple):
    """Question-level paired difference arm - base, pooled over seeds (see `question_paired`)."""
    mean: float
    se: float
    n_questions: int  # distinct questions with at least one pair
    n_pairs: int  # (seed, question) pairs
    n_seeds: int
    only_arm: int  # pairs where the arm is right and the baseline wrong (accuracy only)
    only_base: int  # pairs where the baseline is right and the arm wrong
    unshared: int  # (seed, question) entries of either arm without a partner, left out


def question_paired(rows: Iterable[Mapping[str, Any]], arm: str, base: str, name: str
                    ) -> QuestionPairs | None:
    """Per-question differences arm - base of `name`, paired within each seed on the question
    uids both arms have (others are counted in `unshared` and left out). A question asked in
    several seeds contributes the mean of its seeds' differences, so the mean and SE are over
    distinct questions. This treats the runs as fixed: seed-to-seed variance is ignored. None
    when no seed has both arms with per-question values."""
    groups = by_arm(rows)
    a, b = groups.get(arm, {}), groups.get(base, {})
    per_uid: dict[str, list[float]] = {}
    n_pairs = only_arm = only_base = unshared = seeds = 0
    for s in sorted(set(a) & set(b)):
        va, vb = question_values(a[s], name), question_values(b[s], name)
        if va is None or vb is None:
            continue
        seeds += 1
        shared = sorted(set(va) & set(vb))
        unshared += len(set(va) ^ set(vb))
        for uid in shared:
            per_uid.setdefault(uid, []).append(va[uid] - vb[uid])
            n_pairs += 1
            if name.endswith("/accuracy"):
                only_arm += va[uid] > 0.5 >= vb[uid]
                only_base += vb[uid] > 0.5 >= va[uid]
    if not seeds:
        return None
    m, se, n = mean_se([float(np.mean(d)) for d in per_uid.values()])
    return QuestionPairs(m, se, n, n_pairs, seeds, int(only_arm), int(only_base), unshared)


def question_sets(rows: Iterable[Mapping[str, Any]], task: str
                  ) -> dict[int, dict[str, frozenset[str]]]:
    """{seed: {arm: frozenset of the question uids of `task`}} (rows without them left out)."""
    out: dict[int, dict[str, frozenset[str]]] = {}
    for arm, seeds in by_arm(rows).items():
        for s, row in seeds.items():
            v = question_values(row, f"{task}/accuracy")
            if v is not None:
                out.setdefault(s, {})[arm] = frozenset(v)
    return out


def fmt(stat: tuple[float, float, int], digits: int = 3, *, signed: bool = False,
        empty: str = "-", single: str = "") -> str:
    """"mean ± SE" of a (mean, SE, n) statistic; `empty` when n is 0, the mean and `single`
    when the SE is not finite (one seed); `signed` puts a sign on the mean."""
    m, se, n = stat
    if not n:
        return empty
    mean = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    if not math.isfinite(se):
        return mean + single
    return f"{mean} ± {se:.{digits}f}"


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
