"""Studies built on the training CLI: the RewardMap ablation (`ablation.py`) and the helpers
that turn finished runs into small metric rows (`collect.py`). docs/reproduction.md."""
