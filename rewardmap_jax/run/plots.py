"""Reward and accuracy curves by curriculum stage, from a run's `metrics.jsonl`, as one PNG.

    python -m rewardmap_jax.run.plots --workdir runs/tiny            # -> runs/tiny/plots/curves.png

Panels: the supervised warm start (`sft/loss`, `sft/answer_match`; only when logged), reward
(`reward/*` keys) and accuracy (`accuracy/*` keys). Raw values are drawn thin, a moving average
thick; held-out evaluations are black dots for the mean (`eval/reward/mean`,
`eval/accuracy/mean`) and diamonds in each task's colour for `eval/accuracy/<task>`.
Curriculum stages (the `stage` key, named by `stage_name` when logged) are shaded and labelled;
steps with non-finite metrics get a red tick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rewardmap_jax.run.metrics_writer import read_metrics

PLOTS_SUBDIR = "plots"
CURVES_FILE = "curves.png"
REWARD_PREFIX = "reward/"
ACCURACY_PREFIX = "accuracy/"
EVAL_PREFIX = "eval/"  # held-out evaluations: `eval/reward/mean`, `eval/accuracy/<task>`
SFT_KEYS = ("sft/loss", "sft/answer_match")
_STAGE_COLORS = ("#e8eef7", "#f6efe3", "#e9f3e6", "#f3e6ef", "#eeeeee", "#e6f2f3")


def stage_segments(records: Sequence[dict[str, Any]]) -> list[tuple[int, int, Any, str]]:
    """Runs of equal `stage` as (first step, last step, stage, label), in step order."""
    segments: list[tuple[int, int, Any, str]] = []
    for r in records:
        if "stage" not in r:
            continue
        stage, step = r["stage"], int(r["step"])
        label = str(r.get("stage_name", f"stage {stage}"))
        if segments and segments[-1][2] == stage:
            first, _, _, name = segments[-1]
            segments[-1] = (first, step, stage, name)
        else:
            segments.append((step, step, stage, label))
    return segments


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values at each point (NaN where none)."""
    finite = np.isfinite(y)
    vals = np.where(finite, y, 0.0).cumsum()
    counts = finite.cumsum()
    vals = np.concatenate([[0.0], vals])
    counts = np.concatenate([[0], counts])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    n = counts[idx] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (vals[idx] - vals[lo]) / np.maximum(n, 1), np.nan)


def _smooth_by_stage(
    x: np.ndarray, y: np.ndarray, segments: Sequence[tuple[int, int, Any, str]], window: int
) -> np.ndarray:
    """Moving average restarted at each stage boundary (stages differ in reward scale)."""
    if not segments:
        return moving_average(y, window)
    out = np.full_like(y, np.nan)
    starts = [first for first, *_ in segments] + [np.inf]
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        sel = (x >= lo) & (x < hi)
        out[sel] = moving_average(y[sel], window)
    before = x < starts[0]  # steps logged before the first `stage` record
    out[before] = moving_average(y[before], window)
    return out


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = np.asarray(pts, dtype=np.float64).T
    return x, np.where(np.isfinite(y), y, np.nan)


def _keys(records: Sequence[dict[str, Any]], prefix: str) -> list[str]:
    keys = {k for r in records for k in r if k.startswith(prefix)}
    # The mean first, then per-type curves in a stable order.
    return sorted(keys, key=lambda k: (not k.endswith("/mean"), k))


