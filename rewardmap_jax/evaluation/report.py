"""The evaluation report: one JSON (summary + every question) and one Markdown page, laid out
like the papers' tables (ReasonMap accuracy and map score, short and long; ReasonMap-Plus
accuracy overall, Count / TorF and by type), every figure with its standard error.

    report = build_report(rows, tag="final", step=800, model={...}, data={...}, bad_rows=[...])
    write_report(report, out_dir)        # out_dir/<tag>.json, out_dir/<tag>.md
    report = load_report(path)

JSON layout (`FORMAT`):

    {"format", "tag", "step", "model": {...}, "data": {...}, "seconds",
     "scoring": {"answer_after", "weights", "modes"},
     "counts": {"questions", "scored", "bad_rows"}, "bad_rows": [{"where", "reason"}, ...],
     "summary": {figure: {"value", "se", "n"}},          # scoring.summarize
     "samples": [{"uid", "type", "template", "source", "weight", "acc", "map_score_<mode>",
                  "reward", "completion"}, ...]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardmap_jax.evaluation import scoring
from rewardmap_jax.mapworld.records import PLUS_TYPES
from rewardmap_jax.rewards import metrics

FORMAT = "rewardmap-eval/1"
MAX_BAD_LISTED = 50
WEIGHTS_NOTE = (
    "Weighted rows use this project's own difficulty weights: the papers report weighted "
    "figures but publish no weights, and the official ReasonMap code has `weight = 1  # TODO`. "
    "A question weighs map difficulty (easy/middle/hard {map}) x question difficulty "
    "(easy/medium/hard {question}, planning only)."
)
MODES_NOTE = (
    "Map score `official`: ReasonMap's published scoring (github.com/fscdc/ReasonMap main.py) "
    "rule for rule, its known bugs included; `corrected`: the same with those bugs fixed "
    "(docs/rewards.md lists both). Map-world questions are scored `corrected` only. Accuracy "
    "is the same under both."
)


def build_report(
    rows: Sequence[Mapping[str, Any]],
    *,
    tag: str,
    step: int | None = None,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    bad_rows: Sequence[Mapping[str, str]] = (),
    answer_after: str | None = None,
    weights: Mapping[str, Mapping[str, float]] = scoring.PROJECT_WEIGHTS,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The report dict of scored `rows` (`scoring.score_completions`)."""
    return {
        "format": FORMAT,
        "tag": tag,
        "step": step,
        "model": dict(model or {}),
        "data": dict(data or {}),
        "seconds": seconds,
        "scoring": {"answer_after": answer_after, "modes": list(metrics.MODES),
                    "weights": {k: dict(v) for k, v in weights.items()}},
        "counts": {"questions": len(rows) + len(bad_rows), "scored": len(rows),
                   "bad_rows": len(bad_rows)},
        "bad_rows": [dict(b) for b in bad_rows[:MAX_BAD_LISTED]],
        "summary": scoring.summarize(rows),
        "samples": [dict(r) for r in rows],
    }


