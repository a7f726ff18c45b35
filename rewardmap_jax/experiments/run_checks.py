"""Checks of the ablation's runs for the Discussion (`rewardmap_jax.experiments.discussion`).

Each check reads the metric rows (`rewardmap_jax.experiments.tables`) and returns its section's
markdown lines; none of them changes a claim's verdict:

* Plus-task retention: which arms lose ReasonMap-Plus accuracy relative to their own seed's warm
  start (`PlusLoss`, `plus_changes`, `plus_losses`, `retention_section`; rule `PLUS_LOSS`);
* collapsed runs: runs whose final planning accuracy falls below `COLLAPSE_FRACTION` of their
  warm start's, transient dips, and the claims recomputed without them as a labelled
  sensitivity note (`Collapse`, `collapsed_runs`, `without`, `collapse_section`);
* the question-level paired view (`tables.question_paired`), which treats the trained runs as
  fixed and is not the verdict (`question_check`, `question_section`).

Missing rows degrade to "not measured" sentences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rewardmap_jax.experiments import tables
from rewardmap_jax.experiments.prose import (
    PLANNING,
    WARM_START,
    Claim,
    Rows,
    Stat,
    arms_text,
    diff_text,
    md_table,
    plural,
    t_text,
    trained_by,
)

# A run "loses" a Plus task when its held-out accuracy is more than this far (absolute) below
# its own seed's warm start.
PLUS_LOSS = 0.05
# A run has "collapsed" when its final planning accuracy is below this fraction of its own
# seed's warm start's.
COLLAPSE_FRACTION = 0.5


# --- retention of the Plus tasks -----------------------------------------------------------------

class PlusLoss(NamedTuple):
    """An arm's seed-paired change on one Plus task relative to its warm start."""
    arm: str
    task: str
    stat: Stat
    runs_lost: int  # seeds whose own drop exceeds PLUS_LOSS
    worst_seed: int
    worst_from: float  # warm start's accuracy in the worst seed
    worst_to: float


def plus_changes(rows: Rows, arms: Sequence[str], threshold: float = PLUS_LOSS
                 ) -> list[PlusLoss]:
    """Every (arm, Plus task) change against the warm start, paired per seed (arms in order)."""
    groups = tables.by_arm(rows)
    if WARM_START not in groups:
        return []
    tasks = [n for n in tables.plus_metric_names(rows) if n.endswith("/accuracy")]
    out = []
    for arm in arms:
        if arm == WARM_START or arm not in groups:
            continue
        for name in tasks:
            per = tables.paired_values(rows, arm, WARM_START, name)
            if not per:
                continue
            worst = min(per, key=lambda s: (per[s], s))
            out.append(PlusLoss(
                arm, name.split("/")[0], tables.mean_se(list(per.values())),
                sum(d < -threshold for d in per.values()), worst,
                tables.metrics(groups[WARM_START][worst])[name],
                tables.metrics(groups[arm][worst])[name]))
    return out


def plus_losses(rows: Rows, arms: Sequence[str], threshold: float = PLUS_LOSS
                ) -> list[PlusLoss]:
    """The (arm, task) pairs whose seed-mean accuracy change is below -threshold."""
    return [c for c in plus_changes(rows, arms, threshold) if c.stat[0] < -threshold]


