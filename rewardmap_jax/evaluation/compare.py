"""Paired differences between two evaluation reports of the same questions.

    python -m rewardmap_jax.evaluate compare runs/a/eval/final.json runs/b/eval/final.json

For every figure both reports have (`scoring.sample_figures`), over the questions both scored
(matched by uid): the change B - A, its paired standard error std(d_i, ddof=1) / sqrt(n) (the
weighted formula of `scoring.weighted_mean_se` for `weighted/` figures, with A's weights), z =
change / SE, and for accuracies the questions that went wrong -> right and right -> wrong. Most
answers do not change between two checkpoints, so the paired SE is much smaller than that of
two independent samples, and the right yardstick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from rewardmap_jax.evaluation import report as R
from rewardmap_jax.evaluation import scoring


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{figure: {"n", "a", "b", "change", "se", "z", "up", "down"}} (up/down: 0/1 figures)."""
    ga, gb = scoring.group_rows(a["samples"]), scoring.group_rows(b["samples"])
    out: dict[str, dict[str, Any]] = {}
    for name, (uids_b, vals_b, _) in gb.items():
        if name not in ga:
            continue
        uids_a, vals_a, ws_a = ga[name]
        index = {u: i for i, u in enumerate(uids_a)}
        pairs = [(index[u], j) for j, u in enumerate(uids_b) if u in index]
        if not pairs:
            continue
        ia = np.array([i for i, _ in pairs])
        jb = np.array([j for _, j in pairs])
        xa, xb = np.asarray(vals_a)[ia], np.asarray(vals_b)[jb]
        variants = [(name, None)]
        if name.startswith(("reasonmap/", "plus/")):
            variants.append((scoring.WEIGHTED + name, np.asarray(ws_a)[ia]))
        for key, w in variants:
            change, se = scoring.weighted_mean_se(xb - xa, w)
            z = change / se if se else (0.0 if change == 0 else math.nan)
            row = {"n": len(pairs), "a": scoring.weighted_mean_se(xa, w)[0],
                   "b": scoring.weighted_mean_se(xb, w)[0], "change": change, "se": se, "z": z}
            if R.is_percent(name) and np.isin(xa, (0, 1)).all() and np.isin(xb, (0, 1)).all():
                row["up"] = int(((xa == 0) & (xb == 1)).sum())
                row["down"] = int(((xa == 1) & (xb == 0)).sum())
            out[key] = row
    return dict(sorted(out.items(), key=lambda kv: scoring.sort_key(kv[0])))


def markdown(a: Mapping[str, Any], b: Mapping[str, Any],
             diff: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A Markdown table of `compare(a, b)`."""
    diff = compare(a, b) if diff is None else diff
    lines = [f"# {b['tag']} vs {a['tag']} (paired over the questions both scored)", "",
             "| figure | n | A | B | change ± SE | z | wrong->right / right->wrong |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in diff.items():
        k = 100.0 if R.is_percent(name) else 1.0
        se = "-" if d["se"] is None else f"{k * d['se']:.2f}"
        flips = f"{d['up']} / {d['down']}" if "up" in d else "-"
        lines.append(f"| {name} | {d['n']} | {k * d['a']:.2f} | {k * d['b']:.2f} | "
                     f"{k * d['change']:+.2f} ± {se} | {d['z']:+.1f} | {flips} |")
    lines += ["", "Accuracies in percentage points. SE: paired, std(B_i - A_i) / sqrt(n)."]
    return "\n".join(lines) + "\n"
