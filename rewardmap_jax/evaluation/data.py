"""Evaluation questions: the procedural map world, or the real datasets from local directories,
parquet files or Hugging Face repo ids (read through `huggingface_hub`'s cache).

    data = mapworld_data(world, "val", 128, tasks)
    data = real_data(["/data/ReasonMap", "FSCCS/ReasonMap-Plus"], "test", per_task=0)
    data.records, data.bad_rows

Real data is evaluated in full unless `per_task` > 0 caps each question type (a seeded random
subset, kept in file order). Rows the loaders reject (undecodable figure, missing field, a
named station absent from the metro dict, ...) are counted in `bad_rows` with their reason and
left out: a bad row never stops an evaluation. Which loader reads a dataset is decided from its
parquet columns: `question_short` = ReasonMap (planning), else ReasonMap-Plus, or
ReasonMap-Train when its `type` column holds planning questions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rewardmap_jax.data.sources import mapworld_sources, split_paths
from rewardmap_jax.mapworld import loaders
from rewardmap_jax.mapworld.records import TASK_TYPES, Record

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclasses.dataclass
class EvalData:
    """Questions to evaluate, the rows left out (`{"where", "reason"}`) and a description."""

    records: list[Record]
    bad_rows: list[dict[str, str]]
    info: dict[str, Any]


def resolve(spec: str | Path, repo_type: str) -> Path:
    """A local path, or a Hugging Face repo id ("org/name") resolved to its snapshot in the
    standard cache (`huggingface_hub.snapshot_download`: `HF_HOME` / `HF_HUB_CACHE` and
    `HF_HUB_OFFLINE` are honoured; online it downloads what the cache lacks)."""
    path = Path(spec)
    if path.exists():
        return path.absolute()
    if not _REPO_ID.match(str(spec)):
        raise FileNotFoundError(f"{spec}: no such file or directory (nor an org/name Hugging "
                                f"Face {repo_type} repo id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(spec), repo_type=repo_type))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot get the Hugging Face {repo_type} {spec!r}: "
                                f"{type(e).__name__}: {e}") from e


def dataset_kind(files: Sequence[Path]) -> str:
    """`reasonmap`, `reasonmap_plus` or `reasonmap_train` from the parquet columns."""
    names = pq.read_schema(files[0]).names
    if "question_short" in names:
        return "reasonmap"
    if "type" in names and any("planning" in pq.read_table(f, columns=["type"]).column(0)
                               .to_pylist() for f in files):
        return "reasonmap_train"
    return "reasonmap_plus"


def _parquet_files(root: Path, split: str) -> list[Path]:
    files = split_paths(root, split)
    if len(files) == 1 and files[0].is_dir():
        files = sorted(files[0].rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet files under {root}")
    return files


def capped(records: Sequence[Record], per_task: int, seed: int = 0) -> list[Record]:
    """At most `per_task` records of each type (0 = all): a seeded random subset of each
    type, in the original order."""
    if per_task <= 0:
        return list(records)
    keep: set[int] = set()
    for t in TASK_TYPES:
        idx = [i for i, r in enumerate(records) if r.type == t]
        if len(idx) > per_task:
            rng = np.random.default_rng([seed, TASK_TYPES.index(t)])
            idx = list(rng.choice(idx, per_task, replace=False))
        keep.update(int(i) for i in idx)
    return [r for i, r in enumerate(records) if i in keep]


def real_data(specs: Sequence[str], split: str, *, tasks: Sequence[str] = TASK_TYPES,
              per_task: int = 0, seed: int = 0, max_image_pixels: int | None = None) -> EvalData:
    """Records of the real datasets `specs` (paths or repo ids) for `split`."""
    records: list[Record] = []
    bad: list[dict[str, str]] = []
    kinds = []
    for spec in specs:
        root = resolve(spec, "dataset")
        files = _parquet_files(root, split)
        kind = dataset_kind(files)
        kinds.append(kind)
        kwargs: dict[str, Any] = {"on_bad_row": "skip"}
        if max_image_pixels:
            kwargs["max_pixels"] = int(max_image_pixels)
        if kind != "reasonmap" and root.is_dir():
            kwargs["root"] = root  # figure / metro paths are relative to the dataset root
        for file in files:
            result = getattr(loaders, f"load_{kind}")(file, **kwargs)
            records += result.records
            bad += [{"where": f"{b.file} row {b.row}", "reason": b.reason}
                    for b in result.skipped]
    records = capped([r for r in records if r.type in tasks], per_task, seed)
    info = {"datasets": ", ".join(f"{s} ({k})" for s, k in zip(specs, kinds, strict=True)),
            "split": split, "per_task": per_task or "all"}
    return EvalData(records, bad, info)


def mapworld_data(world: Any, split: str, per_task: int,
                  tasks: Sequence[str] = TASK_TYPES) -> EvalData:
    """`per_task` generated questions of each task type (`world`: a preset name or a
    `WorldConfig`, e.g. with the run's `highlight`)."""
    if per_task <= 0:
        raise ValueError(f"map-world evaluation needs a question count per task > 0, got "
                         f"{per_task}")
    srcs = mapworld_sources(world, split, per_task, [t for t in TASK_TYPES if t in tasks])
    records = [src[i] for src in srcs.values() for i in range(len(src))]
    name = world if isinstance(world, str) else f"{world.name}" + (
        " (stations marked)" if getattr(world, "highlight", False) else "")
    return EvalData(records, [], {"mapworld": name, "split": split, "per_task": per_task})