def retention_section(rows: Rows, arms: Sequence[str], threshold: float = PLUS_LOSS
                      ) -> list[str]:
    """Which arms lose Plus-task accuracy relative to their warm start."""
    out = ["### Retention of the ReasonMap-Plus tasks", ""]
    changes = plus_changes(rows, arms, threshold)
    if not changes:
        return out + ["Not measured: no warm-start rows or no Plus-task results.", ""]
    ns = [n for r in rows for t, n in r["final"].get("n", {}).items() if t != "planning"]
    rule = (f"Rule: a run loses a Plus task when its held-out accuracy is more than"
            f" {threshold:g} below its own seed's warm start; an arm loses it when the seed mean"
            f" of those paired differences is below −{threshold:g}.")
    if ns:
        se = 0.5 / math.sqrt(min(ns))
        rule += (f" ({threshold:g} is {threshold / se:.1f} binomial standard errors of one run's"
                 f" accuracy at p = 0.5 on its {min(ns)} questions per task: single-run drops"
                 " near the threshold can be noise.)")
    out += [rule, ""]
    losses = [c for c in changes if c.stat[0] < -threshold]
    by_arm: dict[str, list[PlusLoss]] = {}
    for c in losses:
        by_arm.setdefault(c.arm, []).append(c)
    for arm, items in by_arm.items():
        parts = [f"{c.task} {diff_text(c.stat)}, {c.runs_lost} of {plural(c.stat[2], 'run')}"
                 f" below the threshold (worst: seed {c.worst_seed}, {c.worst_from:.3f} →"
                 f" {c.worst_to:.3f})"
                 for c in sorted(items, key=lambda c: c.stat[0])]
        out.append(f"* `{arm}` ({trained_by(rows, arm)}) loses " + "; ".join(parts) + ".")
    kept = [a for a in dict.fromkeys(c.arm for c in changes) if a not in by_arm]
    if kept:
        single = {a: sum(c.runs_lost for c in changes if c.arm == a) for a in kept}
        out.append(f"* {arms_text(kept)} lose no Plus task by the arm rule (every seed-mean"
                   f" change above −{threshold:g})"
                   + ("; single runs below the threshold: "
                      + ", ".join(f"`{a}` {k}" for a, k in single.items() if k)
                      if any(single.values()) else "") + ".")
    if not losses:
        out.append("* No arm loses a Plus task by this rule.")
    return out + [""]


# --- collapsed runs ------------------------------------------------------------------------------

class Collapse(NamedTuple):
    """A run whose final planning accuracy is below COLLAPSE_FRACTION of its warm start's."""
    arm: str
    seed: int
    value: float
    warm: float


def collapsed_runs(rows: Rows, fraction: float = COLLAPSE_FRACTION) -> list[Collapse]:
    """Runs (arm, seed) with final planning accuracy < fraction x their seed's warm start's
    (only where that warm start's accuracy is above 0)."""
    groups = tables.by_arm(rows)
    warm = groups.get(WARM_START, {})
    out = []
    for arm, seeds in groups.items():
        if arm == WARM_START:
            continue
        for s, row in sorted(seeds.items()):
            w = tables.metrics(warm[s]).get(PLANNING, math.nan) if s in warm else math.nan
            v = tables.metrics(row).get(PLANNING, math.nan)
            if math.isfinite(w) and w > 0 and math.isfinite(v) and v < fraction * w:
                out.append(Collapse(arm, s, v, w))
    return out


def _curve_text(row: Mapping[str, Any]) -> str:
    pts = [(int(p["step"]), p["accuracy"]["planning"]) for p in row.get("curve", ())
           if "planning" in p.get("accuracy", {})]
    return ", ".join(f"{v:.3f} at step {s}" for s, v in pts)


def without(rows: Rows, runs: Sequence[Collapse]) -> list[Mapping[str, Any]]:
    """The rows less the given runs."""
    drop = {(c.arm, c.seed) for c in runs}
    return [r for r in rows if (r["arm"], int(r["seed"])) not in drop]


