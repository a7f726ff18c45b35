"""Evaluation: generate -> score -> report, one package for the trainer, the CLI and the gallery.

* `data.py`: questions: the map world, or real datasets (paths or Hugging Face repo ids),
  capped per type on request; bad rows counted, never fatal.
* `models.py`: the model and its settings: a run's checkpoint and config, or a Hugging Face
  directory / repo id with its own processing limits.
* `generate.py`: greedy completions, batched by image size, progress bar, resumable cache.
* `scoring.py`: per-question scores (ReasonMap / Plus accuracy, `official` and `corrected` map
  score, reward) and summary figures with standard errors.
* `report.py`: the report, JSON + Markdown laid out like the papers' tables.
* `compare.py`: paired differences between two reports.
* `gallery.py`: gallery pages of training rollouts and held-out evaluations.
* `evaluator.py`: the flow (`evaluate`, `score_and_report`), the trainer's `TrainingEvaluator`.
* `cli.py`: `python -m rewardmap_jax.evaluate` and its `compare` command.

The per-question rules live in `rewardmap_jax.rewards.metrics`; docs/evaluation.md describes
the whole flow and docs/rewards.md the official rules.
"""

from rewardmap_jax.evaluation import compare  # the module (`compare.compare(a, b)`)
from rewardmap_jax.evaluation.evaluator import (
    TrainingEvaluator,
    config_errors,
    evaluate,
    score_and_report,
    write_summary,
)
from rewardmap_jax.evaluation.gallery import write_training_gallery
from rewardmap_jax.evaluation.report import (
    build_report,
    eval_metrics,
    load_report,
    slim,
    write_report,
)
from rewardmap_jax.evaluation.scoring import score_completions, summarize

__all__ = [
    "TrainingEvaluator",
    "build_report",
    "compare",
    "config_errors",
    "eval_metrics",
    "evaluate",
    "load_report",
    "score_and_report",
    "score_completions",
    "slim",
    "summarize",
    "write_report",
    "write_summary",
    "write_training_gallery",
]