def slim(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without its per-question rows (for logs and checkpoint metadata)."""
    return {k: v for k, v in report.items() if k != "samples"}


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation report {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} evaluation report (written by "
                         "rewardmap_jax.evaluate or the trainer)")
    return report


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Writes `<out_dir>/<tag>.json` and `<tag>.md` (each atomically); returns both paths."""
    out = Path(out_dir)
    js, md = out / f"{report['tag']}.json", out / f"{report['tag']}.md"
    _atomic_write(js, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    _atomic_write(md, markdown(report))
    return js, md


def eval_metrics(report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for the metrics writer: `<prefix>/<figure>` = value."""
    return {f"{prefix}/{k}": v["value"] for k, v in report["summary"].items()}


# ---------------------------------------------------------------------------------------------
# Markdown


def is_percent(name: str) -> bool:
    return "/acc" in name or name.startswith(("accuracy/", "majority/"))


def cell(summary: Mapping[str, Any], name: str) -> str:
    """"value ± SE" of one figure ("-" when absent); accuracies in percent."""
    fig = summary.get(name)
    if fig is None:
        return "-"
    scale = 100.0 if is_percent(name) else 1.0
    text = f"{scale * fig['value']:.2f}"
    if fig["se"] is not None:
        text += f" ± {scale * fig['se']:.2f}"
    return text


def _n(summary: Mapping[str, Any], name: str) -> str:
    return str(summary[name]["n"]) if name in summary else "0"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _reasonmap_table(s: Mapping[str, Any]) -> list[str]:
    kinds = ("short", "long")
    rows = [["questions", *[_n(s, f"reasonmap/acc_{k}") for k in kinds]],
            ["accuracy (%)", *[cell(s, f"reasonmap/acc_{k}") for k in kinds]]]
    for mode in metrics.MODES:
        if any(f"reasonmap/map_score_{k}/{mode}" in s for k in kinds):
            rows.append([f"map score, {mode} (max 20 / 40)",
                         *[cell(s, f"reasonmap/map_score_{k}/{mode}") for k in kinds]])
    w = scoring.WEIGHTED
    rows.append(["weighted accuracy (%), project weights",
                 *[cell(s, f"{w}reasonmap/acc_{k}") for k in kinds]])
    for mode in metrics.MODES:
        if any(f"{w}reasonmap/map_score_{k}/{mode}" in s for k in kinds):
            rows.append([f"weighted map score, {mode}, project weights",
                         *[cell(s, f"{w}reasonmap/map_score_{k}/{mode}") for k in kinds]])
    return _table(["ReasonMap (route planning)", "short", "long"], rows)


def _plus_table(s: Mapping[str, Any]) -> list[str]:
    cols = ["plus/acc", "plus/acc_count", "plus/acc_torf"] + [f"plus/acc_{t}" for t in PLUS_TYPES]
    rows = [["questions", *[_n(s, c) for c in cols]],
            ["accuracy (%)", *[cell(s, c) for c in cols]],
            ["weighted accuracy (%), project weights",
             *[cell(s, scoring.WEIGHTED + c) for c in cols]]]
    return _table(["ReasonMap-Plus (VQA)", "all", "Count", "TorF", *PLUS_TYPES], rows)


def _task_table(s: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    has_reward = "reward/mean" in s
    header = ["task", "questions", "accuracy (%)", "best constant answer (%)"] + (
        ["reward"] if has_reward else [])
    rows = []
    for t in [*tasks, "mean"]:
        row = ["all" if t == "mean" else t, _n(s, f"accuracy/{t}"), cell(s, f"accuracy/{t}"),
               cell(s, f"majority/{t}")]
        rows.append(row + ([cell(s, f"reward/{t}")] if has_reward else []))
    return _table(header, rows)


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown page (headline tables first, then notes)."""
    s, counts = report["summary"], report["counts"]
    head = f"# Evaluation: {report['tag']}"
    if report.get("step") is not None:
        head += f" (step {report['step']})"
    lines = [head, ""]
    for key in ("model", "data"):
        if report.get(key):
            desc = ", ".join(f"{k} `{v}`" for k, v in report[key].items())
            lines.append(f"- {key}: {desc}")
    lines.append(f"- questions: {counts['questions']} ({counts['scored']} scored, "
                 f"{counts['bad_rows']} bad rows)")
    if report.get("scoring", {}).get("answer_after"):
        lines.append(f"- scored after the last `{report['scoring']['answer_after']}`")
    if report.get("seconds") is not None:
        lines.append(f"- time: {report['seconds']:.1f} s")
    lines.append("")
    samples = report.get("samples") or []
    tasks = scoring.task_types(samples) if samples else [
        k.split("/", 1)[1] for k in s if k.startswith("accuracy/") and k != "accuracy/mean"]
    if "reasonmap/acc_short" in s or "reasonmap/acc_long" in s:
        lines += _reasonmap_table(s) + [""]
    if "plus/acc" in s:
        lines += _plus_table(s) + [""]
    lines += _task_table(s, tasks) + [""]
    lines.append("Values are mean ± standard error; accuracies in percent. " + MODES_NOTE)
    weights = report.get("scoring", {}).get("weights", scoring.PROJECT_WEIGHTS)
    lines += ["", WEIGHTS_NOTE.format(**{k: "/".join(f"{x:g}" for x in v.values())
                                         for k, v in weights.items()})]
    if report.get("bad_rows"):
        lines += ["", f"Bad rows ({counts['bad_rows']}, not scored):", ""]
        lines += [f"- {b['where']}: {b['reason']}" for b in report["bad_rows"]]
    return "\n".join(lines) + "\n"
