"""The ablation's arms differ from the shared base config in exactly their listed overrides,
and the shuffled and curriculum arms see the same task mixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardmap_jax.config_utils import config_to_dict
from rewardmap_jax.experiments import ablation
from rewardmap_jax.rl import trainer

STUDY = ablation.load_study(Path(ablation.DEFAULT_CONFIG))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix.count(".") < 1:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(arm):
    base = _flat(config_to_dict(STUDY.base()))
    got = _flat(config_to_dict(STUDY.get_config(arm)))
    assert set(base) == set(got)
    return {k for k in base if base[k] != got[k]} - {"preset"}


@pytest.mark.parametrize("arm", list(STUDY.ARMS))
def test_each_arm_changes_only_its_listed_keys(arm):
    listed = set(STUDY.ARMS[arm]["overrides"])
    if arm != "sft_only":
        listed |= set(STUDY.RL_ARM)
    base = _flat(config_to_dict(STUDY.base()))
    # A listed override may equal the base value (e.g. the base's reward mode): only the
    # changed keys must be listed.
    assert _diff(arm) <= listed
    assert {k for k in listed if base[k] != _flat(config_to_dict(STUDY.get_config(arm)))[k]} \
        == _diff(arm)


def test_warm_start_is_sft_only():
    c = STUDY.get_config("warm_start")
    assert (c.train.rl_steps, c.sft.steps) == (-1, STUDY.WARM_START_STEPS)
    assert _diff("warm_start") <= set(STUDY.WARM_START_OVERRIDES)


def _task_counts(stages):
    counts = {}
    for s in stages:
        total = sum(s["weights"].values())
        for t, w in s["weights"].items():
            counts[t] = counts.get(t, 0.0) + s["steps"] * w / total
    return counts


def test_shuffled_and_curriculum_arms_draw_the_same_mixture():
    mixed = _task_counts(STUDY.get_config("difficulty").curriculum.stages)
    ordered = _task_counts(STUDY.get_config("rewardmap").curriculum.stages)
    assert mixed.keys() == ordered.keys()
    for t in mixed:
        assert ordered[t] == pytest.approx(mixed[t], rel=0.02), t
    assert _task_counts(STUDY.get_config("sparse_rl").curriculum.stages) == {
        "planning": STUDY.RL_STEPS}
    # the paper's row order: each RL arm adds one component to the previous one
    reward = [(STUDY.get_config(a).reward.mode, STUDY.get_config(a).reward.baseline_keeps_detail)
              for a in ("sparse_rl", "plus_tasks", "detail", "difficulty", "rewardmap")]
    assert reward == [("baseline", False), ("baseline", False), ("baseline", True),
                      ("difficulty_aware", False), ("difficulty_aware", False)]


@pytest.mark.parametrize("scale", list(STUDY.SCALES))
def test_every_arm_passes_the_trainer_checks(scale):
    for arm in ["warm_start", *STUDY.ARMS]:
        trainer.check_config(STUDY.get_config(f"{arm}@{scale}"))


def test_quick_scale_changes_only_the_sizes():
    """`<arm>@quick` is the same arm at the quick sizes: only size keys differ from full."""
    sizes = {"sft.steps", "sft.warmup_steps", "train.rl_steps", "curriculum.stages",
             "eval.questions_per_task", "eval.periodic_questions_per_task", "eval.every_steps",
             "checkpoint.every_steps"}
    for arm in ("warm_start", "rewardmap", "sft_only"):
        full = _flat(config_to_dict(STUDY.get_config(arm)))
        quick = _flat(config_to_dict(STUDY.get_config(f"{arm}@quick")))
        assert {k for k in full if full[k] != quick[k]} - {"preset"} <= sizes, arm
    assert STUDY.get_config("rewardmap@quick").train.rl_steps == STUDY.SCALES["quick"]["rl_steps"]
    with pytest.raises(ValueError, match="scale"):
        STUDY.get_config("rewardmap@huge")
