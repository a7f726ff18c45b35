"""ReasonMap / ReasonMap-Plus evaluation: JSON + Markdown reports.

    # Score completions produced elsewhere (vLLM, an HF pipeline, a previous run):
    python -m rewardmap_jax.evaluate --completions outputs.jsonl --data mapworld:tiny --split test
    python -m rewardmap_jax.evaluate --completions outputs.jsonl --data reasonmap \
        --reasonmap_dir /data/ReasonMap --reasonmap_plus_dir /data/ReasonMap-Plus
    # Generate with a trained policy, then score:
    python -m rewardmap_jax.evaluate --workdir runs/tiny [--step 200]
    python -m rewardmap_jax.evaluate --hf_dir exported/tiny --data mapworld:tiny

Records come from `--data` (default: the run config's data section, else `mapworld:tiny`).
Completions come from `--completions` (JSONL: {"uid": ..., "completion": ...}, one per record)
or from the policy (`--workdir` checkpoint or `--hf_dir`) through the trainer's
`generate_completions(config, sources, *, workdir, hf_dir, step) -> (records, completions)`
(greedy, `config.eval` settings). Scores come from
`rewards.metrics.evaluate_completions`; reports are written to OUT/eval_<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc

from rewardmap_jax import config_utils
from rewardmap_jax.mapworld.records import TASK_TYPES, Record

GENERATE_MODULE = "rewardmap_jax.rl.trainer"
GENERATE_FN = "generate_completions"
DEFAULT_PER_TYPE = 50  # map-world questions per task type when nothing else says


def load_sources(
    data: str,
    *,
    split: str,
    per_type: int,
    reasonmap_dir: str = "",
    reasonmap_plus_dir: str = "",
) -> dict[str, Any]:
    """Evaluation sources by task type: `mapworld[:WORLD]` (`per_type` generated questions per
    type) or `reasonmap` (every record of the local directories)."""
    from rewardmap_jax.data import sources

    kind, _, world = data.partition(":")
    if kind == "mapworld":
        return dict(sources.mapworld_sources(world or "tiny", split, per_type))
    if kind == "reasonmap":
        cfg = mlc.ConfigDict(
            {
                "reasonmap_dir": reasonmap_dir,
                "reasonmap_plus_dir": reasonmap_plus_dir,
                "reasonmap_train_dir": "",
            }
        )
        return dict(sources.real_sources(cfg, split))
    raise ValueError(f"--data must be mapworld[:WORLD] or reasonmap, got {data!r}")


def load_records(data: str, *, split: str, per_type: int, **dirs: str) -> list[Record]:
    """The records of `load_sources`, task types in `TASK_TYPES` order, at most `per_type` each
    (0 = all)."""
    srcs = load_sources(data, split=split, per_type=per_type, **dirs)
    records = []
    for t in TASK_TYPES:
        if t in srcs:
            n = len(srcs[t]) if per_type <= 0 else min(per_type, len(srcs[t]))
            records += [srcs[t][i] for i in range(n)]
    return records


def read_completions(path: str | Path, records: Sequence[Record]) -> list[str]:
    """Completions for `records`, in their order, from a JSONL of {"uid", "completion"}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no completions file {path}")
    by_uid: dict[str, str] = {}
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
        by_uid[str(uid)] = text
    missing = [r.uid for r in records if r.uid not in by_uid]
    if missing:
        raise ValueError(
            f"{path}: no completion for {len(missing)} of {len(records)} records "
            f"(first: {missing[:3]})"
        )
    return [by_uid[r.uid] for r in records]


def generate(
    config: mlc.ConfigDict,
    sources: dict[str, Any],
    *,
    workdir: str | None,
    hf_dir: str | None,
    step: int | None,
) -> tuple[list[Record], list[str]]:
    """Greedy completions from the policy (a `workdir` checkpoint or an `hf_dir`) through the
    trainer's hook `generate_completions(config, sources, *, workdir, hf_dir, step)`, which
    returns (records, completions) in the same order."""
    spec = importlib.util.find_spec(GENERATE_MODULE)
    module = importlib.import_module(GENERATE_MODULE) if spec else None
    fn = getattr(module, GENERATE_FN, None)
    if fn is None:
        raise NotImplementedError(
            f"generating completions needs {GENERATE_MODULE}.{GENERATE_FN}, which this checkout "
            "does not have yet; score existing outputs with --completions FILE.jsonl instead"
        )
    records, completions = fn(config, sources, workdir=workdir, hf_dir=hf_dir, step=step)
    return list(records), list(completions)


