"""`python -m rewardmap_jax.evaluate`: evaluate a model (or score given completions) and write
one report; `... compare A.json B.json`: paired differences between two reports.

    # a run's checkpoint (its own config: data, pixel limits, lengths, highlighted maps)
    python -m rewardmap_jax.evaluate --workdir runs/tiny [--step 800]
    # a local Hugging Face directory or a Hub repo id (standard cache; HF_HUB_OFFLINE honoured)
    python -m rewardmap_jax.evaluate --hf_dir Qwen/Qwen2.5-VL-7B-Instruct \\
        --data FSCCS/ReasonMap,FSCCS/ReasonMap-Plus --set model.compute_dtype=bfloat16
    # completions produced elsewhere (JSONL of {"uid": ..., "completion": ...})
    python -m rewardmap_jax.evaluate --completions out.jsonl --data /data/ReasonMap
    python -m rewardmap_jax.evaluate compare runs/base/eval/final.json runs/rl/eval/final.json

`--data`: `mapworld[:WORLD]` (generated questions, `--questions_per_task` of each type, default
`eval.questions_per_task`, or 128 when that is 0), `reasonmap` (the run config's or
`--reasonmap_dir` / `--reasonmap_plus_dir` datasets), or a comma-separated list of dataset
directories, parquet files or Hugging Face dataset repo ids (kind detected from the columns).
Default: the run's data (`--workdir`), else `mapworld:tiny`. Real data is evaluated in full
unless `--questions_per_task N` caps each type.

Writes OUT/<tag>.json and OUT/<tag>.md (OUT: `--out`, default WORKDIR/eval or ./eval; tag:
`--tag`, default cli_step<N>, the model's name or the completions file's name) and, when it
generates, OUT/<tag>.completions.jsonl: an interrupted evaluation (Ctrl-C, SIGTERM) resumes
from it when the same command is run again. Bad rows are counted and listed in the report.

Exit codes: 0 done; 1 bad input (nothing computed); 3 interrupted (completions so far cached).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewardmap_jax import config_utils
from rewardmap_jax.evaluation import compare as C
from rewardmap_jax.evaluation import data as D
from rewardmap_jax.evaluation import evaluator as E
from rewardmap_jax.evaluation import models as M
from rewardmap_jax.evaluation import report as R
from rewardmap_jax.mapworld.records import TASK_TYPES

INTERRUPTED = 3
# Map-world questions per type when the config says 0 (= "all" for real data; a generated world
# has no "all"): the real presets' configs, used for `--hf_dir`, do.
MAPWORLD_PER_TASK = 128


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rewardmap_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="run directory: its config and checkpoint")
    src.add_argument("--hf_dir", help="Hugging Face Qwen2.5-VL directory or Hub repo id")
    src.add_argument("--completions", help="JSONL of {uid, completion} to score (no model)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    p.add_argument("--data", default=None, help="mapworld[:WORLD] | reasonmap | DATASET[,...]")
    p.add_argument("--split", default=None, help="split (default eval.split with --workdir, "
                   "else test; real files: test also matches validation)")
    p.add_argument("--questions_per_task", type=int, default=None,
                   help="map world: questions per task type; real data: a cap (0 = all)")
    p.add_argument("--reasonmap_dir", default="", help="ReasonMap dataset (planning)")
    p.add_argument("--reasonmap_plus_dir", default="", help="ReasonMap-Plus dataset (VQA)")
    p.add_argument("--answer_after", default=None,
                   help="score only the text after the last occurrence of this marker")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--no_reward", action="store_true", help="skip the training-reward figure")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="report directory")
    p.add_argument("--tag", default=None, help="report name")
    return p


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rewardmap_jax.evaluate compare",
                                description=C.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="report A (before)")
    p.add_argument("b", help="report B (after)")
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    return p


def read_completions(path: str | Path) -> dict[str, str]:
    """{uid: completion} from a JSONL of {"uid", "completion"} rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no completions file {path}")
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            uid, text = row["uid"], row["completion"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{i}: expected {{'uid': ..., 'completion': ...}} ({e})") from e
        if not isinstance(text, str):
            raise ValueError(f"{path}:{i}: completion for {uid!r} is not a string")
        out[str(uid)] = text
    return out


def load_data(args: argparse.Namespace, config: Any) -> D.EvalData:
    """The questions `--data` names (module docstring)."""
    spec = args.data
    if spec is None:
        if args.workdir:
            spec = "reasonmap" if config.data.source == "reasonmap" else "mapworld"
        else:
            spec = "reasonmap" if (args.reasonmap_dir or args.reasonmap_plus_dir) else \
                "mapworld:tiny"
    split = args.split or (config.eval.split if args.workdir else "test")
    kind, _, world = spec.partition(":")
    tasks = tuple(config.eval.tasks) if args.workdir else None
    if kind == "mapworld":
        from rewardmap_jax.mapworld.generator import get_world

        n = args.questions_per_task or int(config.eval.questions_per_task) or MAPWORLD_PER_TASK
        w = get_world(world or config.data.mapworld_world,
                      highlight=bool(config.train.highlight_stations))
        return D.mapworld_data(w, split, n, tasks or TASK_TYPES)
    if kind == "reasonmap" and not world:
        specs = [x for x in (args.reasonmap_dir or config.data.reasonmap_dir,
                             args.reasonmap_plus_dir or config.data.reasonmap_plus_dir) if x]
        if not specs:
            raise ValueError("--data reasonmap needs --reasonmap_dir and/or --reasonmap_plus_dir "
                             "(or a run whose config names them)")
    else:
        specs = [s.strip() for s in spec.split(",") if s.strip()]
    return D.real_data(specs, split, tasks=tasks or TASK_TYPES,
                       per_task=args.questions_per_task or 0, seed=int(config.seed),
                       max_image_pixels=int(config.data.max_image_pixels))


def _latest_step(workdir: str) -> int:
    from rewardmap_jax.run import checkpoint as ck

    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        step = mgr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {workdir}")
    return step


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Everything after argument parsing; None when interrupted."""
    for name in ("workdir", "completions", "out"):  # once, here: Orbax refuses relative paths
        if getattr(args, name):
            setattr(args, name, config_utils.absolute_path(getattr(args, name)))
    config, info = M.eval_config(workdir=args.workdir, hf_dir=args.hf_dir,
                                 overrides=args.overrides)
    data = load_data(args, config)  # before any weights: a bad path fails here
    if not data.records:
        raise ValueError(f"no questions to evaluate ({data.info}; {len(data.bad_rows)} bad rows)")
    reward_fn = None
    if not args.no_reward:
        from rewardmap_jax.rewards.registry import make_reward_fn

        reward_fn = make_reward_fn(config.reward)
    out = Path(args.out or (Path(args.workdir) / E.EVAL_SUBDIR if args.workdir else "eval"))
    if args.completions:
        completions = read_completions(args.completions)
        missing = [r.uid for r in data.records if r.uid not in completions]
        if missing:
            raise ValueError(f"{args.completions}: no completion for {len(missing)} of "
                             f"{len(data.records)} questions (first: {missing[:3]})")
        tag = args.tag or Path(args.completions).stem
        info = {"completions": str(args.completions)}
        return E.score_and_report(data, completions, tag=tag, out_dir=out, model_info=info,
                                  reward_fn=reward_fn, answer_after=args.answer_after)
    step = None
    if args.workdir:
        step = args.step if args.step is not None else _latest_step(args.workdir)
        tag = args.tag or f"cli_step{step}"  # not a training tag (warm_start, step<N>, final)
        info = info | {"step": step}
    else:
        tag = args.tag or Path(str(args.hf_dir).rstrip("/")).name
    fingerprint = {"model": info, "max_new_tokens": int(config.eval.max_new_tokens),
                   "pixels": [int(config.data.min_pixels), int(config.data.max_pixels)],
                   "system_prompt": config.data.system_prompt}
    cache = E.completion_cache(out, tag, fingerprint)  # a stale cache fails before the weights
    model, _ = M.load_policy(config, workdir=args.workdir, step=step)
    from rewardmap_jax.run.checkpoint import PreemptionGuard

    guard = PreemptionGuard()  # SIGTERM: stop between batches, keep the cache
    try:
        return E.evaluate(model, data, config, tag=tag, out_dir=out, cache=cache,
                          step=step, model_info=info, reward_fn=reward_fn,
                          answer_after=args.answer_after,
                          should_stop=lambda: guard.requested, progress=not args.no_progress)
    finally:
        guard.uninstall()


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    s = report["summary"]
    return {"tag": report["tag"], **report["counts"],
            **{k: round(s[k]["value"], 4) for k in E.HEADLINE if k in s}}


def compare_main(argv: Sequence[str]) -> int:
    args = _compare_parser().parse_args(argv)
    try:
        a, b = R.load_report(args.a), R.load_report(args.b)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate compare: {e}", file=sys.stderr)
        return 1
    text = C.markdown(a, b)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        report = None
    if report is None:
        print("evaluate: interrupted; the completions so far are cached, run the same command "
              "again to resume", file=sys.stderr)
        return INTERRUPTED
    print(json.dumps(_headline(report), indent=1))
    return 0
