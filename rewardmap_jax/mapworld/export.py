"""Map-world questions written in the real datasets' file formats (rewardmap.md §1-§3).

* ReasonMap: parquet rows with `question_short` + `question_long`, `figure` a base64 PNG string,
  `json` and `routes` as parquet structs (whose fields are the union over rows, so rows carry
  null-valued keys exactly like the real files).
* ReasonMap-Plus: parquet rows with `question`, `answer`, `type`, `figure` = "./maps/<country>/
  <city>.png" next to the parquet file, `json` inline as JSON text.
* ReasonMap-Train: as Plus, all six types, `json` = "./stations/<country>/<city>.json".

`scripts/make_fixtures.py` uses these to write the test fixtures; they are equally a way to hand
map-world data to tools that read the real formats.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rewardmap_jax.mapworld.generator import WorldConfig, make_record
from rewardmap_jax.mapworld.records import Record

SECTION_TYPE = pa.struct(
    [
        ("route_name", pa.string()),
        ("departure_stop", pa.string()),
        ("arrival_stop", pa.string()),
        ("via_stops", pa.list_(pa.string())),
        ("num_via_stops", pa.int64()),
    ]
)
_META = (
    "difficulty_city",
    "difficulty_question",
    "city_line_count",
    "city_transfer_count",
    "question_transfer_count",
)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _struct_of_lists(rows: list[dict[str, Any]], column: str, item: pa.DataType) -> pa.DataType:
    keys = list(dict.fromkeys(k for r in rows if r[column] for k in r[column]))
    if not keys:  # parquet cannot store a struct without fields
        return pa.null()
    return pa.struct([(k, pa.list_(item)) for k in keys])


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows to parquet, `json` / `routes` dict columns as structs (union of keys, nulls)."""
    fields = []
    for name in rows[0]:
        if name == "json" and isinstance(rows[0]["json"], dict):
            fields.append((name, _struct_of_lists(rows, "json", pa.string())))
        elif name == "routes":
            fields.append((name, _struct_of_lists(rows, "routes", SECTION_TYPE)))
        else:
            fields.append((name, None))
    schema = pa.schema(
        [(n, t if t is not None else pa.array([r[n] for r in rows]).type) for n, t in fields]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def reasonmap_rows(world: WorldConfig, split: str, indices: Sequence[int]) -> list[dict]:
    """ReasonMap rows: each a station pair asked short and long (template from the index)."""
    rows = []
    for i in indices:
        short = make_record(world, split, i, "planning", template="short")
        long_template = ("long_num_via", "long_via")[i % 2]
        long = make_record(world, split, i, "planning", template=long_template)
        assert (short.station_1, short.station_2) == (long.station_1, long.station_2)
        rows.append(
            {
                "country": short.country,
                "city": short.city,
                "json": short.metro,
                "question_short": short.question,
                "question_long": long.question,
                "station_1": short.station_1,
                "station_2": short.station_2,
                "figure": base64.b64encode(png_bytes(short.figure)).decode("ascii"),
                "routes": short.routes,
                **{k: getattr(short, k) for k in _META},
            }
        )
    return rows


def _file_row(rec: Record, out_dir: Path, metro_as_path: bool) -> dict[str, Any]:
    """A Plus/Train row; writes the map PNG (and metro JSON) next to the parquet file."""
    data = png_bytes(rec.figure)
    figure = f"./maps/{rec.country.lower()}/{rec.city}.png"  # one map per city, as the real data
    if (out_dir / figure).is_file() and (out_dir / figure).read_bytes() != data:
        figure = f"./maps/{rec.country.lower()}/{rec.uid.replace('/', '_')}.png"  # highlighted
    (out_dir / figure).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / figure).write_bytes(data)
    if metro_as_path:
        metro = f"./stations/{rec.country.lower()}/{rec.city}.json"
        (out_dir / metro).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / metro).write_text(json.dumps(rec.metro, indent=1, ensure_ascii=False) + "\n")
    else:
        metro = json.dumps(rec.metro, ensure_ascii=False)
    return {
        "question": rec.question,
        "answer": rec.answer,
        "type": rec.type,
        "figure": figure,
        "country": rec.country,
        "city": rec.city,
        "station_1": rec.station_1,
        "station_2": rec.station_2,
        "json": metro,
        **{k: getattr(rec, k) for k in _META},
    }


def plus_rows(
    world: WorldConfig, split: str, items: Sequence[tuple[int, str]], out_dir: Path
) -> list[dict]:
    """ReasonMap-Plus rows for (index, type) items; PNGs go under `out_dir`/maps."""
    return [_file_row(make_record(world, split, i, t), out_dir, False) for i, t in items]


def train_rows(
    world: WorldConfig, split: str, items: Sequence[tuple[int, str]], out_dir: Path
) -> list[dict]:
    """ReasonMap-Train rows (any type; planning rows carry `routes`); metro JSON as files."""
    rows = []
    for i, t in items:
        rec = make_record(world, split, i, t)
        row = _file_row(rec, out_dir, True)
        row["routes"] = rec.routes or None
        rows.append(row)
    return rows
