r"""The RewardMap ablation at CPU scale (docs/reproduction.md), one config per arm.

    python -m rewardmap_jax.experiments.ablation --seeds 3

trains, for each seed, a supervised warm start (`warm_start`), then every arm from it; any run
alone is

    python -m rewardmap_jax.main --config configs/ablation.py:rewardmap --config.seed=1 \
      --config.train.init_from=runs/ablation/warm_start/seed1 \
      --workdir runs/ablation/rewardmap/seed1

Every arm is `base()` plus the overrides listed in `arms()` and nothing else, following the rows
of the paper's ablation (arXiv 2510.02240): the sparse RL baseline (correctness reward only,
weight 1, route-planning data only); + the ReasonMap-Plus perception tasks (same number of steps,
half of the prompts now Plus questions); + the detail reward; + the difficulty-aware weight; +
the perception-to-planning curriculum (the full RewardMap: the same mixture of prompts, ordered
TorF -> counting -> planning); and, as a control, supervised training on the reference answers of
the same mixture for the same number of steps. Every RL arm also sets `RL_ARM` (no SFT, the
study's step count). The arms of one seed share that seed's warm start, as the paper's arms
share one base model; the seed varies the warm start and the RL phase (sampling, prompt order),
so the spread over seeds includes the warm start's. `<arm>@quick` is the same arm at the
`quick` sizes of `SCALES` (a pipeline check).
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from rewardmap_jax.config_utils import DEFAULT_CONFIG
from rewardmap_jax.config_utils import get_config as _load

# Study sizes (docs/reproduction.md says why and what they cost). `full` is the study; `quick`
# runs every arm through the whole pipeline (warm start, GRPO, SFT control, evaluation,
# collection, the doc) in minutes: a check that the study runs, whose numbers mean nothing.
SCALES: dict[str, dict[str, int]] = {
    "full": {"warm_start_steps": 1500,  # = the `route` demo's warm start
             "rl_steps": 200,
             "eval_per_task": 256,  # held-out questions per task type, final evaluation
             "curve_every": 50,  # a held-out evaluation every curve_every steps (curves)
             "curve_per_task": 64},
    "quick": {"warm_start_steps": 30, "rl_steps": 6, "eval_per_task": 16, "curve_every": 3,
              "curve_per_task": 8},
}
WARM_START_STEPS = SCALES["full"]["warm_start_steps"]
RL_STEPS = SCALES["full"]["rl_steps"]
EVAL_PER_TASK = SCALES["full"]["eval_per_task"]
CURVE_EVERY = SCALES["full"]["curve_every"]
CURVE_PER_TASK = SCALES["full"]["curve_per_task"]

WORLD = "route"  # the map world of the study (docs/mapworld.md)
PLUS = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3")
# The mixed arms draw half planning, half Plus questions (each Plus type 1/10 of the prompts).
MIXTURE = {**{t: 1.0 for t in PLUS}, "planning": 5.0}


def _stages(rl_steps: int, *parts: tuple[str, dict[str, float], float]
            ) -> tuple[dict[str, Any], ...]:
    """Weighted curriculum stages; each part's length is a fraction of `rl_steps` batches."""
    return tuple({"name": name, "weights": weights, "steps": max(1, round(frac * rl_steps))}
                 for name, weights, frac in parts)


def arms(rl_steps: int) -> dict[str, dict[str, Any]]:
    """Arm -> {"about", "overrides"} for a study of `rl_steps` steps after the warm start."""
    planning_only = _stages(rl_steps, ("planning", {"planning": 1.0}, 1.0))
    mixed = _stages(rl_steps, ("mixed", MIXTURE, 1.0))
    # The official order (TorF -> Counting2/3 -> Counting1 -> planning) with the mixture's
    # proportions: 20% TorF, 20% Counting2/3, 10% Counting1, 50% planning.
    curriculum = _stages(
        rl_steps,
        ("torf", {"TorF1": 1.0, "TorF2": 1.0}, 0.2),
        ("global_local_count", {"Counting2": 1.0, "Counting3": 1.0}, 0.2),
        ("mcq_count", {"Counting1": 1.0}, 0.1),
        ("planning", {"planning": 1.0}, 0.5),
    )
    return {
        "sparse_rl": {
            "about": "GRPO, correctness reward only (weight 1), planning prompts only",
            "overrides": {"reward.mode": "baseline", "curriculum.stages": planning_only},
        },
        "plus_tasks": {
            "about": "+ ReasonMap-Plus tasks (half the prompts), still correctness only",
            "overrides": {"reward.mode": "baseline", "curriculum.stages": mixed},
        },
        "detail": {
            "about": "+ detail reward (weight still 1)",
            "overrides": {"reward.mode": "baseline", "reward.baseline_keeps_detail": True,
                          "curriculum.stages": mixed},
        },
        "difficulty": {
            "about": "+ difficulty-aware weight: the full RewardMap reward, prompts shuffled",
            "overrides": {"reward.mode": "difficulty_aware", "curriculum.stages": mixed},
        },
        "rewardmap": {
            "about": "+ curriculum (TorF -> counting -> planning): the full RewardMap",
            "overrides": {"reward.mode": "difficulty_aware", "curriculum.stages": curriculum},
        },
        "sft_only": {
            "about": "control: supervised training on the mixture's reference answers, same "
                     "number of steps (lr = the RL lr, constant)",
            "overrides": {"train.rl_steps": -1, "sft.steps": rl_steps,
                          "sft.tasks": tuple(MIXTURE.items()), "sft.schedule": "constant",
                          "sft.lr": 2e-4},
        },
    }