def collapse_section(rows: Rows, claims: Sequence[Claim],
                     fraction: float = COLLAPSE_FRACTION) -> list[str]:
    """Collapsed runs, transient dips, and the claims without the collapsed runs (sensitivity)."""
    out = ["### Collapsed runs", ""]
    groups = tables.by_arm(rows)
    if WARM_START not in groups:
        return out + ["Not measured: no warm-start rows to compare with.", ""]
    out += [f"Rule: a run has collapsed when its final held-out planning accuracy is below"
            f" {fraction:g} × its own seed's warm start's.", ""]
    found = collapsed_runs(rows, fraction)
    plus = [n for n in tables.plus_metric_names(rows) if n.endswith("/accuracy")]
    for c in found:
        row = groups[c.arm][c.seed]
        text = (f"* `{c.arm}` seed {c.seed} collapsed: planning accuracy {c.value:.3f} against"
                f" its warm start's {c.warm:.3f}")
        reward = tables.metrics(row).get("planning/reward", math.nan)
        text += f" (full planning reward {reward:.2f})" if math.isfinite(reward) else ""
        curve = _curve_text(row)
        text += f"; held-out curve {curve}" if curve else ""
        last = [p for p in row.get("train_curve", ()) if "accuracy/planning" in p]
        if last:
            p = last[-1]
            text += (f"; last logged on-policy planning accuracy {p['accuracy/planning']:.3f}"
                     + (f" (mean training reward {p['reward/mean']:.2f})" if "reward/mean" in p
                        else "") + f" at step {p['step']}")
        shifts = [abs(tables.metrics(row).get(n, math.nan)
                      - tables.metrics(groups[WARM_START][c.seed]).get(n, math.nan))
                  for n in plus]
        shifts = [x for x in shifts if math.isfinite(x)]
        if shifts:
            text += (f"; its Plus-task accuracies move by at most {max(shifts):.3f} from that"
                     " warm start's")
        same = [n.split("/")[0] for n in plus
                if tables.question_values(row, n) is not None
                and tables.question_values(row, n)
                == tables.question_values(groups[WARM_START][c.seed], n)]
        if same:
            text += (f", and on {plural(len(same), 'Plus task')} ({', '.join(same)}) it is right"
                     " on exactly the same questions as that warm start")
        out.append(text + ".")
    if not found:
        ratios = [(tables.metrics(r).get(PLANNING, math.nan)
                   / tables.metrics(groups[WARM_START][s]).get(PLANNING, math.nan), a, s)
                  for a, seeds in groups.items() if a != WARM_START
                  for s, r in seeds.items() if s in groups[WARM_START]
                  and tables.metrics(groups[WARM_START][s]).get(PLANNING, 0) > 0]
        ratios = [x for x in ratios if math.isfinite(x[0])]
        out.append("* No run meets the rule" + (
            f" (the lowest: `{min(ratios)[1]}` seed {min(ratios)[2]} at {min(ratios)[0]:.2f} ×"
            " its warm start)" if ratios else "") + ".")
    dips = []
    for arm, seeds in groups.items():
        if arm == WARM_START:
            continue
        for s, row in sorted(seeds.items()):
            if s not in groups[WARM_START] or (arm, s) in {(c.arm, c.seed) for c in found}:
                continue
            w = tables.metrics(groups[WARM_START][s]).get(PLANNING, math.nan)
            pts = [(int(p["step"]), p["accuracy"]["planning"]) for p in row.get("curve", ())[:-1]
                   if "planning" in p.get("accuracy", {})]
            low = [(st, v) for st, v in pts if math.isfinite(w) and w > 0 and v < fraction * w]
            if low:
                st, v = min(low, key=lambda x: (x[1], x[0]))
                dips.append(f"`{arm}` seed {s} ({v:.3f} at step {st}, final"
                            f" {tables.metrics(row).get(PLANNING, math.nan):.3f})")
    if dips:
        out.append("* Transient dips below the rule at an earlier curve point (the curve's"
                   " evaluations are smaller than the final one), recovered by the end: "
                   + ", ".join(dips) + ".")
    out.append("")
    if not found:
        return out
    rest = without(rows, found)
    touched = [c for c in claims
               if tables.paired(rest, c.arm, c.base, c.metric)[2]
               != tables.paired(rows, c.arm, c.base, c.metric)[2]]
    out += ["**Sensitivity note, not a replacement for the verdicts above**: the claims that"
            " involve a collapsed run, recomputed without the seeds that hold one. A run is"
            " left out here because of its outcome, which favours the arm that collapsed, and"
            " fewer seeds raise the critical t; a collapse is a result of the method at this"
            " scale as much as any other run.", ""]
    for c in touched:
        before = tables.paired(rows, c.arm, c.base, c.metric)
        after = tables.paired(rest, c.arm, c.base, c.metric)
        d = tables.digits(c.metric)
        out.append(f"* *{c.text}*: all runs {diff_text(before, d)}, {t_text(before)},"
                   f" {tables.classify(before)}; without collapsed runs {diff_text(after, d)},"
                   f" {t_text(after)}, {tables.classify(after)}.")
    if not touched:
        out.append("* No claim involves a collapsed run.")
    return out + [""]


