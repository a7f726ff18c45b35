"""The "Discussion" of docs/reproduction.md, written from the ablation's metric rows.

`discussion(rows, claims, arms, quick)` returns the section's markdown lines. Every figure in it
is computed here from the rows (`rewardmap_jax.experiments.tables`); only the connecting words
and the rules below are fixed, and the wording follows the numbers (a claim whose seed-paired t
reaches the critical value is listed under "hold", and so on). It says, in turn:

* which of the paper's claims (arXiv 2510.02240; `CLAIMS`) hold, are reversed or are not
* which of the paper's claims (arXiv 2510.02240; `CLAIMS`) hold, are reversed or are not
  resolved at this scale, with each seed-paired difference and how many seeds agree in sign;
* whether RL improved planning over the warm start, and RL against the supervised control;
* which arms lose ReasonMap-Plus accuracy relative to their warm start, which runs collapsed,
  with the claims recomputed without them as a labelled sensitivity note, and a question-level
  paired view that is not the verdict (all three in `rewardmap_jax.experiments.run_checks`);
* the study's caveats (scale, the sparse baseline, the short templates, provenance).

The words and markdown helpers, the `Claim` type and the arm names are in
`rewardmap_jax.experiments.prose`. Missing rows degrade to "not measured" sentences; nothing
here raises on a partial study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rewardmap_jax.experiments import tables
from rewardmap_jax.experiments.prose import (
    PLANNING,
    SFT_ARM,
    WARM_START,
    Claim,
    Rows,
    Stat,
    agreement,
    arms_text,
    diff_text,
    md_table,
    plural,
    t_cell,
    t_text,
    trained_by,
)
from rewardmap_jax.experiments.run_checks import (
    collapse_section,
    question_section,
    retention_section,
)

CLAIMS: tuple[Claim, ...] = (
    Claim("Perception (ReasonMap-Plus) tasks help route planning", "plus_tasks", "sparse_rl",
          PLANNING),
    Claim("The detail reward helps planning over correctness alone", "detail", "plus_tasks",
          PLANNING),
    Claim("The difficulty-aware weight adds to the detail reward", "difficulty", "detail",
          PLANNING),
    Claim("The perception-to-planning curriculum adds to the reward", "rewardmap", "difficulty",
          PLANNING),
    Claim("The full RewardMap beats the sparse RL baseline", "rewardmap", "sparse_rl", PLANNING),
    Claim("The full RewardMap beats the sparse RL baseline on 1-transfer questions", "rewardmap",
          "sparse_rl", "planning/accuracy@transfers=1"),
    Claim("The full RewardMap improves the Plus tasks over the sparse baseline (TorF1)",
          "rewardmap", "sparse_rl", "TorF1/accuracy"),
    Claim("RL beats supervised training on the same data and steps", "rewardmap", SFT_ARM,
          PLANNING),
)


# --- the claims ----------------------------------------------------------------------------------

def claim_result(rows: Rows, claim: Claim) -> tuple[str, Stat, dict[int, float]]:
    """(kind, seed-paired stat, per-seed differences) of a claim; kind as `tables.classify`."""
    stat = tables.paired(rows, claim.arm, claim.base, claim.metric)
    return tables.classify(stat), stat, tables.paired_values(rows, claim.arm, claim.base,
                                                             claim.metric)


def claim_sentence(rows: Rows, claim: Claim) -> str:
    """One claim's measured difference, t, and seed agreement, in words."""
    kind, stat, per_seed = claim_result(rows, claim)
    d = tables.digits(claim.metric)
    head = (f"*{claim.text}* (`{claim.arm}` − `{claim.base}`, "
            f"{tables.label(claim.metric)}): ")
    if not stat[2]:
        return head + "not measured (no seed ran both arms with this metric)."
    text = head + f"{diff_text(stat, d)}, {t_text(stat)}; {agreement(per_seed)}"
    if kind == "unresolved":
        lean = ("leans the paper's way" if stat[0] > 0 else
                "leans against the paper" if stat[0] < 0 else "no lean")
        text += f"; {lean} in the seed mean"
    return text + "."