def warm_start_overrides(scale: str = "full") -> dict[str, Any]:
    n = SCALES[scale]["warm_start_steps"]
    every = max(1, n // 5)
    return {"sft.steps": n, "sft.warmup_steps": min(100, max(1, n // 10)),
            "train.rl_steps": -1, "eval.every_steps": every,
            "eval.periodic_questions_per_task": 2 * SCALES[scale]["curve_per_task"],
            "checkpoint.every_steps": every, "checkpoint.keep": 10}


def rl_arm(scale: str = "full") -> dict[str, Any]:
    return {"sft.steps": 0, "train.rl_steps": SCALES[scale]["rl_steps"]}


ARMS = arms(RL_STEPS)
WARM_START_OVERRIDES = warm_start_overrides("full")
RL_ARM = rl_arm("full")
PRESETS = ("warm_start", *ARMS)


def base(scale: str = "full") -> mlc.ConfigDict:
    """What every run of the study shares: the route demo's world, model, warm-start mix, reward
    constants and GRPO settings (configs/curriculum.py `route`), the study's evaluation sizes,
    and no dynamic sampling (every arm then draws the same number of prompts per step)."""
    s = SCALES[scale]
    c = _load(DEFAULT_CONFIG, "route")
    # The committed study (experiments/results/ablation.jsonl) ran on the `route` world with
    # the RewardMap reward as the default of the runs that do not set it (the SFT control's
    # evaluation); the `route` preset has since moved to `route_grid` and the sparse reward.
    c.data.mapworld_world = WORLD
    c.reward.mode = "difficulty_aware"
    c.rl.dynamic_sampling = False
    c.eval.at_sft_end = False  # the warm start is evaluated once, at the end of its own run
    c.eval.questions_per_task = s["eval_per_task"]
    c.eval.periodic_questions_per_task = s["curve_per_task"]
    c.eval.every_steps = s["curve_every"]
    c.checkpoint.every_steps = s["curve_every"]
    c.checkpoint.keep = 2
    c.log.progress_bar = False
    c.log.gallery_every_steps = 0
    c.log.tensorboard = False
    return c


def apply(c: mlc.ConfigDict, overrides: dict[str, Any]) -> mlc.ConfigDict:
    """Sets `section.key` values; a key the config does not have is an error."""
    for key, value in overrides.items():
        section, name = key.split(".")
        if section not in c or name not in c[section]:
            raise KeyError(f"override {key}: no such config key")
        c[section][name] = value
    return c


def configure(c: mlc.ConfigDict, arm: str, arms_: dict[str, dict[str, Any]],
              warm_start: dict[str, Any], rl_arm: dict[str, Any]) -> mlc.ConfigDict:
    c.preset = arm
    if arm == "warm_start":
        return apply(c, warm_start)
    if arm not in arms_:
        raise ValueError(f"unknown ablation arm {arm!r}; choose one of {('warm_start', *arms_)}")
    if arm != "sft_only":
        apply(c, rl_arm)
    return apply(c, arms_[arm]["overrides"])


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    """`arg` = `<arm>` or `<arm>@<scale>` (a key of SCALES; default `full`)."""
    arm, _, scale = (arg or "rewardmap").partition("@")
    scale = scale or "full"
    if scale not in SCALES:
        raise ValueError(f"unknown study scale {scale!r}; choose one of {tuple(SCALES)}")
    c = configure(base(scale), arm, arms(SCALES[scale]["rl_steps"]),
                  warm_start_overrides(scale), rl_arm(scale))
    c.preset = f"{arm}@{scale}" if scale != "full" else arm
    return c
