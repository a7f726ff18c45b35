"""Generate -> score -> report, for the CLI and for the trainer.

    report = evaluate(model, data, config, tag="final", out_dir=workdir / "eval", ...)
    report = score_and_report(data, completions, tag=..., out_dir=...)   # completions given
    ev = TrainingEvaluator(config, workdir); ev.run(model, reward_fn, step=..., tag=..., ...)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from rewardmap_jax.evaluation import compare as C
from rewardmap_jax.evaluation import data as D
from rewardmap_jax.evaluation import gallery as G
from rewardmap_jax.evaluation import generate as gen
from rewardmap_jax.evaluation import report as R
from rewardmap_jax.evaluation import scoring
from rewardmap_jax.mapworld.records import TASK_TYPES

log = logging.getLogger(__name__)
EVAL_SUBDIR = "eval"
SUMMARY = "summary"
HEADLINE = ("accuracy/mean", "reasonmap/acc_short", "reasonmap/acc_long",
            "reasonmap/map_score_short/official", "reasonmap/map_score_long/official",
            "reasonmap/map_score_short/corrected", "reasonmap/map_score_long/corrected",
            "plus/acc", "plus/acc_count", "plus/acc_torf", "reward/mean")


def score_and_report(data: D.EvalData, completions: Mapping[str, str], *, tag: str,
                     out_dir: str | Path | None, step: int | None = None,
                     model_info: Mapping[str, Any] | None = None,
                     reward_fn: Callable | None = None, answer_after: str | None = None,
                     extra_bad: Sequence[Mapping[str, str]] = (),
                     seconds: float | None = None) -> dict[str, Any]:
    """Scores the records of `data` that have a completion and writes the report (when
    `out_dir`); records without one must be listed in `extra_bad`."""
    records = [r for r in data.records if r.uid in completions]
    texts = [completions[r.uid] for r in records]
    rows = scoring.score_completions(records, texts, reward_fn=reward_fn,
                                     answer_after=answer_after)
    rep = R.build_report(rows, tag=tag, step=step, model=model_info, data=data.info,
                         bad_rows=[*data.bad_rows, *extra_bad], answer_after=answer_after,
                         seconds=seconds)
    if out_dir is not None:
        R.write_report(rep, out_dir)
    return rep


def completion_cache(out_dir: str | Path, tag: str, fingerprint: Mapping[str, Any],
                     write: bool = True) -> gen.CompletionCache:
    """`<out_dir>/<tag>.completions.jsonl`, checked against `fingerprint` (raises when it was
    written for another model or settings): build it before loading any weights."""
    return gen.CompletionCache(Path(out_dir) / f"{tag}.completions.jsonl", fingerprint, write)


def evaluate(model: Any, data: D.EvalData, config: Any, *, tag: str, out_dir: str | Path | None,
             cache: gen.CompletionCache | None = None, step: int | None = None,
             model_info: Mapping[str, Any] | None = None, reward_fn: Callable | None = None,
             answer_after: str | None = None, should_stop: Callable[[], bool] | None = None,
             progress: bool = True, write: bool = True,
             place: Any = None) -> dict[str, Any] | None:
    """Greedy completions of `data` (those in `cache` are reused, new ones added to it),
    scored and reported; `place`: `generate.generate`'s (data-parallel sampling). None when
    `should_stop` interrupted the generation (the completions
    so far stay cached)."""
    t0 = time.perf_counter()
    result = gen.generate(model, data.records, config, cache=cache, should_stop=should_stop,
                          progress=progress, desc=f"evaluate {tag}", place=place)
    if result.stopped:
        log.warning("evaluation %s interrupted after %d of %d questions (cached in %s)", tag,
                    len(result.completions), len(data.records), cache and cache.path)
        return None
    return score_and_report(data, result.completions, tag=tag, step=step,
                            out_dir=out_dir if write else None, model_info=model_info,
                            reward_fn=reward_fn, answer_after=answer_after,
                            extra_bad=result.bad_rows, seconds=time.perf_counter() - t0)


def config_errors(config: Any, patch_size: int) -> list[str]:
    """Evaluation settings that cannot work, each naming its keys ([] when consistent)."""
    ev, d = config.eval, config.data
    errors = []
    bs = int(ev.batch_size)
    if bs < 1:
        return [f"eval.batch_size ({bs}) must be >= 1"]
    least = -(-int(d.min_pixels) // (patch_size * patch_size))  # patch rows of one image, >=
    cap = max(int(x) for x in d.patch_buckets)
    if bs * least > cap:
        errors.append(f"eval.batch_size ({bs}) x at least {least} patch rows per image "
                      f"(data.min_pixels {d.min_pixels}) exceeds the largest data.patch_buckets "
                      f"entry ({cap}); lower eval.batch_size")
    unknown = [t for t in ev.tasks if t not in TASK_TYPES]
    if unknown:
        errors.append(f"eval.tasks has unknown task types {unknown}; choose from {TASK_TYPES}")
    if d.source == "mapworld" and (ev.at_sft_end or ev.final or int(ev.every_steps)):
        for key in ("questions_per_task", "periodic_questions_per_task"):
            if int(ev[key]) < 1:
                errors.append(f"eval.{key} must be >= 1 for map-world evaluation (the number "
                              "of questions generated per task type)")
    return errors


class TrainingEvaluator:
    """Evaluation inside training, on the configured data: `data.source == "mapworld"`: the
    map world's `eval.split` maps (stations marked when `train.highlight_stations`);
    `"reasonmap"`: the `eval.split` files of `data.reasonmap_dir` / `data.reasonmap_plus_dir`.
    `eval.tasks` only; at most `per_task` questions of each (real data: 0 = all). Reports go to
    `<workdir>/eval/<tag>.{json,md}`, a gallery page to `gallery/eval_<tag>.html`, the list of
    evaluations to `eval/summary.{json,md}`."""

    def __init__(self, config: Any, workdir: str | Path) -> None:
        self.config, self.workdir = config, Path(workdir)
        self.out = self.workdir / EVAL_SUBDIR
        self._data: dict[int, D.EvalData] = {}

    def data(self, per_task: int) -> D.EvalData:
        if per_task not in self._data:
            c = self.config
            ev = c.eval
            if c.data.source == "mapworld":
                from rewardmap_jax.mapworld.generator import get_world

                world = get_world(c.data.mapworld_world,
                                  highlight=bool(c.train.highlight_stations))
                self._data[per_task] = D.mapworld_data(world, ev.split, per_task, ev.tasks)
            else:
                dirs = [x for x in (c.data.reasonmap_dir, c.data.reasonmap_plus_dir) if x]
                if not dirs:
                    raise ValueError("evaluation on real data needs data.reasonmap_dir and/or "
                                     "data.reasonmap_plus_dir (their held-out split)")
                self._data[per_task] = D.real_data(
                    dirs, ev.split, tasks=ev.tasks, per_task=per_task, seed=int(c.seed),
                    max_image_pixels=int(c.data.max_image_pixels))
        return self._data[per_task]

    def run(self, model: Any, reward_fn: Callable, *, step: int, tag: str, per_task: int,
            should_stop: Callable[[], bool] | None = None, place: Any = None
            ) -> dict[str, Any] | None:
        primary = jax.process_index() == 0
        fingerprint = {"workdir": str(self.workdir), "step": step, "tag": tag}
        try:
            cache = completion_cache(self.out, tag, fingerprint, write=primary)
        except ValueError:
            # The cache resumes this evaluation after a preemption. One written at another
            # step under the same tag is a finished evaluation's (its report is in the run's
            # reports): the `final` of a run since extended (train.rl_steps raised). Start over.
            log.info("evaluation %s at step %d: replacing the completion cache of an earlier "
                     "step", tag, step)
            stale = Path(self.out) / f"{tag}.completions.jsonl"
            if primary:
                stale.unlink()
            cache = (completion_cache(self.out, tag, fingerprint) if primary
                     else gen.CompletionCache(None, fingerprint, write=False))
        rep = evaluate(model, self.data(per_task), self.config, tag=tag, out_dir=self.out,
                       cache=cache, step=step,
                       model_info={"workdir": str(self.workdir), "step": step},
                       reward_fn=reward_fn, should_stop=should_stop,
                       progress=primary and bool(self.config.log.progress_bar), write=primary,
                       place=place)
        if rep is not None and primary:
            records = self.data(per_task).records
            items = G.heldout_items(records, rep["samples"],
                                    int(self.config.log.gallery_questions))
            from rewardmap_jax.run import gallery

            gallery.write_gallery(self.workdir, step, items, eval_tag=tag,
                                  title=f"Held-out evaluation {tag} (step {step})")
        return rep

    def write_summary(self, reports: Sequence[Mapping[str, Any]]) -> Path:
        return write_summary(self.out, reports)


def write_summary(out_dir: str | Path, reports: Sequence[Mapping[str, Any]]) -> Path:
    """`summary.json` (the reports without their questions) and `summary.md`: headline figures
    of every evaluation and the paired change of the last against the first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = [R.slim(r) for r in reports if r.get("format") == R.FORMAT]  # not older formats
    (out / f"{SUMMARY}.json").write_text(json.dumps(slim, ensure_ascii=False, indent=1) + "\n")
    names = [n for n in HEADLINE if any(n in r["summary"] for r in slim)]
    lines = ["# Evaluations", "", "| tag | step | questions | " + " | ".join(names) + " |",
             "|" + " --- |" * (3 + len(names))]
    for r in slim:
        cells = [R.cell(r["summary"], n) for n in names]
        lines.append(f"| {r['tag']} | {r['step']} | {r['counts']['scored']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Per-evaluation reports: `<tag>.md`. Accuracies in percent, ± standard error."]
    if len(slim) >= 2:
        paths = [out / f"{slim[i]['tag']}.json" for i in (0, -1)]
        if all(p.is_file() for p in paths):
            a, b = (R.load_report(p) for p in paths)
            lines += ["", C.markdown(a, b).replace("# ", "## ", 1)]
    (out / f"{SUMMARY}.md").write_text("\n".join(lines) + "\n")
    return out / f"{SUMMARY}.md"
