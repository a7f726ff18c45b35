"""Random-access record sources, one per task type: the procedural map world and real records.

A source is anything with `__len__` and `__getitem__(i) -> Record` (Grain's random-access data
source protocol). Sources are picklable so Grain worker processes can read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rewardmap_jax.mapworld.records import TASK_TYPES, Record


class RecordSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


@dataclasses.dataclass(frozen=True)
class MapWorldSource:
    """`size` questions of one task type on one split of a map-world preset (generated on read:
    `mapworld.generator.make_record` is a pure function of (world, split, index, task))."""

    world: str
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


def group_by_type(records: Iterable[Record], name: str = "records") -> dict[str, RecordListSource]:
    """Splits records into one in-memory source per task type (types in TASK_TYPES order)."""
    by_type: dict[str, list[Record]] = {}
    for r in records:
        by_type.setdefault(r.type, []).append(r)
    return {t: RecordListSource(tuple(by_type[t]), f"{name}:{t}") for t in TASK_TYPES
            if t in by_type}


def mapworld_sources(
    world: str, split: str, size: int, task_types: Sequence[str] = TASK_TYPES
) -> dict[str, MapWorldSource]:
    return {t: MapWorldSource(world, split, t, size) for t in task_types}


def _call_loader(name: str, path: str, split: str) -> list[Record]:
    from rewardmap_jax.mapworld import loaders

    fn = getattr(loaders, name)
    try:
        return list(fn(path, split=split))
    except TypeError:  # loaders without a split argument
        return list(fn(path))


def real_sources(data_cfg: Any, split: str) -> dict[str, RecordListSource]:
    """Records from the real datasets named in `data_cfg` (local directories only).

    `reasonmap_train_dir` (ReasonMap-Train: all six types) is used for training; for other splits
    `reasonmap_plus_dir` (five VQA types) and `reasonmap_dir` (planning) are read.
    """
    records: list[Record] = []
    wanted = (
        [("load_reasonmap_train", data_cfg.reasonmap_train_dir)]
        if split == "train" and data_cfg.reasonmap_train_dir
        else [("load_reasonmap_plus", data_cfg.reasonmap_plus_dir),
              ("load_reasonmap", data_cfg.reasonmap_dir)]
    )
    for loader, path in wanted:
        if not path:
            continue
        if not Path(path).exists():
            raise FileNotFoundError(f"data directory {path!r} (for {loader}) does not exist")
        records.extend(_call_loader(loader, path, split))
    if not records:
        raise ValueError(
            f"no real records for split {split!r}: set data.reasonmap_train_dir (training) or "
            "data.reasonmap_plus_dir / data.reasonmap_dir"
        )
    return group_by_type(records, name=f"reasonmap:{split}")


def source_sizes(sources: Mapping[str, RecordSource]) -> dict[str, int]:
    return {t: len(s) for t, s in sources.items()}
