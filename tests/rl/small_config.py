"""A seconds-scale config for trainer tests: the tiny preset, 2 SFT + 4 GRPO steps, short tasks.

    python -m rewardmap_jax.main --config tests/rl/small_config.py --workdir /tmp/w

Every prompt fits the 96-token bucket and every answer the 8-token bucket, so each jitted
function compiles exactly once.
"""

from __future__ import annotations

from configs.curriculum import get_config as base_config

TASKS = {"TorF1": 1.0, "TorF2": 1.0, "Counting3": 1.0}


def get_config(arg: str | None = None):
    c = base_config("tiny")
    c.sft.steps = 2
    c.sft.batch_size = 4
    c.sft.warmup_steps = 1
    c.sft.tasks = tuple(TASKS.items())
    c.train.rl_steps = 4
    c.curriculum.stages = ({"name": "small", "steps": 4, "weights": dict(TASKS)},)
    c.data.batch_size = 2
    c.data.answer_buckets = (8,)  # the short tasks' answers (the preset's bucket fits plans)
    c.data.mapworld_questions_per_task = 32
    c.rl.num_generations = 2
    c.rl.mini_batch_size = 2
    c.rl.max_new_tokens = 6
    c.rl.dynamic_sampling = False  # one curriculum batch per step (the tiny preset uses DS)
    c.eval.at_sft_end = False
    c.eval.final = False
    c.eval.every_steps = 0
    c.checkpoint.every_steps = 1
    c.checkpoint.async_save = False
    c.log.progress_bar = False
    c.log.gallery_every_steps = 0
    c.log.plot_at_end = False
    return c
