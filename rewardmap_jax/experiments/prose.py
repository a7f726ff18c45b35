"""The shared vocabulary of the Discussion (`rewardmap_jax.experiments.discussion`).

The arm and metric names its sections refer to, the `Claim` type (one of the paper's claims as a
seed-paired comparison; the list itself is `discussion.CLAIMS`), the row and statistic aliases,
and the small helpers that turn the numbers of `rewardmap_jax.experiments.tables` into words and
markdown: signed differences with their SE, t and its critical value, how many seeds agree in
sign, plurals, arm lists, tables, and how an arm trained. Nothing here reads a file or decides a
verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rewardmap_jax.experiments import tables

WARM_START = "warm_start"
SFT_ARM = "sft_only"
PLANNING = "planning/accuracy"


class Claim(NamedTuple):
    """One of the paper's claims as a seed-paired comparison: the paper says arm > base."""
    text: str
    arm: str
    base: str
    metric: str


Rows = Sequence[Mapping[str, Any]]
Stat = tuple[float, float, int]


# --- formatting --------------------------------------------------------------------------------

def signed(x: float, digits: int = 3) -> str:
    """x with its sign ("+0.015", "-0.176")."""
    return f"{x:+.{digits}f}"


def diff_text(stat: Stat, digits: int = 3) -> str:
    """A paired difference in words: "+0.015 ± 0.020", "+0.015 (one seed)" or "no paired seed"."""
    return tables.fmt(stat, digits, signed=True, empty="no paired seed", single=" (one seed)")


def t_text(stat: Stat) -> str:
    """ "t = -1.1 over 3 seeds (critical 4.303)", or the number of seeds when t is undefined."""
    t, n = tables.t_value(stat), stat[2]
    if math.isnan(t):
        return f"{n} seed{'s' if n != 1 else ''}, no t"
    shown = f"{t:+.1f}" if math.isfinite(t) else ("+inf" if t > 0 else "-inf")
    return f"t = {shown} over {n} seeds (critical {tables.t_crit(n):g})"


def t_cell(stat: Stat) -> str:
    """t of a paired difference for a table cell ("+4.2"; "-" below 2 seeds)."""
    t = tables.t_value(stat)
    if math.isnan(t):
        return "-"
    return f"{t:+.1f}" if math.isfinite(t) else ("+inf" if t > 0 else "-inf")


def sign_counts(values: Mapping[int, float]) -> tuple[int, int, int]:
    """(positive, negative, zero) counts of per-seed differences."""
    v = list(values.values())
    return sum(x > 0 for x in v), sum(x < 0 for x in v), sum(x == 0 for x in v)


def agreement(values: Mapping[int, float], way: str = "point the paper's way",
              against: str = "against") -> str:
    """ "2 of 3 seeds point the paper's way (1 against)"; ties are counted separately."""
    pos, neg, zero = sign_counts(values)
    n = len(values)
    if not n:
        return "no seed to compare"
    extra = [f"{neg} {against}"] if neg else []
    extra += [f"{zero} tied"] if zero else []
    head = f"{pos} of {n} seed{'s' if n != 1 else ''} {way}"
    return head + (f" ({', '.join(extra)})" if extra else "")


def plural(k: int, word: str) -> str:
    """ "1 RL arm", "5 RL arms"."""
    return f"{k} {word}{'' if k == 1 else 's'}"


def arms_text(arms: Sequence[str]) -> str:
    """ "`a`", "`a` and `b`", "`a`, `b` and `c`"."""
    names = [f"`{a}`" for a in arms]
    if len(names) < 2:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per body row."""
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |",
            *("| " + " | ".join(r) + " |" for r in body)]


# --- arms -----------------------------------------------------------------------------------------

def trained_by(rows: Rows, arm: str) -> str:
    """How an arm trained, from its rows' step counts ("GRPO, 200 steps"; "SFT, 200 steps")."""
    steps = [r.get("steps") for r in rows if r["arm"] == arm]
    if not steps or any(not isinstance(s, Mapping) for s in steps):
        return "-"
    rl, sft = {int(s.get("rl", 0)) for s in steps}, {int(s.get("sft", 0)) for s in steps}
    if len(rl) == 1 and len(sft) == 1:
        (r,), (f,) = rl, sft
        return f"GRPO, {r} steps" if r > 0 else f"SFT, {f} steps"
    return "mixed step counts"

