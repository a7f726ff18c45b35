"""A finished run's held-out results as one small, JSON-able dict (the ablation's metric rows).

    python -m rewardmap_jax.experiments.collect RUN_DIR [RUN_DIR ...]   # prints the tables

Reads what `rewardmap_jax.main` writes: `config.json`, `eval/summary.json` (every held-out
evaluation of the run in order, without questions), the last evaluation's `eval/<tag>.json`
(its `samples`: uid, type, accuracy, the run's reward and the completion of every question;
docs/evaluation.md) and `metrics.jsonl`. Map-world uids (`world/split/index/task`) name their
record exactly (`make_record` is a pure function), so each held-out question's transfer count
and map difficulty are recovered without storing them, and the completions of the last
evaluation are re-scored with the *full* RewardMap reward: arms trained with another reward
(the sparse baseline) are then compared on the same yardstick.

Row layout (`summarize_run`):

    {"tag", "step", "n": {task: n},
     "accuracy": {task: mean}, "reward": {task: mean}          # the run's own reward
     "reward_full": {task: mean},                              # full RewardMap reward
     "planning": {"transfers": {"0": {"n", "accuracy", "reward_full"}, "1": ...},
                  "difficulty": {"easy": {...}, "middle": {...}, "hard": {...}}},
     "per_question": {task: {"uid": [...], "accuracy": [...], "reward_full": [...]}},
     "chance": {metric: rate}}   # the best constant answer on these questions (`chance_levels`)

`per_question` keeps the paired comparisons (warm start vs final) possible from the committed
rows; the uids are compact (`index` only, the world, split and task are in the row).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewardmap_jax.evaluation.scoring import best_constant_rate
from rewardmap_jax.experiments.tables import PLANNING_AXES
from rewardmap_jax.mapworld.generator import get_world, make_record
from rewardmap_jax.mapworld.records import DIFFICULTIES, TASK_TYPES, Record
from rewardmap_jax.rewards.metrics import direct_lines

SUMMARY = Path("eval") / "summary.json"


def load_reports(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every held-out report of a run (without questions), in the order they were made."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        raise FileNotFoundError(f"no held-out reports at {path}; did the run finish?")
    reports = json.loads(path.read_text())
    if not reports:
        raise ValueError(f"{path} lists no evaluation")
    return reports


def load_full_report(run_dir: str | Path, tag: str) -> dict[str, Any]:
    """The report `eval/<tag>.json` with its per-question `samples`."""
    from rewardmap_jax.evaluation.report import load_report

    return load_report(Path(run_dir) / "eval" / f"{tag}.json")


def load_config(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "config.json").read_text())


def world_of(config: Mapping[str, Any]):
    return get_world(config["data"]["mapworld_world"],
                     highlight=bool(config["train"]["highlight_stations"]))


def record_of(uid: str, world: Any) -> Record:
    """The map-world record a held-out uid names (`<world>/<split>/<index>/<task>`)."""
    name, split, index, task = uid.split("/")
    if name != world.name:
        raise ValueError(f"uid {uid!r} is not from map world {world.name!r}")
    return make_record(world, split, int(index), task)


def full_reward_fn(config: Mapping[str, Any]):
    """The run's RewardMap reward in its full form (mode `difficulty_aware`: correctness, detail
    and difficulty weight), whatever mode the run trained with."""
    import ml_collections as mlc

    from rewardmap_jax.rewards.registry import make_reward_fn

    reward = mlc.ConfigDict(dict(config["reward"]))
    reward.mode = "difficulty_aware"
    return make_reward_fn(reward)


def _mean(x: Sequence[float]) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def summarize_report(report: Mapping[str, Any], world: Any, reward_fn: Any | None
                     ) -> dict[str, Any]:
    """One report with its `samples` -> a metric row (see the module docstring).
    `reward_fn` (records, completions) -> {"overall", ...} re-scores the completions."""
    row: dict[str, Any] = {"tag": report["tag"], "step": int(report["step"]), "n": {},
                           "accuracy": {}, "reward": {}, "reward_full": {}, "per_question": {}}
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for sample in report["samples"]:
        by_task.setdefault(sample["type"], []).append(sample)
    for task in [t for t in TASK_TYPES if t in by_task] + sorted(set(by_task) - set(TASK_TYPES)):
        samples = by_task[task]
        uids = [s["uid"] for s in samples]
        row["n"][task] = len(uids)
        row["accuracy"][task] = _mean([float(s["acc"]) for s in samples])
        row["reward"][task] = _mean([math.nan if s.get("reward") is None else float(s["reward"])
                                     for s in samples])
        entry = {"index": [int(u.split("/")[2]) for u in uids],
                 "accuracy": [int(float(s["acc"]) > 0.5) for s in samples]}
        if reward_fn is not None and all("completion" in s for s in samples):
            records = [record_of(u, world) for u in uids]
            full = np.asarray(reward_fn(records, [s["completion"] for s in samples])["overall"])
            entry["reward_full"] = [round(float(x), 4) for x in full]
            row["reward_full"][task] = _mean(full)
        row["per_question"][task] = entry
    if "planning" in by_task:
        row["planning"] = planning_breakdown(row["per_question"]["planning"], world,
                                             [s["uid"] for s in by_task["planning"]])
    splits = {s["uid"].split("/")[1] for s in report["samples"]}
    if len(splits) == 1:
        row["chance"] = chance_levels(world, splits.pop(), row["per_question"])
    return row


def chance_levels(world: Any, split: str, per_question: Mapping[str, Mapping[str, Any]]
                  ) -> dict[str, float]:
    """The chance level of a row's held-out questions: what the best constant answer scores
    (the evaluation report's `majority/<task>`; VQA: the most common ground truth, planning:
    the best constant line, `rewards.metrics.direct_lines`), under `tables.metrics`' names:
    `<task>/accuracy` and, per subset of the planning questions (the best constant answer of
    that subset), `planning/accuracy@transfers=<k>` and `planning/accuracy@map=<difficulty>`."""
    out: dict[str, float] = {}
    for task, entry in per_question.items():
        records = [make_record(world, split, int(i), task) for i in entry["index"]]
        hits = [direct_lines(r) if task == "planning" else (r.answer,) for r in records]
        out[f"{task}/accuracy"] = best_constant_rate(hits)
        if task != "planning":
            continue
        for axis, groups in planning_groups(records).items():
            for value, sel in groups.items():
                out[f"planning/accuracy@{PLANNING_AXES[axis]}={value}"] = best_constant_rate(
                    [h for h, keep in zip(hits, sel, strict=True) if keep])
    return out


def accuracy_of(report: Mapping[str, Any]) -> dict[str, float]:
    """{task: held-out accuracy} from a report's summary figures (no questions needed)."""
    return {k.split("/", 1)[1]: float(v["value"]) for k, v in report["summary"].items()
            if k.startswith("accuracy/") and k != "accuracy/mean"}