def claims_section(rows: Rows, claims: Sequence[Claim]) -> list[str]:
    """The claims grouped into hold / reversed / not resolved / not measured."""
    groups: dict[str, list[str]] = {"holds": [], "reversed": [], "unresolved": [],
                                    "not measured": []}
    leans = [0, 0]
    for claim in claims:
        kind, stat, _ = claim_result(rows, claim)
        groups[kind].append(claim_sentence(rows, claim))
        if kind == "unresolved":
            leans[0] += stat[0] > 0
            leans[1] += stat[0] < 0
    out = ["### Which of the paper's claims hold at this scale", "",
           "Verdicts as in the claims table: the seed-paired difference arm − baseline, t ="
           " difference / SE against the two-sided 95% critical value of Student's t. Of the"
           f" {len(claims)} claims, {len(groups['holds'])} hold, {len(groups['reversed'])} are"
           f" reversed, {len(groups['unresolved'])} are not resolved and"
           f" {len(groups['not measured'])} are not measured"
           + (f"; of the unresolved, {leans[0]} lean the paper's way in the seed mean and"
              f" {leans[1]} against it" if groups["unresolved"] else "") + ".", ""]
    titles = (("holds", "Hold"), ("reversed", "Reversed"), ("unresolved", "Not resolved"),
              ("not measured", "Not measured"))
    for kind, title in titles:
        if kind == "not measured" and not groups[kind]:
            continue
        if not groups[kind]:
            out += [f"**{title}** (0): none.", ""]
            continue
        out += [f"**{title}** ({len(groups[kind])}):", "",
                *(f"* {s}" for s in groups[kind]), ""]
    return out


# --- RL, supervised training, the warm start -----------------------------------------------------

def rl_arms(rows: Rows, arms: Sequence[str], sft_arm: str = SFT_ARM) -> list[str]:
    """Arms (in `arms` order, present in the rows) trained with RL: rows with `steps.rl` > 0, or
    without step counts, every arm but the warm start and the supervised control."""
    groups = tables.by_arm(rows)
    out = []
    for arm in arms:
        if arm == WARM_START or arm not in groups:
            continue
        steps = [r.get("steps") for r in groups[arm].values()]
        if all(isinstance(s, Mapping) for s in steps):
            if all(int(s.get("rl", 0)) > 0 for s in steps):
                out.append(arm)
        elif arm != sft_arm:
            out.append(arm)
    return out


def _stat_text(rows: Rows, arm: str, name: str) -> str:
    return tables.fmt(tables.arm_stats(rows, name).get(arm, (math.nan, math.nan, 0)),
                      tables.digits(name))


