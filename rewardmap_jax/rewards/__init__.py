"""Rewards and evaluation metrics: host parsing, the jitted RewardMap reward, ReasonMap metrics.

Public API:
  make_reward_fn(config.reward)(records, completions) -> dict[str, np.ndarray]  (host interface)
  RewardMapReward(config.reward).parse(...) / .device(...)                      (device path)
  evaluate_completions(records, completions) -> dict                           (metrics)
"""

from rewardmap_jax.rewards.metrics import evaluate_completions
from rewardmap_jax.rewards.registry import RewardMapReward, make_reward_fn, register
from rewardmap_jax.rewards.report import markdown_table, write_json, write_markdown

__all__ = [
    "RewardMapReward",
    "evaluate_completions",
    "make_reward_fn",
    "markdown_table",
    "register",
    "write_json",
    "write_markdown",
]