def planning_groups(records: Sequence[Record]) -> dict[str, dict[str, np.ndarray]]:
    """{axis: {value: boolean mask over `records`}} of the planning subsets: by question
    transfer count (ascending) and by map difficulty (easy, middle, hard); empty ones left out."""
    keys = {"transfers": np.asarray([str(r.question_transfer_count) for r in records]),
            "difficulty": np.asarray([r.difficulty_city for r in records])}
    order = {"transfers": sorted(set(keys["transfers"])), "difficulty": list(DIFFICULTIES)}
    return {axis: {v: keys[axis] == v for v in order[axis] if (keys[axis] == v).any()}
            for axis in keys}


def planning_breakdown(entry: Mapping[str, Any], world: Any, uids: Sequence[str]
                       ) -> dict[str, Any]:
    """Planning accuracy (and full reward, when re-scored) by question transfer count and by
    map difficulty."""
    acc = np.asarray(entry["accuracy"], np.float64)
    rew = np.asarray(entry.get("reward_full", [math.nan] * len(acc)), np.float64)
    return {axis: {v: {"n": int(sel.sum()), "accuracy": float(acc[sel].mean()),
                       "reward_full": float(rew[sel].mean())} for v, sel in groups.items()}
            for axis, groups in planning_groups([record_of(u, world) for u in uids]).items()}


