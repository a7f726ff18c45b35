"""Held-out evaluation: greedy answers on unseen maps, per-task accuracy and reward with SEs.

    report = evaluate(model, config, sources, tokenizer, reward_fn, step=..., tag="final")
    write_report(report, workdir)     # eval/<tag>_step<N>.{json,md}

Questions come from their own split (`eval.split`, maps never seen in training) through the same
processing as training prompts, in large fixed-size batches (one sampler compilation: G = 1,
temperature 0). Accuracy is the RewardMap accuracy (the reward's `accuracy` component, i.e. the
official answer rules); `reward` is the total RewardMap reward. Standard errors: sqrt(p(1-p)/n)
for accuracy, std/sqrt(n) for reward. `majority` is the rate of the most common ground-truth
answer of a task in the evaluated questions (the chance level of a constant answer).

Every report keeps each question's accuracy and reward (`per_question`, keyed by uid), so two
evaluations of the same questions (warm start vs final) are compared *paired* (`compare`): the
standard error of the per-question difference, not of two independent samples. Most answers do
not change between the two models, so the paired SE is the right, and a much smaller, yardstick.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rewardmap_jax.data.curriculum import Schedule, Stage
from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.data.sources import MapWorldSource
from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.model.vision_layout import bucket_patches
from rewardmap_jax.rl import rollout as ro
from rewardmap_jax.rl import sampler, scoring
from rewardmap_jax.rl.placement import Placement
from rewardmap_jax.run import gallery

EVAL_SUBDIR = "eval"


def eval_sources(world: Any, split: str, per_task: int, tasks: Sequence[str]
                 ) -> dict[str, MapWorldSource]:
    """Map-world held-out sources, `per_task` questions of each task type."""
    return {t: MapWorldSource(world, split, t, per_task) for t in tasks}


def config_errors(config: Any, patch_size: int) -> list[str]:
    """Evaluation settings that cannot work, each naming its keys ([] when consistent): an eval
    batch whose images cannot fit the largest patch bucket even at `data.min_pixels` each."""
    ev, d = config.eval, config.data
    bs = int(ev.batch_size)
    if bs < 1:
        return [f"eval.batch_size ({bs}) must be >= 1"]
    least = -(-int(d.min_pixels) // (patch_size * patch_size))  # patch rows of one image, >=
    cap = max(int(x) for x in d.patch_buckets)
    if bs * least > cap:
        return [f"eval.batch_size ({bs}) x at least {least} patch rows per image "
                f"(data.min_pixels {d.min_pixels}) exceeds the largest data.patch_buckets "
                f"entry ({cap}); lower eval.batch_size"]
    return []


def _pipeline(config: Any, sources: Mapping[str, Any], batch_size: int) -> DataPipeline:
    # drop_remainder=False: the last partial batch is padded with `valid` = 0 copies, so every
    # question is evaluated exactly once whatever eval.batch_size (one sampler compilation).
    schedule = Schedule((Stage("eval", {t: 1.0 for t in sources}),))
    return DataPipeline.from_config(config, sources=dict(sources), schedule=schedule,
                                    batch_size=batch_size, repeat=False, seed=int(config.seed),
                                    shard_index=0, shard_count=1, drop_remainder=False)


def generate_answers(model: Any, config: Any, sources: Mapping[str, Any], tokenizer: Any,
                     max_questions: int = 0, place: Placement | None = None
                     ) -> tuple[list[Record], list[str]]:
    """Greedy completions for every question of `sources`, each exactly once (the padding
    copies of the last partial batch are dropped); the first `max_questions` when > 0.

    With `place` the sampler gets global arrays: every process reads the whole evaluation
    batch, samples its own rows (`place.rows`) and all completions are gathered to every
    process."""
    ev = config.eval
    cfg = model.cfg
    sp = sampler.params_from_config(config.rl, cfg, num_generations=1, temperature=0.0,
                                    max_new_tokens=int(ev.max_new_tokens))
    records: list[Record] = []
    texts: list[str] = []
    key = jax.random.key(0)
    it = _pipeline(config, sources, int(ev.batch_size)).iterator()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except ValueError as e:
            raise ValueError(f"held-out evaluation batch (eval.batch_size={ev.batch_size}): {e}; "
                             "or lower eval.batch_size") from e
        prompts = ro.prepare_prompts(
            batch, cfg, bucket_patches(ro.image_windows(batch, cfg), cfg.vision))
        n = len(batch["records"])
        if place is not None:
            prompts = ro.take_prompts(prompts, place.rows(n))
        tokens, lengths, _ = ro.local_outputs(ro.sample(model, prompts, sp, key, place, n),
                                              place, n)
        if place is not None:
            tokens, lengths = place.gather_rows((tokens, lengths), n)
        done = ro.decode_completions(tokenizer, tokens, lengths, sp.stop_ids)
        keep = np.flatnonzero(np.asarray(batch["valid"]))
        texts += [done[i] for i in keep]
        records += [batch["records"][i] for i in keep]
        if max_questions and len(records) >= max_questions:
            return records[:max_questions], texts[:max_questions]
    return records, texts


def gallery_items(records: Sequence[Record], texts: Sequence[str],
                  scores: Mapping[str, np.ndarray], sources: Mapping[str, Any],
                  tasks: Sequence[str], n: int) -> list[Any]:
    """About `n` gallery items (`rewardmap_jax.run.gallery`): the first questions of every task
    type, with their figures and reward components."""
    items = []
    for t in tasks:
        idx = [i for i, r in enumerate(records) if r.type == t][: max(1, n // len(tasks))]
        for i in idx:
            src = sources[t][int(records[i].uid.split("/")[2])]
            items.append(gallery.item_from_record(
                src, [texts[i]], [{k: float(v[i]) for k, v in scores.items()}]))
    return items


def _se_mean(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def summarize(records: Sequence[Record], texts: Sequence[str],
              scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per-task and overall accuracy / reward with standard errors, and the majority rate."""
    types = np.array([r.type for r in records])
    acc = np.asarray(scores["accuracy"], np.float64)
    rew = np.asarray(scores["overall"], np.float64)
    tasks: dict[str, Any] = {}
    for t in TASK_TYPES:
        sel = types == t
        n = int(sel.sum())
        if not n:
            continue
        p = float(acc[sel].mean())
        r_mean, r_se = _se_mean(rew[sel])
        answers = [r.answer for r, s in zip(records, sel, strict=True) if s]
        maj = (max(answers.count(a) for a in set(answers)) / n) if t != "planning" else None
        tasks[t] = {"n": n, "accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / n),
                    "reward": r_mean, "reward_se": r_se, "majority": maj,
                    "format_ok": float(np.mean(scores["format_ok"][sel]))
                    if "format_ok" in scores else None,
                    "per_question": {
                        "uid": [r.uid for r, s in zip(records, sel, strict=True) if s],
                        "accuracy": [float(x) for x in acc[sel]],
                        "reward": [round(float(x), 4) for x in rew[sel]]}}
    p = float(acc.mean())
    r_mean, r_se = _se_mean(rew)
    return {"n": len(records), "accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / len(acc)),
            "reward": r_mean, "reward_se": r_se, "tasks": tasks}