def plot_curves(
    records: Sequence[dict[str, Any]],
    out_path: str | Path,
    *,
    smooth: int | None = None,
    title: str | None = None,
) -> Path:
    """Writes the reward/accuracy PNG for `records` (as from `read_metrics`) to `out_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reward_keys = _keys(records, REWARD_PREFIX)
    acc_keys = _keys(records, ACCURACY_PREFIX)
    held_out_keys = [f"{EVAL_PREFIX}{p}mean" for p in (REWARD_PREFIX, ACCURACY_PREFIX)]
    if not reward_keys and not acc_keys and not any(k in r for r in records for k in held_out_keys):
        raise ValueError(
            f"no '{REWARD_PREFIX}*', '{ACCURACY_PREFIX}*' or held-out metrics in {len(records)} "
            "records; nothing to plot"
        )
    if smooth is None:
        smooth = max(1, len(records) // 40)
    sft_keys = [k for k in SFT_KEYS if any(k in r for r in records)]
    n = 3 if sft_keys else 2
    fig, axes = plt.subplots(n, 1, figsize=(11, 3.6 * n + 0.3), sharex=True,
                             constrained_layout=True, height_ratios=[0.6] * (n - 2) + [1, 1])
    if sft_keys:
        _plot_sft(axes[0], records, sft_keys, smooth)
    axes = axes[n - 2:]
    segments = stage_segments(records)
    bad_steps = [r["step"] for r in records if r.get("nonfinite")]
    # One colour per task across training curves and held-out markers.
    tasks = sorted(({k.split("/", 1)[1] for k in acc_keys} | {
        k[len(EVAL_PREFIX + ACCURACY_PREFIX):] for r in records for k in r
        if k.startswith(EVAL_PREFIX + ACCURACY_PREFIX)}) - {"mean"})
    task_color = dict(zip(tasks, plt.cm.tab10(np.arange(1, len(tasks) + 1) % 10), strict=True))
    task_color["mean"] = plt.cm.tab10(0)
    panels = ((axes[0], reward_keys, "reward"), (axes[1], acc_keys, "accuracy"))
    for ax, keys, ylabel in panels:
        for i, (first, last, _, label) in enumerate(segments):
            # Each stage spans to the start of the next, so the shading has no gaps.
            end = segments[i + 1][0] if i + 1 < len(segments) else last
            ax.axvspan(first, end, color=_STAGE_COLORS[i % len(_STAGE_COLORS)], zorder=0)
            if ax is axes[0]:
                ax.text(
                    (first + end) / 2,
                    1.01,
                    label,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=9,
                    clip_on=False,
                )
        held_out = _series(records, f"{EVAL_PREFIX}{ylabel}/mean")
        if len(held_out[0]):
            ax.plot(*held_out, "o--", color="black", markersize=5, linewidth=1, zorder=5,
                    label="held-out eval")  # fmt: skip
        if ylabel == "accuracy":
            for t in tasks:
                x, y = _series(records, f"{EVAL_PREFIX}{ACCURACY_PREFIX}{t}")
                if len(x):
                    ax.plot(x, y, "D", color=task_color[t], markersize=6, markeredgecolor="k",
                            zorder=6, label=f"held-out {t}" if f"accuracy/{t}" not in keys
                            else None)
        if keys:
            colors = (plt.cm.tab10(np.arange(len(keys)) % 10) if ylabel != "accuracy" else
                      [task_color.get(k.split("/", 1)[1], "gray") for k in keys])
            for key, color in zip(keys, colors, strict=True):
                x, y = _series(records, key)
                if not len(x):
                    continue
                ax.plot(x, y, color=color, alpha=0.3, linewidth=0.8)
                ax.plot(
                    x,
                    _smooth_by_stage(x, y, segments, smooth),
                    color=color,
                    linewidth=2.0,
                    label=key[len(ylabel) + 1 :],
                )
            ax.legend(loc="upper left", fontsize=8, ncol=min(5, len(keys) + 1), framealpha=0.8)
        else:
            ax.text(
                0.5,
                0.5,
                f"no {ylabel} metrics logged",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="gray",
            )
        for s in bad_steps:
            ax.axvline(s, ymax=0.04, color="red", linewidth=1.5)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if acc_keys:
        axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("step")
    steps = [r["step"] for r in records]
    axes[1].set_xlim(min(steps) - 0.5, max(steps) + 0.5)
    suffix = f" (moving average over {smooth} steps)" if smooth > 1 else ""
    fig.suptitle((title or "RewardMap training") + suffix, fontsize=11)
    if bad_steps:
        axes[1].text(
            1.0,
            -0.12,
            f"red ticks: steps with non-finite metrics ({len(bad_steps)})",
            transform=axes[1].transAxes,
            ha="right",
            color="red",
            fontsize=8,
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _plot_sft(ax: Any, records: Sequence[dict[str, Any]], keys: Sequence[str], smooth: int
              ) -> None:
    """The warm-start panel: SFT loss (left axis) and answer match (right axis, 0..1)."""
    twin = None
    for i, key in enumerate(keys):
        x, y = _series(records, key)
        target = ax if key.endswith("loss") else (twin or ax.twinx())
        if target is not ax:
            twin = target
            target.set_ylim(-0.02, 1.02)
            target.set_ylabel(key.split("/", 1)[1])
        color = f"C{i + 3}"
        target.plot(x, y, color=color, alpha=0.3, linewidth=0.8)
        target.plot(x, moving_average(y, smooth), color=color, linewidth=2.0, label=key)
    ax.set_ylabel("SFT loss")
    ax.set_title("supervised warm start", fontsize=9, loc="left")
    handles = [h for a in (ax, twin) if a is not None for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def plot_run(workdir: str | Path, out: str | Path | None = None, smooth: int | None = None) -> Path:
    """Plots `<workdir>/metrics.jsonl` to `out` (default `<workdir>/plots/curves.png`)."""
    workdir = Path(workdir)
    records = read_metrics(workdir)
    out = Path(out) if out else workdir / PLOTS_SUBDIR / CURVES_FILE
    return plot_curves(records, out, smooth=smooth, title=f"{workdir.name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewardmap_jax.run.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="run directory with metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/plots/curves.png)")
    parser.add_argument("--smooth", type=int, default=None, help="moving-average window (steps)")
    args = parser.parse_args(argv)
    if args.smooth is not None and args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        path = plot_run(args.workdir, args.out, args.smooth)
    except (FileNotFoundError, ValueError) as e:
        print(f"plots: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
