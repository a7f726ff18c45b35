"""`scripts/paired_planning.py`: reports re-scored with the official reward (whatever the run
trained with), paired over shared questions, hand-worked."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from configs.curriculum import get_config
from rewardmap_jax.config_utils import config_to_dict
from rewardmap_jax.evaluation.report import FORMAT
from rewardmap_jax.mapworld.generator import get_world, make_record
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.rewards import metrics as M

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paired_planning.py"
MAP_WEIGHT = {"easy": 1.0, "middle": 1.2, "hard": 1.5}
WRONG = "Route Name: Red Line\nDeparture Stop: Q\nArrival Stop: Q"  # wrong endpoints: 0


def _script():
    spec = importlib.util.spec_from_file_location("paired_planning", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _official(rec) -> float:
    """The reference plan's official reward (tests/rewards/test_reward_rules.py)."""
    w = MAP_WEIGHT[rec.difficulty_city]
    if rec.question_transfer_count == 0:
        return (10 + 0.5 * 1) * w  # detail 2 - 5 + 4
    return (10 + 0.5 * 4) * (w + 0.5)  # detail 2 + (3 + 1) + (-5 + 3)


def _write(run: Path, tag: str, plans, right: set[int], reward: dict) -> Path:
    config = config_to_dict(get_config("route"))
    config["data"]["mapworld_world"] = "route"  # the world the tests' records come from
    config["train"]["highlight_stations"] = True
    config["reward"].update(reward)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config))
    samples = [{"uid": r.uid, "type": r.type, "acc": float(i in right), "reward": -99.0,
                "completion": answer_text(r) if i in right else WRONG}
               for i, r in enumerate(plans)]
    path = run / "eval" / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "tag": tag, "step": 1, "samples": samples}))
    return path


def test_paired_change_uses_the_official_reward_and_shared_questions(tmp_path, capsys):
    world = get_world("route", highlight=True)
    plans = [make_record(world, "val", i, "planning") for i in range(8)]
    # The base run trained with a deviation: the script still scores with the official rule.
    base = _write(tmp_path / "a", "warm_start", plans, {0, 1}, {"extra_section_allowance": 1,
                                                                "format_weight": 2.0})
    # The other report holds 6 of the 8 questions (2 shared right, 2 more right).
    other = _write(tmp_path / "b", "final", plans[:6], {0, 1, 2, 3}, {"mode": "baseline"})
    mod = _script()
    assert mod.main([str(base), str(other)]) == 0
    out = capsys.readouterr().out.splitlines()
    base_profile, base_sections, profile, sections, acc, rew = out
    # The profile: the most common first route name, and the best constant line's accuracy.
    firsts = [answer_text(r).split("\n")[0].removeprefix("Route Name: ") if i in {0, 1, 2, 3}
              else "Red Line" for i, r in enumerate(plans[:6])]
    top = max(firsts.count(x) for x in firsts)
    lines = [set(M.direct_lines(r)) for r in plans[:6]]
    chance = max(sum(x in h for h in lines) for x in set().union(*lines)) / 6
    assert profile.startswith(f"{other}: {top} of 6 plans")
    # Under a tie any of the most common names may be the one shown.
    assert any(f"name {x!r} first" in profile for x in firsts if firsts.count(x) == top)
    assert f"scores {chance:.4f}" in profile
    assert base_profile.startswith(f"{base}: ") and "of 8 plans" in base_profile
    # Sections: a right plan is the reference (transfers + 1 sections), a wrong one has 1.
    want = {}
    for i, r in enumerate(plans[:6]):
        key = (r.question_transfer_count, r.question_transfer_count + 1 if i < 4 else 1)
        n, k = want.get(key, (0, 0))
        want[key] = (n + 1, k + (i < 4))
    assert sections == f"{other}: plans by transfers/sections: " + ", ".join(
        f"{t}/{s} {n} ({k / n:.2f} right)" for (t, s), (n, k) in sorted(want.items()))
    assert base_sections.startswith(f"{base}: plans by transfers/sections: ")
    # accuracy over the 6 shared questions: 2/6 -> 4/6; differences (0, 0, 1, 1, 0, 0)
    d = [0, 0, 1, 1, 0, 0]
    mean = sum(d) / 6
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 5 / 6)
    assert f"0.3333 -> 0.6667, change +{mean:.4f} ± {se:.4f}" in acc and "n 6" in acc
    before = sum(_official(plans[i]) for i in (0, 1)) / 6
    after = sum(_official(plans[i]) for i in (0, 1, 2, 3)) / 6
    assert f"{before:.4f} -> {after:.4f}" in rew


def test_reports_without_completions_are_refused(tmp_path):
    world = get_world("route", highlight=True)
    plans = [make_record(world, "val", i, "planning") for i in range(3)]
    base = _write(tmp_path / "a", "warm_start", plans, {0}, {})
    report = json.loads(base.read_text())
    for s in report["samples"]:
        del s["completion"]
    mod = _script()
    with pytest.raises(ValueError, match="lacks completions"):
        mod.planning_scores(report, world, None)


def test_several_reports_get_a_mean_change_with_its_se_over_reports(tmp_path, capsys):
    world = get_world("route", highlight=True)
    plans = [make_record(world, "val", i, "planning") for i in range(6)]
    base = _write(tmp_path / "a", "warm_start", plans, {0}, {})
    # Accuracy changes +1/6, +3/6 and 0: mean 2/9, SD sqrt(((1/6-2/9)^2+(1/2-2/9)^2+(2/9)^2)/2).
    runs = [_write(tmp_path / f"r{k}", "final", plans, right, {})
            for k, right in enumerate(({0, 1}, {0, 1, 2, 3}, {0}))]
    mod = _script()
    assert mod.main([str(base), *map(str, runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    changes = [1 / 6, 3 / 6, 0.0]
    mean = sum(changes) / 3
    se = math.sqrt(sum((c - mean) ** 2 for c in changes) / 2) / math.sqrt(3)
    line = [x for x in out if x.startswith("over the 3 reports: planning accuracy")]
    assert line == [f"over the 3 reports: planning accuracy change +{mean:.4f} ± {se:.4f} "
                    f"(SE over reports; t +{mean / se:.1f}; min +0.0000, max +0.5000)"]
    # One report: no mean line.
    capsys.readouterr()
    assert mod.main([str(base), str(runs[0])]) == 0
    assert "over the" not in capsys.readouterr().out