def evaluate(model: Any, config: Any, sources: Mapping[str, Any], tokenizer: Any,
             reward_fn: Any, *, step: int, tag: str, max_questions: int = 0,
             place: Placement | None = None
             ) -> tuple[dict[str, Any], list[Record], list[str], dict[str, np.ndarray]]:
    """Greedy evaluation; returns (report, records, completions, reward components). With
    `place`, each process samples and scores its rows; the report is the same everywhere."""
    t0 = time.perf_counter()
    records, texts = generate_answers(model, config, sources, tokenizer, max_questions, place)
    if place is None:
        scores = reward_fn(records, texts)
    else:
        rows = place.rows(len(records))
        scores = scoring.score(reward_fn, [records[i] for i in rows], [texts[i] for i in rows],
                               place, len(records), 1)
    report = summarize(records, texts, scores)
    report.update(step=int(step), tag=tag, seconds=time.perf_counter() - t0)
    report["samples"] = [{"uid": r.uid, "type": r.type, "completion": x,
                          "accuracy": float(scores["accuracy"][i]),
                          "reward": float(scores["overall"][i])}
                         for i, (r, x) in enumerate(zip(records, texts, strict=True))]
    return report, records, texts, scores


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-task change from report `before` to `after`, paired over the questions both scored.

    Returns {task: {"n", "accuracy_change", "accuracy_se", "accuracy_z", "reward_change",
    "reward_se", "reward_z", "flips_up", "flips_down"}}: SE = std(after_i - before_i, ddof=1) /
    sqrt(n) over the common uids (nan for n < 2; z = nan when the SE is 0 and nothing changed);
    `flips_up`/`flips_down` count questions that went from wrong to right / right to wrong.
    Tasks without `per_question` data (reports from older runs) fall back to independent SEs
    (`paired` False)."""
    out: dict[str, dict[str, Any]] = {}
    for t, y in after["tasks"].items():
        x = before["tasks"].get(t)
        if x is None:
            continue
        px, py = x.get("per_question"), y.get("per_question")
        row: dict[str, Any] = {}
        if px and py:
            ix = {u: i for i, u in enumerate(px["uid"])}
            pairs = [(ix[u], j) for j, u in enumerate(py["uid"]) if u in ix]
            a, b = (np.array([i for i, _ in pairs], int), np.array([j for _, j in pairs], int))
            row.update(paired=True, n=len(pairs))
            for k in ("accuracy", "reward"):
                d = np.asarray(py[k], np.float64)[b] - np.asarray(px[k], np.float64)[a]
                row[f"{k}_change"], row[f"{k}_se"] = _se_mean(d) if len(d) else (math.nan,) * 2
            acc_x = np.asarray(px["accuracy"])[a] > 0.5
            acc_y = np.asarray(py["accuracy"])[b] > 0.5
            row["flips_up"] = int((~acc_x & acc_y).sum())
            row["flips_down"] = int((acc_x & ~acc_y).sum())
        else:
            row.update(paired=False, n=min(x["n"], y["n"]))
            for k in ("accuracy", "reward"):
                row[f"{k}_change"] = y[k] - x[k]
                row[f"{k}_se"] = math.hypot(x[f"{k}_se"], y[f"{k}_se"])
        for k in ("accuracy", "reward"):
            ch, se = row[f"{k}_change"], row[f"{k}_se"]
            row[f"{k}_z"] = ch / se if se > 0 else (0.0 if ch == 0 else math.nan)
        out[t] = row
    return out


def eval_metrics(report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for the metrics writer (`eval/accuracy/<task>`, `eval/reward/<task>`, ...)."""
    m = {f"{prefix}/accuracy/mean": report["accuracy"], f"{prefix}/reward/mean": report["reward"]}
    for t, v in report["tasks"].items():
        m[f"{prefix}/accuracy/{t}"] = v["accuracy"]
        m[f"{prefix}/reward/{t}"] = v["reward"]
    return m


def markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table per report (and a comparison of the first and last when several)."""
    lines = []
    for rep in reports:
        lines += [f"### {rep['tag']} (step {rep['step']}, {rep['n']} questions)", "",
                  "| task | n | accuracy ± SE | majority | reward ± SE |",
                  "| --- | --- | --- | --- | --- |"]
        for t, v in rep["tasks"].items():
            maj = "-" if v["majority"] is None else f"{v['majority']:.3f}"
            lines.append(f"| {t} | {v['n']} | {v['accuracy']:.3f} ± {v['accuracy_se']:.3f} | "
                         f"{maj} | {v['reward']:.3f} ± {v['reward_se']:.3f} |")
        lines.append(f"| all | {rep['n']} | {rep['accuracy']:.3f} ± {rep['accuracy_se']:.3f} |"
                     f" - | {rep['reward']:.3f} ± {rep['reward_se']:.3f} |")
        lines.append("")
    if len(reports) >= 2:
        a, b = reports[0], reports[-1]
        lines += [f"### {b['tag']} vs {a['tag']} (paired over the same questions)", "",
                  "| task | n | accuracy change ± SE (z) | right->wrong / wrong->right |"
                  " reward change ± SE (z) |", "| --- | --- | --- | --- | --- |"]
        for t, c in compare(a, b).items():
            flips = f"{c['flips_down']} / {c['flips_up']}" if c["paired"] else "- (unpaired)"
            lines.append(
                f"| {t} | {c['n']} | {c['accuracy_change']:+.3f} ± {c['accuracy_se']:.3f} "
                f"({c['accuracy_z']:+.1f}) | {flips} | {c['reward_change']:+.3f} ± "
                f"{c['reward_se']:.3f} ({c['reward_z']:+.1f}) |")
        lines.append("")
    return "\n".join(lines)


def without_per_question(report: Mapping[str, Any]) -> dict[str, Any]:
    """`report` without its per-question arrays and samples (for summaries meant for people)."""
    out = {k: v for k, v in report.items() if k != "samples"}
    out["tasks"] = {t: {k: v for k, v in x.items() if k != "per_question"}
                    for t, x in report["tasks"].items()}
    return out


def write_report(reports: Sequence[Mapping[str, Any]], workdir: str | Path) -> Path:
    """Writes `eval/report.json` (all reports, samples of the last, the last one's paired
    change against the first) and `eval/report.md`."""
    out = Path(workdir) / EVAL_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "samples"} for r in reports[:-1]]
    slim.append(dict(reports[-1]))
    if len(reports) >= 2:
        slim[-1]["change_vs_first"] = {"first": reports[0]["tag"],
                                       "tasks": compare(reports[0], reports[-1])}
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(slim, indent=1, sort_keys=True))
    tmp.replace(out / "report.json")
    (out / "report.md").write_text("# Held-out evaluation\n\n" + markdown(reports))
    return out / "report.md"