def rl_section(rows: Rows, arms: Sequence[str], sft_arm: str = SFT_ARM) -> list[str]:
    """RL arms against their warm start and against the supervised control."""
    groups = tables.by_arm(rows)
    out = ["### RL, supervised training and the warm start", ""]
    if WARM_START not in groups:
        out.append("No warm-start rows: the changes against the warm start are not measured.")
    else:
        out.append(
            f"Warm start: planning accuracy {_stat_text(rows, WARM_START, PLANNING)} (0"
            f" transfers {_stat_text(rows, WARM_START, 'planning/accuracy@transfers=0')}, 1"
            f" transfer {_stat_text(rows, WARM_START, 'planning/accuracy@transfers=1')}),"
            f" reward {_stat_text(rows, WARM_START, 'planning/reward')}. Every arm of a seed"
            " starts from that seed's warm start; below, each arm's planning accuracy minus its"
            " own seed's warm start's, and minus the supervised control's of the same seed"
            " (t's critical values as in the claims table).")
    out.append("")
    body = []
    others = [a for a in arms if a != WARM_START and a in groups]
    for arm in others:
        vs_warm = tables.paired(rows, arm, WARM_START, PLANNING)
        warm_seeds = tables.paired_values(rows, arm, WARM_START, PLANNING)
        cells = [f"`{arm}`", trained_by(rows, arm), diff_text(vs_warm),
                 t_cell(vs_warm), agreement(warm_seeds, "up", "down")]
        if arm != sft_arm and sft_arm in groups:
            vs_sft = tables.paired(rows, arm, sft_arm, PLANNING)
            cells += [diff_text(vs_sft), t_cell(vs_sft),
                      agreement(tables.paired_values(rows, arm, sft_arm, PLANNING), "above",
                                "below")]
        else:
            cells += ["-", "-", "-"]
        body.append(cells)
    out += md_table(["arm", "trained by", "− warm start", "t", "seeds",
                      f"− `{sft_arm}`", "t", "seeds"], body)
    out.append("")
    rl = rl_arms(rows, arms, sft_arm)
    if not rl:
        return out + ["No RL arm has rows yet: RL is not measured.", ""]
    out += _rl_vs_warm(rows, rl, sft_arm) if WARM_START in groups else []
    return out + _rl_vs_sft(rows, rl, sft_arm)


def _rl_vs_warm(rows: Rows, rl: Sequence[str], sft_arm: str) -> list[str]:
    """Did any RL arm improve planning over its warm start (seed-paired)?"""
    groups = tables.by_arm(rows)
    stats = {a: tables.paired(rows, a, WARM_START, PLANNING) for a in rl}
    up = [a for a in rl if stats[a][2] and stats[a][0] > 0]
    down = [a for a in rl if stats[a][2] and stats[a][0] < 0]
    gained = [a for a in rl if tables.classify(stats[a]) == "holds"]
    lost = [a for a in rl if tables.classify(stats[a]) == "reversed"]
    text = (f"* Did RL improve planning over the warm start? Of the {plural(len(rl), 'RL arm')},"
            f" {len(up)} end{'s' if len(up) == 1 else ''} above the warm start in the seed mean"
            + (f" ({arms_text(up)})" if up else "") + f" and {len(down)} below"
            + (f" ({arms_text(down)})" if down else "") + "; ")
    if gained:
        text += f"resolved gains: {arms_text(gained)}"
    else:
        text += "no RL arm's gain is resolved"
    text += f"; resolved losses: {arms_text(lost)}" if lost else ""
    best = max((a for a in rl if stats[a][2]), key=lambda a: stats[a][0], default=None)
    if best is not None:
        seeds = tables.paired_values(rows, best, WARM_START, PLANNING)
        text += (f". The largest mean RL change is `{best}`'s, {diff_text(stats[best])},"
                 f" {t_text(stats[best])}; {agreement(seeds, 'up', 'down')}")
    if sft_arm in groups:
        sft = tables.paired(rows, sft_arm, WARM_START, PLANNING)
        seeds = tables.paired_values(rows, sft_arm, WARM_START, PLANNING)
        text += (f". The supervised control `{sft_arm}` changes it by {diff_text(sft)},"
                 f" {t_text(sft)}; {agreement(seeds, 'up', 'down')}")
    return [text + ".", ""]


