r"""The RewardMap ablation at CPU scale (docs/reproduction.md), one config per arm.

    python -m rewardmap_jax.experiments.ablation --seeds 3

runs, for each seed, the supervised warm start (`warm_start`) and then every arm from it; any run
alone is

    python -m rewardmap_jax.main --config configs/ablation.py:rewardmap --config.seed=0 \
      --config.train.init_from=runs/ablation/warm_start/seed0 --workdir runs/ablation/rewardmap/seed0

Every arm is `base()` plus the overrides listed in `ARMS` and nothing else, following the rows of
the paper's ablation (arXiv 2510.02240): the sparse RL baseline (correctness reward only, weight 1,
route-planning data only); + the ReasonMap-Plus perception tasks (same number of steps, half of the
prompts now Plus questions); + the detail reward; + the difficulty-aware weight; + the
perception-to-planning curriculum (the full RewardMap: the same prompts, ordered TorF -> counting ->
planning); and, as a control, supervised training on the reference answers of the same mixture
for the same number of steps.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from rewardmap_jax.config_utils import get_config as _load
from rewardmap_jax.config_utils import DEFAULT_CONFIG

# Study sizes (docs/reproduction.md: why these; measured run times there).
WARM_START_STEPS = 400
RL_STEPS = 200
EVAL_PER_TASK = 256  # held-out questions per task type, final evaluation
CURVE_EVERY = 50  # held-out evaluation every CURVE_EVERY steps (learning curves)
CURVE_PER_TASK = 64

PLUS = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3")
# The mixed arms draw half planning, half Plus questions (each Plus type 1/10).
MIXTURE = {**{t: 1.0 for t in PLUS}, "planning": 5.0}


def _stages(*parts: tuple[str, dict[str, float], float]) -> tuple[dict[str, Any], ...]:
    """Weighted curriculum stages; each part's length is a fraction of RL_STEPS."""
    return tuple({"name": name, "weights": weights, "steps": round(frac * RL_STEPS)}
                 for name, weights, frac in parts)


PLANNING_ONLY = _stages(("planning", {"planning": 1.0}, 1.0))
MIXED = _stages(("mixed", MIXTURE, 1.0))
# The official order (TorF -> Counting2/3 -> Counting1 -> planning) with the mixture's
# proportions: 20% TorF, 20% Counting2/3, 10% Counting1, 50% planning.
CURRICULUM = _stages(
    ("torf", {"TorF1": 1.0, "TorF2": 1.0}, 0.2),
    ("global_local_count", {"Counting2": 1.0, "Counting3": 1.0}, 0.2),
    ("mcq_count", {"Counting1": 1.0}, 0.1),
    ("planning", {"planning": 1.0}, 0.5),
)

WARM_START_OVERRIDES: dict[str, Any] = {
    "sft.steps": WARM_START_STEPS,
    "train.rl_steps": -1,
}

ARMS: dict[str, dict[str, Any]] = {
    "sparse_rl": {
        "about": "GRPO, correctness reward only (weight 1), planning questions only",
        "overrides": {"reward.mode": "baseline", "curriculum.stages": PLANNING_ONLY},
    },
    "plus_tasks": {
        "about": "+ ReasonMap-Plus tasks (half the prompts), still correctness only",
        "overrides": {"reward.mode": "baseline", "curriculum.stages": MIXED},
    },
    "detail": {
        "about": "+ detail reward (weight still 1)",
        "overrides": {"reward.mode": "baseline", "reward.baseline_keeps_detail": True,
                      "curriculum.stages": MIXED},
    },
    "difficulty": {
        "about": "+ difficulty-aware weight (the full RewardMap reward), prompts shuffled",
        "overrides": {"reward.mode": "difficulty_aware", "curriculum.stages": MIXED},
    },
    "rewardmap": {
        "about": "+ curriculum (TorF -> counting -> planning): the full RewardMap",
        "overrides": {"reward.mode": "difficulty_aware", "curriculum.stages": CURRICULUM},
    },
    "sft_only": {
        "about": "control: supervised training on the same mixture, same number of steps",
        "overrides": {"train.rl_steps": -1, "sft.steps": RL_STEPS,
                      "sft.tasks": tuple(MIXTURE.items()), "sft.schedule": "constant",
                      "sft.batch_size": 32},
    },
}

PRESETS = ("warm_start", *ARMS)


def base() -> mlc.ConfigDict:
    """What every run of the study shares: the demo's world, model, reward and GRPO settings
    (configs/curriculum.py `tiny`), the study's sizes, no dynamic sampling (every arm draws
    the same prompts per step)."""
    c = _load(DEFAULT_CONFIG, "tiny")
    c.rl.dynamic_sampling = False
    c.eval.at_sft_end = False  # each seed's warm start is evaluated once, in its own run
    c.eval.questions_per_task = EVAL_PER_TASK
    c.eval.periodic_questions_per_task = CURVE_PER_TASK
    c.eval.every_steps = CURVE_EVERY
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2
    c.log.progress_bar = False
    c.log.gallery_every_steps = 0
    c.log.tensorboard = False
    return c


def apply(c: mlc.ConfigDict, overrides: dict[str, Any]) -> mlc.ConfigDict:
    for key, value in overrides.items():
        section, name = key.split(".")
        if name not in c[section]:
            raise KeyError(f"override {key}: no such config key")
        c[section][name] = value
    return c


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arm = arg or "rewardmap"
    if arm not in PRESETS:
        raise ValueError(f"unknown ablation preset {arm!r}; choose one of {PRESETS}")
    c = base()
    c.preset = arm
    apply(c, WARM_START_OVERRIDES if arm == "warm_start" else ARMS[arm]["overrides"])
    if arm not in ("warm_start", "sft_only"):
        c.sft.steps = 0
        c.train.rl_steps = RL_STEPS
    return c
