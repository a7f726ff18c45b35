"""Held-out planning accuracy and official RewardMap reward of runs against a warm start, paired
over the questions both answered.

    python scripts/paired_planning.py runs/probes/official/eval/warm_start.json \
      runs/probes/*/eval/final.json

Every report's planning completions are re-scored with the reward as the official code computes
it (mode `difficulty_aware`, no format term, `extra_section_allowance` 0), whatever reward its
run trained with, so runs trained on different rewards compare on one scale. The map world
(and its records) come from the first report's run (`<run>/config.json`). One line per report:
mean before -> after, change ± paired standard error over the questions, z, and n. Before
them, for every report: the most common first route name of its plans and the chance level,
the best constant line's accuracy on its questions (a policy that copies the endpoints and
always names one line; an accuracy at that level says nothing about reading the map), and
its plans counted by the question's transfer count and the plan's number of sections, with the
share of each judged right (a reward that pays for sections shows up here first). With several
reports (e.g. the seeds of one configuration), a last line gives the mean change over them ±
its standard error over the reports (the spread between training runs, which a single run's
paired SE does not measure).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewardmap_jax.evaluation import scoring  # noqa: E402
from rewardmap_jax.evaluation.report import load_report  # noqa: E402
from rewardmap_jax.experiments import collect  # noqa: E402
from rewardmap_jax.rewards import metrics  # noqa: E402

OFFICIAL = {"mode": "difficulty_aware", "format_weight": 0.0, "extra_section_allowance": 0}


def planning_scores(report: dict, world, reward_fn) -> dict[str, tuple[float, float]]:
    """{uid: (accuracy 0/1, official reward)} of a report's planning questions."""
    samples = [s for s in report["samples"] if s["type"] == "planning"]
    if not samples:
        raise ValueError(f"report {report.get('tag')!r} holds no planning question")
    if not all("completion" in s for s in samples):
        raise ValueError(f"report {report.get('tag')!r} lacks completions (re-run evaluation)")
    uids = [s["uid"] for s in samples]
    records = [collect.record_of(u, world) for u in uids]
    reward = np.asarray(reward_fn(records, [s["completion"] for s in samples])["overall"])
    return {u: (float(float(s["acc"]) > 0.5), float(r))
            for u, s, r in zip(uids, samples, reward, strict=True)}


def line_profile(report: dict, world) -> str:
    """The most common first route name of a report's plans and the chance level: the best
    constant line's accuracy on the same questions (`evaluation.scoring`, `majority/planning`)."""
    samples = [s for s in report["samples"] if s["type"] == "planning"]
    records = [collect.record_of(s["uid"], world) for s in samples]
    chance = scoring.best_constant_rate([metrics.direct_lines(r) for r in records])
    first = Counter(
        (sections[0].route if (sections := metrics.metric_sections(s["completion"], r.template))
         else "(no section)") for s, r in zip(samples, records, strict=True))
    name, count = first.most_common(1)[0]
    return (f"{count} of {len(samples)} plans ({count / len(samples):.0%}) name {name!r} first;"
            f" the best constant line scores {chance:.4f} on these questions (chance)")


def section_profile(report: dict, world) -> str:
    """A report's plans by (question transfers / sections in the plan, as the accuracy rule
    reads them): how many, and the share judged right."""
    samples = [s for s in report["samples"] if s["type"] == "planning"]
    count: Counter[tuple[int, int]] = Counter()
    right: Counter[tuple[int, int]] = Counter()
    for s in samples:
        rec = collect.record_of(s["uid"], world)
        key = (rec.question_transfer_count,
               len(metrics.metric_sections(s["completion"], rec.template)))
        count[key] += 1
        right[key] += float(s["acc"]) > 0.5
    return "plans by transfers/sections: " + ", ".join(
        f"{t}/{n} {count[t, n]} ({right[t, n] / count[t, n]:.2f} right)"
        for t, n in sorted(count))


def paired(base: dict[str, tuple[float, float]], other: dict[str, tuple[float, float]],
           which: int) -> tuple[float, float, float, float, int]:
    """(mean before, mean after, change, paired SE, n) over the shared questions."""
    keys = sorted(set(base) & set(other))
    if len(keys) < 2:
        raise ValueError(f"only {len(keys)} shared planning questions")
    a = np.array([base[k][which] for k in keys])
    b = np.array([other[k][which] for k in keys])
    d = b - a
    return a.mean(), b.mean(), d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the warm start's report (eval/<tag>.json)")
    ap.add_argument("reports", nargs="+", help="reports to compare with it")
    args = ap.parse_args(argv)
    base_path = Path(args.base)
    config = collect.load_config(base_path.parent.parent)
    config["reward"] = {**config["reward"], **OFFICIAL}
    world, reward_fn = collect.world_of(config), collect.full_reward_fn(config)
    base_report = load_report(base_path)
    base = planning_scores(base_report, world, reward_fn)
    print(f"{args.base}: {line_profile(base_report, world)}")
    print(f"{args.base}: {section_profile(base_report, world)}")
    changes: dict[str, list[float]] = {"accuracy": [], "official reward": []}
    for path in args.reports:
        report = load_report(Path(path))
        scores = planning_scores(report, world, reward_fn)
        print(f"{path}: {line_profile(report, world)}")
        print(f"{path}: {section_profile(report, world)}")
        for name, which in (("accuracy", 0), ("official reward", 1)):
            before, after, change, se, n = paired(base, scores, which)
            z = change / se if se > 0 else math.nan
            changes[name].append(change)
            print(f"{path}: planning {name} {before:.4f} -> {after:.4f}, change {change:+.4f}"
                  f" ± {se:.4f} (z {z:+.1f}, n {n})")
    if len(args.reports) > 1:
        for name, values in changes.items():
            mean, spread = float(np.mean(values)), float(np.std(values, ddof=1))
            se = spread / math.sqrt(len(values))
            t = mean / se if se > 0 else math.nan
            print(f"over the {len(values)} reports: planning {name} change {mean:+.4f} ± "
                  f"{se:.4f} (SE over reports; t {t:+.1f}; min {min(values):+.4f}, "
                  f"max {max(values):+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
