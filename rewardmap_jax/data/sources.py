"""Random-access record sources, one per task type: the procedural map world and real records.

A source is anything with `__len__` and `__getitem__(i) -> Record` (Grain's random-access data
source protocol). Sources are picklable so Grain worker processes can read them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rewardmap_jax.mapworld.records import TASK_TYPES, Record

log = logging.getLogger(__name__)


class RecordSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


@dataclasses.dataclass(frozen=True)
class MapWorldSource:
    """`size` questions of one task type on one split of a map-world preset (generated on read:
    `mapworld.generator.make_record` is a pure function of (world, split, index, task))."""

    world: Any  # a preset name or a `mapworld.generator.WorldConfig` (frozen, picklable)
    split: str
    task_type: str
    size: int

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.task_type!r}")
        if self.size <= 0:
            raise ValueError(f"map-world source size must be > 0, got {self.size}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Record:
        from rewardmap_jax.mapworld.generator import make_record

        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self}")
        return make_record(self.world, self.split, int(index), self.task_type)


@dataclasses.dataclass(frozen=True)
class RecordListSource:
    """Records held in memory (real ReasonMap rows; figures stay as paths/bytes until read)."""

    records: tuple[Record, ...]
    name: str = "records"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def __repr__(self) -> str:
        return f"RecordListSource({self.name!r}, {len(self.records)} records)"


def group_by_type(records: Iterable[Record], name: str = "records") -> dict[str, RecordListSource]:
    """Splits records into one in-memory source per task type (types in TASK_TYPES order)."""
    by_type: dict[str, list[Record]] = {}
    for r in records:
        by_type.setdefault(r.type, []).append(r)
    return {t: RecordListSource(tuple(by_type[t]), f"{name}:{t}") for t in TASK_TYPES
            if t in by_type}


def mapworld_sources(
    world: Any, split: str, size: int, task_types: Sequence[str] = TASK_TYPES
) -> dict[str, MapWorldSource]:
    return {t: MapWorldSource(world, split, t, size) for t in task_types}


_SPLIT_ALIASES = {"train": ("train",), "val": ("val", "validation"),
                  "test": ("test", "validation", "val")}


def split_paths(path: Path, split: str) -> list[Path]:
    """The parquet files of `split` under a dataset directory (HF layout `data/<split>*.parquet`);
    all of them if no file name mentions a split, or `path` itself if it is a file."""
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    aliases = _SPLIT_ALIASES.get(split, (split,))
    for alias in aliases:
        chosen = [f for f in files if alias in f.stem.lower()]
        if chosen:
            return chosen
    return [path]


def _load_real(loader: str, path: str, split: str, data_cfg: Any) -> tuple[list[Record], int]:
    """Records of one dataset directory/file via the mapworld loaders; (records, rows skipped)."""
    from rewardmap_jax.mapworld import loaders

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data directory {path!r} (for {loader}) does not exist")
    fn = getattr(loaders, loader)
    kwargs: dict[str, Any] = {"on_bad_row": data_cfg.get("on_bad_row", "raise")}
    if data_cfg.get("max_image_pixels"):
        kwargs["max_pixels"] = int(data_cfg.get("max_image_pixels"))
    if loader != "load_reasonmap" and root.is_dir():
        kwargs["root"] = root  # figure/metro paths are relative to the dataset root
    records: list[Record] = []
    skipped = 0
    for file in split_paths(root, split):
        result = fn(file, **kwargs)
        records.extend(result.records)
        skipped += len(result.skipped)
        for bad in result.skipped:
            log.warning("skipped %s row %d: %s", bad.file, bad.row, bad.reason)
    return records, skipped


def real_sources(data_cfg: Any, split: str) -> dict[str, RecordListSource]:
    """Records from the real datasets named in `data_cfg` (local directories or files only).

    `data_cfg` is `c.data` or any mapping with `.get` (missing keys: no such dataset, raise on
    bad rows, the loaders' default image bound).

    For `split == "train"`, `reasonmap_train_dir` (ReasonMap-Train: all six types) when set; else,
    and for other splits, `reasonmap_plus_dir` (five VQA types) and `reasonmap_dir` (planning).
    Rows the loaders reject raise (`data.on_bad_row="raise"`) or are skipped and logged.
    """
    if split == "train" and data_cfg.get("reasonmap_train_dir"):
        wanted = [("load_reasonmap_train", data_cfg.get("reasonmap_train_dir"))]
    else:
        wanted = [("load_reasonmap_plus", data_cfg.get("reasonmap_plus_dir")),
                  ("load_reasonmap", data_cfg.get("reasonmap_dir"))]
    records: list[Record] = []
    for loader, path in wanted:
        if path:
            records.extend(_load_real(loader, path, split, data_cfg)[0])
    if not records:
        raise ValueError(
            f"no real records for split {split!r}: set data.reasonmap_train_dir (training) or "
            "data.reasonmap_plus_dir / data.reasonmap_dir"
        )
    return group_by_type(records, name=f"reasonmap:{split}")


def source_sizes(sources: Mapping[str, RecordSource]) -> dict[str, int]:
    return {t: len(s) for t, s in sources.items()}