# --- question-level paired view ------------------------------------------------------------------

def question_check(rows: Rows) -> str:
    """Whether all arms of a seed (and all seeds) were asked the same held-out questions."""
    tasks = sorted({t for r in rows for t in r["final"].get("per_question", {})})
    if not tasks:
        return "The rows keep no per-question results: the question-level view is not measured."
    differ_arms, differ_seeds, sizes = [], [], set()
    for task in tasks:
        sets = tables.question_sets(rows, task)
        for s, arms in sorted(sets.items()):
            if len(set(arms.values())) > 1:
                differ_arms.append(f"{task} seed {s}")
            sizes |= {len(v) for v in arms.values()}
        firsts = {next(iter(sorted(arms.items())))[1] for arms in sets.values() if arms}
        if len(firsts) > 1:
            differ_seeds.append(task)
    size = (f"{min(sizes)}" if len(sizes) == 1 else f"{min(sizes)}-{max(sizes)}") if sizes else "0"
    if differ_arms:
        text = ("The arms of a seed were not all asked the same held-out questions ("
                + ", ".join(differ_arms) + "): pairs use only the question uids both arms have;"
                " the rest are counted as left out below.")
    else:
        text = ("Checked from the rows: every arm of a seed was asked the same held-out"
                f" questions (the same uids, {size} per task), so every question pairs.")
    if differ_seeds:
        text += " The seeds' question sets differ for " + ", ".join(differ_seeds) + "."
    else:
        text += (" Every seed was asked the same questions too: the held-out set is fixed, so"
                 " the seeds vary the warm start and training, not the questions, and a"
                 " question recurs once per seed.")
    return text


def question_section(rows: Rows, claims: Sequence[Claim], arms: Sequence[str]) -> list[str]:
    """Per-question paired differences for the claims and for every arm against the warm start."""
    out = ["### Question-level paired view (not the verdict)", "", question_check(rows), ""]
    if not any(r["final"].get("per_question") for r in rows):
        return out
    out += [
           "Each comparison pairs the two arms' 0/1 answers question by question within a seed,"
           " pools the pairs over seeds (a question's differences in the seeds are averaged, as"
           " the same question recurs), and gives the mean ± SE over the questions. This treats"
           " the trained runs as fixed: it ignores the seed-to-seed variance (each seed's warm"
           " start and training differ), so its SE measures only the spread over questions and"
           " it is **not the verdict**; the seed-level t above stays the verdict. It shows how"
           " the difference between these particular runs is spread over the questions.", ""]
    comparisons = [(c.text, c.arm, c.base, c.metric) for c in claims]
    comparisons += [(f"`{a}` against the warm start", a, WARM_START, PLANNING) for a in arms
                    if a != WARM_START]
    body = []
    for text, arm, base, name in comparisons:
        q = tables.question_paired(rows, arm, base, name)
        cells = [text, f"`{arm}` − `{base}`", tables.label(name)]
        if q is None:
            reason = ("not stored per question" if "@" in name else "no paired seed")
            body.append(cells + [reason, "-", "-", "-", "-"])
            continue
        body.append(cells + [diff_text((q.mean, q.se, q.n_questions), tables.digits(name)),
                             f"{q.n_questions} × {q.n_seeds} = {q.n_pairs}"
                             + (f" ({q.unshared} unshared left out)" if q.unshared else ""),
                             str(q.only_arm), str(q.only_base),
                             f"{q.mean / q.se:+.1f}" if q.se > 0 else "-"])
    out += md_table(["comparison", "arms", "metric", "difference ± SE (questions)",
                      "questions × seeds = pairs", "only the arm right",
                      "only the baseline right", "difference / SE"], body)
    return out + [""]