def evaluate(
    records: Sequence[Record],
    completions: Sequence[str],
    out_dir: str | Path,
    tag: str,
    *,
    answer_after: str | None = None,
) -> dict[str, Any]:
    """Scores and writes OUT/eval_<tag>.json (summary + per-sample rows) and .md (table)."""
    from rewardmap_jax.rewards import metrics, report

    result = metrics.evaluate_completions(records, completions, answer_after=answer_after)
    out_dir = Path(out_dir)
    result["completions"] = [
        {"uid": r.uid, "completion": c} for r, c in zip(records, completions, strict=True)
    ]
    report.write_json(result, str(out_dir / f"eval_{tag}.json"))
    report.write_markdown(result, str(out_dir / f"eval_{tag}.md"), title=f"Evaluation: {tag}")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rewardmap_jax.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="run directory: its config and checkpoint")
    src.add_argument("--hf_dir", help="Hugging Face Qwen2.5-VL directory")
    src.add_argument("--completions", help="JSONL of {uid, completion} to score (no model)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (with --workdir)")
    p.add_argument("--data", default=None, help="mapworld[:WORLD] | reasonmap")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--per_type", type=int, default=None, help="questions per task type")
    p.add_argument("--reasonmap_dir", default="", help="ReasonMap directory (planning)")
    p.add_argument("--reasonmap_plus_dir", default="", help="ReasonMap-Plus directory (VQA)")
    p.add_argument("--answer_after", default=None, help="score only text after this marker")
    p.add_argument("--out", default=None, help="report directory (default WORKDIR/eval or .)")
    p.add_argument("--tag", default=None, help="report name (default: derived from the source)")
    return p


_PATH_ARGS = ("workdir", "hf_dir", "completions", "reasonmap_dir", "reasonmap_plus_dir", "out")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    for name in _PATH_ARGS:  # resolved once, here (Orbax refuses relative checkpoint paths)
        if getattr(args, name):
            setattr(args, name, config_utils.absolute_path(getattr(args, name)))
    config = None
    if args.workdir:
        config = config_utils.load_config(args.workdir)
    data_cfg = config.data if config is not None else None
    data = args.data
    if data is None:
        if data_cfg is not None and data_cfg.source == "reasonmap":
            data = "reasonmap"
        else:
            data = "mapworld:" + (data_cfg.get("mapworld_world", "tiny") if data_cfg else "tiny")
    per_type = args.per_type
    if per_type is None:
        max_q = int(config.eval.max_questions) if config is not None else 0
        per_type = max(1, max_q // len(TASK_TYPES)) if max_q else DEFAULT_PER_TYPE
    dirs = {
        "reasonmap_dir": args.reasonmap_dir or (data_cfg.reasonmap_dir if data_cfg else ""),
        "reasonmap_plus_dir": args.reasonmap_plus_dir
        or (data_cfg.reasonmap_plus_dir if data_cfg else ""),
    }
    if args.completions:
        records = load_records(data, split=args.split, per_type=per_type, **dirs)
        if not records:
            raise ValueError(f"no records for --data {data} --split {args.split}")
        completions = read_completions(args.completions, records)
        tag = args.tag or Path(args.completions).stem
    else:
        sources = load_sources(data, split=args.split, per_type=per_type, **dirs)
        # A bare --hf_dir evaluates with the default config's eval settings.
        run_config = config if config is not None else config_utils.get_config()
        records, completions = generate(
            run_config, sources, workdir=args.workdir, hf_dir=args.hf_dir, step=args.step
        )
        if args.hf_dir:
            tag = args.tag or Path(args.hf_dir).name
        else:
            tag = args.tag or (f"step_{args.step}" if args.step is not None else "latest")
    out = args.out or (Path(args.workdir) / "eval" if args.workdir else Path("."))
    return evaluate(records, completions, out, tag, answer_after=args.answer_after)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except (FileNotFoundError, ValueError, NotImplementedError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in result["summary"].items() if not k.startswith("count/")}
    summary.pop("weights", None)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