TRAIN_CURVE_KEYS = ("reward/mean", "accuracy/mean", "accuracy/planning", "sft/loss")


def train_curve(run_dir: str | Path, every: int = 10) -> list[dict[str, float]]:
    """Every `every`-th step of `metrics.jsonl` (and the last), the keys of TRAIN_CURVE_KEYS
    that step logged: on-policy (sampled) reward and accuracy, or the SFT loss."""
    from rewardmap_jax.run.metrics_writer import read_metrics

    rows = [r for r in read_metrics(run_dir) if "step_time" in r]
    out = []
    for i, r in enumerate(rows):
        if r["step"] % every and i != len(rows) - 1:
            continue
        point = {k: round(float(r[k]), 4) for k in TRAIN_CURVE_KEYS if k in r}
        if point:
            out.append({"step": int(r["step"]), **point})
    return out


def train_seconds(run_dir: str | Path) -> float:
    """Wall seconds from the start of the first logged step to the last log line."""
    from rewardmap_jax.run.metrics_writer import read_metrics

    rows = read_metrics(run_dir)
    stamped = [r for r in rows if "time" in r]
    if not stamped:
        return math.nan
    first = next((r for r in stamped if "step_time" in r), stamped[0])
    return round(stamped[-1]["time"] - first["time"] + float(first.get("step_time", 0.0)), 1)


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """A finished run -> {"final": row of its last report (re-scored with the full reward),
    "curve": [rows of the earlier reports, accuracy only], "train_curve", "train_s",
    "steps", "world"}."""
    config = load_config(run_dir)
    world = world_of(config)
    reports = load_reports(run_dir)
    final = summarize_report(load_full_report(run_dir, reports[-1]["tag"]), world,
                             full_reward_fn(config))
    curve = [{"tag": r["tag"], "step": int(r["step"]), "accuracy": accuracy_of(r)}
             for r in reports]
    return {"final": final, "curve": curve, "train_curve": train_curve(run_dir),
            "train_s": train_seconds(run_dir), "world": world.name,
            "steps": {"sft": int(config["sft"]["steps"]),
                      "rl": max(int(config["train"]["rl_steps"]), 0)}}


def _format_table(row: Mapping[str, Any]) -> str:
    chance = row.get("chance", {})
    lines = [f"{row['tag']} (step {row['step']})",
             "  task        n   accuracy  chance  reward  reward_full"]
    for task in TASK_TYPES:
        if task in row["n"]:
            full = row["reward_full"].get(task, math.nan)
            lines.append(f"  {task:10s} {row['n'][task]:4d}  {row['accuracy'][task]:.3f}    "
                         f"{chance.get(f'{task}/accuracy', math.nan):.3f}  "
                         f"{row['reward'][task]:6.2f}  {full:6.2f}")
    for axis, groups in row.get("planning", {}).items():
        for value, g in groups.items():
            c = chance.get(f"planning/accuracy@{PLANNING_AXES[axis]}={value}", math.nan)
            lines.append(f"  planning {axis}={value}: n {g['n']}, accuracy {g['accuracy']:.3f}"
                         f" (chance {c:.3f}), full reward {g['reward_full']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for run_dir in argv:
        config = load_config(run_dir)
        world = world_of(config)
        reports = load_reports(run_dir)
        print(f"== {run_dir}")
        for rep in reports:  # re-scored with the full reward
            full = load_full_report(run_dir, rep["tag"])
            print(_format_table(summarize_report(full, world, full_reward_fn(config))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
