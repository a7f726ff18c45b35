r"""Route-planning probes: which GRPO reward teaches planning at CPU scale (docs/planning.md),
one config per probe.

`official` is the `route` demo shortened to a 1,200-step warm start and 500 GRPO steps, run as
one command; every other probe starts from that run's step-1,200 checkpoint (the same warm
start) and differs from `official` only in the keys its preset sets:

    python -m rewardmap_jax.main --config configs/route_probes.py:official \
      --workdir runs/probes/official
    python -m rewardmap_jax.main --config configs/route_probes.py:sparse \
      --config.train.init_from=runs/probes/official --workdir runs/probes/sparse
    python scripts/paired_planning.py runs/probes/official/eval/warm_start.json \
      runs/probes/*/eval/final.json

From the `route` preset's own warm-start length instead (docs/planning.md, "On the `route`
world"): `--config.sft.steps=1500` for `official`, and `--config.train.init_from_step=1500`
for the others.

Presets: `official` (the RewardMap reward as the official code computes it), `format_term`
(+ the paper's explicit format term, weight 2), `sparse` (correctness only, weight 1: the
paper's RL baseline), `allowance` (RewardMap with `reward.extra_section_allowance=1`, a
deviation: docs/rewards.md "Planning traps"), `allowance_long` (that, 700 steps, 80% of the
planning stage's prompts route planning).
"""

from __future__ import annotations

import ml_collections as mlc

from rewardmap_jax.config_utils import DEFAULT_CONFIG
from rewardmap_jax.config_utils import get_config as _load

PRESETS = ("official", "format_term", "sparse", "allowance", "allowance_long")
WARM_START_STEPS = 1200
RL_STEPS = 500
PERCEPTION = {"name": "perception", "steps": 120,
              "weights": {"TorF1": 2.0, "TorF2": 2.0, "Counting2": 1.0, "Counting3": 1.0}}


def _planning_stage(planning: float, plus: float) -> dict:
    return {"name": "planning", "steps": 8000,
            "weights": {"TorF1": plus, "TorF2": plus, "Counting1": plus, "Counting2": plus,
                        "Counting3": plus, "planning": planning}}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    """Returns probe `arg` (default `official`)."""
    probe = arg or "official"
    if probe not in PRESETS:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PRESETS}")
    c = _load(DEFAULT_CONFIG, "route")
    c.preset = probe
    # The probes ran on the `route` world with the RewardMap reward (the `route` preset has
    # since moved to `route_grid` and the sparse reward); `--config.data.mapworld_world=
    # route_grid` runs them on the demo's world (docs/planning.md).
    c.data.mapworld_world = "route"
    c.reward.mode = "difficulty_aware"
    c.sft.steps = WARM_START_STEPS
    c.train.rl_steps = RL_STEPS
    c.curriculum.stages = (PERCEPTION, _planning_stage(5.0, 1.0))
    c.checkpoint.every_steps = 300  # keeps step 1,200: the other probes start from it
    c.log.progress_bar = False
    if probe == "official":
        return c
    # The other probes: GRPO only, from `official`'s step-1,200 params (`train.init_from`).
    c.sft.steps = 0
    c.train.init_from_step = WARM_START_STEPS
    c.checkpoint.every_steps = 250
    if probe == "format_term":
        c.reward.format_weight = 2.0
    elif probe == "sparse":
        c.reward.mode = "baseline"
    elif probe == "allowance":
        c.reward.extra_section_allowance = 1
    elif probe == "allowance_long":
        c.reward.extra_section_allowance = 1
        c.train.rl_steps = 700
        c.checkpoint.every_steps = 350
        c.curriculum.stages = (PERCEPTION, _planning_stage(8.0, 0.4))
    return c
