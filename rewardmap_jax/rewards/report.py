"""Evaluation report writers: JSON and a Markdown table (of `evaluate_completions` output)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

_PERCENT_PREFIXES = ("reasonmap/acc", "reasonmap/weighted_acc", "plus/")


def _fmt(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int | float) and name.startswith(_PERCENT_PREFIXES):
        return f"{100.0 * float(value):.2f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(report: Mapping[str, Any], title: str | None = None) -> str:
    """A two-column Markdown table (metric | value, with n) of a report's summary."""
    summary = report["summary"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value | n |", "| --- | --- | --- |"]
    for name in sorted(k for k in summary if not k.startswith("count/") and k != "weights"):
        n = summary.get(f"count/{name}")
        if n is None:
            head, _, tail = name.partition("/")
            n = summary.get(f"count/{head}/{tail.replace('weighted_', '', 1)}")
        lines.append(f"| {name} | {_fmt(name, summary[name])} | {n if n is not None else 0} |")
    weights = summary.get("weights")
    if weights:
        lines += ["", f"Difficulty weights: `{json.dumps(weights, sort_keys=True)}`"]
    return "\n".join(lines) + "\n"


def write_json(report: Mapping[str, Any], path: str) -> str:
    """Writes the full report (summary and per-sample rows) as JSON; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def write_markdown(report: Mapping[str, Any], path: str, title: str | None = None) -> str:
    """Writes `markdown_table(report)` to `path`; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown_table(report, title))
    return path