def _rl_vs_sft(rows: Rows, rl: Sequence[str], sft_arm: str) -> list[str]:
    """RL arms against the supervised control of the same seed."""
    if sft_arm not in tables.by_arm(rows):
        return [f"* RL against supervised training: not measured (no `{sft_arm}` rows).", ""]
    vs = {a: tables.paired(rows, a, sft_arm, PLANNING) for a in rl}
    below = [a for a in rl if vs[a][2] and vs[a][0] < 0]
    res_below = [a for a in rl if tables.classify(vs[a]) == "reversed"]
    res_above = [a for a in rl if tables.classify(vs[a]) == "holds"]
    text = (f"* RL against supervised training (`{sft_arm}`: the same number of steps of SFT on"
            " the mixed arms' prompt mixture): "
            f"{len(below)} of {len(rl)} RL arms are below it in the seed mean"
            + (f" ({arms_text(below)})" if below else "") + "; resolved below: "
            + (arms_text(res_below) if res_below else "none") + "; resolved above: "
            + (arms_text(res_above) if res_above else "none") + ".")
    if "rewardmap" in vs and vs["rewardmap"][2]:
        text += (f" The full RewardMap, which sees the same prompt mixture, differs by"
                 f" {diff_text(vs['rewardmap'])}, {t_text(vs['rewardmap'])}; "
                 + agreement(tables.paired_values(rows, "rewardmap", sft_arm, PLANNING),
                             "favour RL", "favour SFT") + ".")
    if "sparse_rl" in vs and vs["sparse_rl"][2]:
        text += (" `sparse_rl` trains on planning prompts only, so against the control it is"
                 f" the same number of steps but not the same data: {diff_text(vs['sparse_rl'])},"
                 f" {t_text(vs['sparse_rl'])}.")
    return [text, ""]


# --- caveats -------------------------------------------------------------------------------------

def caveats(rows: Rows) -> list[str]:
    """The study's standing caveats, with the step counts and provenance read from the rows."""
    rl = sorted({int(r["steps"]["rl"]) for r in rows if isinstance(r.get("steps"), Mapping)
                 and int(r["steps"].get("rl", 0)) > 0})
    warm = sorted({int(r["steps"]["sft"]) for r in rows if r["arm"] == WARM_START
                   and isinstance(r.get("steps"), Mapping)})
    worlds = sorted({str(r["world"]) for r in rows if "world" in r})
    steps = ""
    if rl:
        steps = (f" Each RL arm here ran {', '.join(map(str, rl))} GRPO steps"
                 + (f" after {', '.join(map(str, warm))} warm-start SFT steps" if warm else "")
                 + ", far fewer rollouts per question type than the paper's training.")
    world = f"the `{', '.join(worlds)}` map world's" if worlds else "the map world's"
    out = ["### Caveats", "",
           "* Scale: the tiny Qwen2.5-VL of docs/training.md, trained from scratch on"
           f" {world} small procedural maps (docs/mapworld.md) with the question's stations"
           " marked, not Qwen2.5-VL-7B on real maps." + steps + " Claims that hold here hold"
           " for this toy; claims that do not resolve may still hold at the paper's scale.",
           "* The sparse baseline here is the paper's *RL (baseline)* row (correctness only,"
           " weight 1); the paper's official code keeps the detail reward in its own `baseline`"
           " mode (`reward.baseline_keeps_detail`), which would be our `detail` arm.",
           "* The long answer templates are not asked (`route` world: short template only):"
           " under the official arrival rule a long-template answer can never be judged correct"
           " (docs/rewards.md), so asking them would only add questions no policy can get"
           " right.",
           "* The arms trained with the detail reward use it as the official code computes it:"
           " every plan's last section pays the -5 extra-section penalty, so a well-formed plan"
           " on the wrong line scores below an unparseable answer and a one-section answer to a"
           " 1-transfer question above a wrong two-section plan (docs/rewards.md, \"Planning"
           " traps\"). A policy that cannot yet find the line is pushed to break the format;"
           " the route probes of docs/planning.md measure this from one warm start."]
    if "route" in worlds:
        out.append("* On the `route` world a transfer station's name (a letter drawn at random"
                   " per map) has to be read off the map, which the tiny model does not learn:"
                   " 1-transfer questions are out of reach for every arm, and the detail"
                   " reward's credit on them can reward only a plan's shape. The `route_grid`"
                   " world names stations after their cells; docs/planning.md compares the"
                   " rewards there, over 3 seeds each.")
    by_seed: dict[int, set[str]] = {}
    for r in rows:
        by_seed.setdefault(int(r["seed"]), set()).add(str(r.get("commit", "unknown")))
    if len(by_seed) > 1 and len({frozenset(c) for c in by_seed.values()}) > 1:
        out.append("* Provenance: the seeds ran at different commits ("
                   + "; ".join(f"seed {s}: " + ", ".join(f"`{c[:12]}`" for c in sorted(cs))
                               for s, cs in sorted(by_seed.items()))
                   + "), so the seed-to-seed spread also includes the code changes between"
                   " those commits; arms within a seed share one.")
    dirty = sorted({s for s, cs in by_seed.items() if any(c.endswith("+dirty") for c in cs)})
    if dirty:
        out.append("* Runs of seed" + ("s " if len(dirty) > 1 else " ")
                   + ", ".join(map(str, dirty)) + " were made from a working tree with"
                   " uncommitted changes (`+dirty`): their exact code is not recoverable from"
                   " the commit alone.")
    return out + [""]


