"""Rewards and evaluation metrics: host parsing, the jitted RewardMap reward, ReasonMap metrics.

Public API:
  make_reward_fn(config.reward)(records, completions) -> dict[str, np.ndarray]  (host interface)
  RewardMapReward(config.reward).parse(...) / .device(...)                      (device path)
  metrics.score_planning / score_vqa(record, completion) -> per-question metrics
Aggregation, reports and the evaluation flow: `rewardmap_jax.evaluation`.
"""

from rewardmap_jax.rewards import metrics
from rewardmap_jax.rewards.registry import RewardMapReward, make_reward_fn, register

__all__ = ["RewardMapReward", "make_reward_fn", "metrics", "register"]
