"""Gallery pages (`rewardmap_jax.run.gallery`) of training rollouts and held-out evaluations.

Pipeline batches carry their records without the image (`data.pipeline` drops in-memory
figures so batches stay small), so a training page looks each record's map up in the data
sources it came from (`figure_of`): a map-world question is regenerated from its index, a real
one found by uid in its in-memory source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardmap_jax.data.sources import MapWorldSource
from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.rewards import metrics
from rewardmap_jax.run import gallery

# id(source) -> (source, {uid: record}); the source is held so its id is never reused.
_UID_INDEX: dict[int, tuple[Any, dict[str, Record]]] = {}


def figure_of(record: Record, sources: Mapping[str, Any]) -> Any:
    """The map of `record` from the source of its type (None when it cannot be found)."""
    if record.figure is not None:
        return record.figure
    src = sources.get(record.type)
    if isinstance(src, MapWorldSource):
        # uid = "<world>/<split>/<index>/<task>" (`mapworld.generator.make_record`)
        parts = record.uid.split("/")
        if len(parts) == 4 and parts[1] == src.split and parts[2].isdigit():
            index = int(parts[2])
            return src[index].figure if index < len(src) else None
        return None
    if hasattr(src, "records"):
        if id(src) not in _UID_INDEX:
            _UID_INDEX[id(src)] = (src, {r.uid: r for r in src.records})
        found = _UID_INDEX[id(src)][1].get(record.uid)
        return None if found is None else found.figure
    return None


def training_items(res: Any, g: int, n: int, sources: Mapping[str, Any]
                   ) -> list[gallery.GalleryItem]:
    """Items of this process's first `n` prompt groups of a rollout (`rl.rollout.RolloutResult`,
    rows prompt-major; `res.rows` maps a local row to its global index into `res.scores`), each
    with its G completions and reward components."""
    items = []
    for j in range(min(n, len(res.records) // g)):
        rows = range(j * g, (j + 1) * g)
        rec = res.records[j * g]
        items.append(gallery.item_from_record(
            rec, [res.texts[i] for i in rows],
            [{k: float(v[res.rows[i]]) for k, v in res.scores.items()} for i in rows],
            image=figure_of(rec, sources)))
    return items


def write_training_gallery(workdir: str | Path, step: int, res: Any, g: int, n: int,
                           sources: Mapping[str, Any]) -> Path:
    return gallery.write_gallery(workdir, step, training_items(res, g, n, sources))


def heldout_items(records: Sequence[Record], rows: Sequence[Mapping[str, Any]], n: int
                  ) -> list[gallery.GalleryItem]:
    """About `n` items: the first questions of every task type, with their scores."""
    by_uid = {r.uid: r for r in records}
    types = [t for t in TASK_TYPES if any(row["type"] == t for row in rows)]
    per = max(1, n // max(1, len(types)))
    items = []
    for t in types:
        for row in [row for row in rows if row["type"] == t][:per]:
            scores = {"overall": row["reward"]} if "reward" in row else {}
            scores["accuracy"] = row["acc"]
            scores.update({f"map score ({m})": row[f"map_score_{m}"] for m in metrics.MODES
                           if f"map_score_{m}" in row})
            items.append(gallery.item_from_record(by_uid[row["uid"]], [row["completion"]],
                                                  [scores]))
    return items
