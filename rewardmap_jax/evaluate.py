"""Evaluate a model or score completions: the documented entry point of
`rewardmap_jax.evaluation` (docs/evaluation.md).
"""

from __future__ import annotations

import sys

from rewardmap_jax.evaluation import cli
from rewardmap_jax.evaluation.cli import main

__doc__ = f"{__doc__}\n{cli.__doc__}"

if __name__ == "__main__":
    sys.exit(main())