def chance_section(rows: Rows, arms: Sequence[str], chance: Mapping[str, float]) -> list[str]:
    """Planning accuracy against its chance level (`chance`: metric -> the best constant
    answer's accuracy on the same questions, `collect.chance_levels`), seed by seed."""
    names = [n for n in (PLANNING, f"{PLANNING}@transfers=0", f"{PLANNING}@transfers=1")
             if n in chance]
    if not names:
        return []
    groups = tables.by_arm(rows)
    out = ["### Against chance", "",
           "The chance level is what the best constant answer scores on the same questions"
           " (planning: the question's endpoints in one section, always on the line that"
           " answers most of them). An accuracy at chance says nothing about reading the map:"
           " the route probes of docs/planning.md from a 1,200-step warm start ended exactly"
           " there, every plan naming one line.", ""]
    for name in names:
        vals = {a: [tables.metrics(r).get(name, math.nan) for r in groups[a].values()]
                for a in arms if a in groups}
        above = [a for a, v in vals.items() if all(x > chance[name] for x in v)]
        rest = [f"`{a}` ({sum(x > chance[name] for x in v)} of {len(v)})"
                for a, v in vals.items() if a not in above]
        out.append(f"* {tables.label(name)}: chance {chance[name]:.3f}; every seed above it:"
                   f" {', '.join(f'`{a}`' for a in above) or 'no arm'}"
                   + (f"; seeds above it: {', '.join(rest)}" if rest else "") + ".")
    return out + [""]


def discussion(rows: Rows, claims: Sequence[Claim] = CLAIMS,
               arms: Sequence[str] = (), quick: Rows = (),
               chance: Mapping[str, float] | None = None) -> list[str]:
    """The page's Discussion section from the full study's rows (`quick`: the pipeline check's,
    only mentioned). `arms` orders the arms (the warm start first); by default the rows' order.
    `chance`: the questions' chance levels (`chance_section`), when known."""
    arms = list(arms) or list(tables.by_arm(rows))
    out = ["## Discussion", ""]
    if not rows:  # the quick check's rows are not the study: no step counts from them
        return out + [
            "Nothing is measured yet: the full study has no rows, so none of the paper's"
            f" {len(claims)} claims, RL against the warm start or the supervised control, the"
            " retention of the Plus tasks, collapsed runs or the question-level view can be"
            " discussed."
            + (f" The pipeline check's {len(quick)} runs (`--scale quick`) measure nothing and"
               " are not discussed." if quick else ""), "", *caveats(())]
    return out + [
        "Every figure below is computed from experiments/results/ablation.jsonl when this page"
        " is generated.", "",
        *claims_section(rows, claims), *rl_section(rows, arms),
        *chance_section(rows, arms, chance or {}), *retention_section(rows, arms),
        *collapse_section(rows, claims), *question_section(rows, claims, arms), *caveats(rows)]
