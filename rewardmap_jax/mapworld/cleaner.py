"""ReasonMap's station / line name normaliser, shared by the loaders' station checks and the
evaluation metrics (`rewardmap_jax.rewards.text` re-exports it).

`clean_rm` is `clean_string` of the official ReasonMap evaluation (`tools.py`,
github.com/fscdc/ReasonMap), rule for rule: drop "Metro"/"metro", ",", "*" and newlines, drop
parenthesised text (ASCII or full-width brackets), drop whitespace and "-", lowercase. So
"坝堰站" and "坝堰（机场）站", or "Termini Station" and "termini station (Transfer Station)", are
the same station to the official scorer.
"""

from __future__ import annotations

import functools
import re

_PAREN_RE = re.compile(r"[\(\（][^\)\）]*[\)\）]")
_SPACE_DASH_RE = re.compile(r"[\s\-]+")
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("Metro", ""), ("metro", ""), (",", ""), ("*", ""), ("\n", ""),
)  # fmt: skip


@functools.lru_cache(maxsize=1 << 16)  # names repeat across a batch (one city, many questions)
def clean_rm(s: str) -> str:
    """ReasonMap's `clean_string` (the metric's name normaliser), rule for rule."""
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = _PAREN_RE.sub("", s)
    return _SPACE_DASH_RE.sub("", s).lower()
