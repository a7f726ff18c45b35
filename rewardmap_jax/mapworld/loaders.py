"""Loaders for the real ReasonMap, ReasonMap-Plus and ReasonMap-Train parquet files.

Formats (Hugging Face `FSCCS/ReasonMap`, `FSCCS/ReasonMap-Plus`, `FSCCS/ReasonMap-Train`;
docs/data.md):

* ReasonMap: one row per station pair with `question_short` and `question_long`; each row becomes
  two planning records (template `short`, and `long_num_via` / `long_via` from the long text).
  `figure` is a base64 PNG string; `json` (metro dict) and `routes` are dicts or parquet structs.
* ReasonMap-Plus / ReasonMap-Train: one row per question with `question`, `type`, `answer`;
  `figure` is a path relative to the parquet file (e.g. "./maps/x/y.png"); `json` is inline (dict,
  struct or JSON text) or a relative path to a metro JSON file.

Parquet stores a dict column as a struct whose fields are the union of every row's keys, so null
values are dropped (else another city's line would look like a key of this metro dict).

A bad row (missing or undecodable image, missing field, a named station absent from the metro
dict, ...) raises `BadRowError` naming the file and row, or with `on_bad_row="skip"` is left out
and reported in `LoadResult.skipped`.

Pillow's decompression-bomb guard is lifted on purpose (real maps reach tens of megapixels, as
the official code does with `Image.MAX_IMAGE_PIXELS = None`); every open here instead checks the
header size against an explicit `max_pixels` before decoding.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from rewardmap_jax.mapworld.cleaner import clean_rm
from rewardmap_jax.mapworld.records import PLUS_TYPES, TASK_TYPES, Record

Image.MAX_IMAGE_PIXELS = None  # bounded by `max_pixels` at every open below (module docstring)

DEFAULT_MAX_PIXELS = 256_000_000  # ~16k x 16k; the largest real maps are ~6k x 6k
_BATCH_ROWS = 16  # rows per parquet read: real rows carry multi-megabyte images
_ON_BAD_ROW = ("raise", "skip")


class BadRowError(ValueError):
    """A row that cannot become a record; the message names the file and row."""


class ImageTooLargeError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class BadRow:
    file: str
    row: int
    reason: str


@dataclasses.dataclass
class LoadResult:
    """Records loaded, and the rows left out with `on_bad_row="skip"`."""

    records: list[Record]
    skipped: list[BadRow]


class _Bad(Exception):
    """Internal: why the current row is bad (wrapped with file and row by the caller)."""


# ---------------------------------------------------------------------------------------------
# Images


def _open_checked(source: bytes | str | os.PathLike, max_pixels: int) -> Image.Image:
    """Opens an image lazily and checks its header size against `max_pixels`."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLargeError(f"image of {w}x{h} = {w * h} px exceeds max_pixels={max_pixels}")
    return img


def load_figure(record_or_figure: Record | Any, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The map image as an RGB `PIL.Image.Image`, for any figure kind.

    Accepts a record or a figure: a PIL image, PNG/JPEG bytes, a file path, a base64 string, or
    a Hugging Face image dict `{"bytes": ..., "path": ...}`. Raises `ImageTooLargeError` above
    `max_pixels` pixels (checked before decoding) and `ValueError` for undecodable data.
    """
    fig = record_or_figure.figure if isinstance(record_or_figure, Record) else record_or_figure
    if isinstance(fig, Image.Image):
        w, h = fig.size
        if w * h > max_pixels:
            raise ImageTooLargeError(
                f"image of {w}x{h} = {w * h} px exceeds max_pixels={max_pixels}"
            )
        return fig if fig.mode == "RGB" else fig.convert("RGB")
    if isinstance(fig, dict):
        fig = fig.get("bytes") or fig.get("path")
    if isinstance(fig, str) and not os.path.exists(fig):
        try:
            fig = base64.b64decode(fig, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"figure is neither an existing path nor base64: {fig[:80]!r}") from e
    if not isinstance(fig, (bytes, str, os.PathLike)):
        raise ValueError(f"unsupported figure type {type(fig).__name__}")
    try:
        with _open_checked(fig, max_pixels) as img:
            return img.convert("RGB")
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image: {e}") from e


def _checked_figure(value: Any, base: Path, max_pixels: int, embedded: bool) -> bytes | str:
    """The row's figure as bytes (embedded images) or an absolute path, verified decodable."""
    if value is None:
        raise _Bad("missing image (figure is null)")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if value is None:
            raise _Bad("missing image (figure has neither bytes nor path)")
    if isinstance(value, str) and embedded:
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _Bad(f"figure is not valid base64 ({e})") from e
    if isinstance(value, str):
        path = (base / value).resolve() if not os.path.isabs(value) else Path(value)
        if not path.is_file():
            raise _Bad(f"missing image file {value!r} (looked for {path})")
        value = str(path)
    elif not isinstance(value, bytes):
        raise _Bad(f"figure has unsupported type {type(value).__name__}")
    try:
        with _open_checked(value, max_pixels) as img:
            img.verify()
    except ImageTooLargeError as e:
        raise _Bad(str(e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise _Bad(f"undecodable image ({type(e).__name__}: {e})") from e
    return value


# ---------------------------------------------------------------------------------------------
# Fields


def _metro(value: Any, base: Path) -> dict[str, list[str]]:
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            path = (base / text).resolve() if not os.path.isabs(text) else Path(text)
            if not path.is_file():
                raise _Bad(f"metro json file {value!r} not found (looked for {path})")
            text = path.read_text(encoding="utf-8")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Bad(f"metro json is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise _Bad(f"metro json must be a dict, got {type(value).__name__}")
    metro = {str(k): [str(s) for s in v] for k, v in value.items() if v is not None}
    if not metro:
        raise _Bad("metro json has no lines")
    return metro


def _routes(value: Any) -> dict[str, list[dict[str, Any]]]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _Bad(f"routes is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise _Bad(f"routes must be a dict, got {type(value).__name__}")
    out = {}
    for key, plan in value.items():
        if plan is None:
            continue
        sections = []
        for s in plan:
            missing = [k for k in ("route_name", "departure_stop", "arrival_stop") if not s.get(k)]
            if missing:
                raise _Bad(f"routes[{key!r}] has a section without {missing}")
            via = [str(v) for v in (s.get("via_stops") or [])]
            num = s.get("num_via_stops")
            sections.append(
                {
                    "route_name": str(s["route_name"]),
                    "departure_stop": str(s["departure_stop"]),
                    "arrival_stop": str(s["arrival_stop"]),
                    "via_stops": via,
                    "num_via_stops": int(num) if num is not None else len(via),
                }
            )
        out[str(key)] = sections
    return out


def _require(row: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if row.get(n) is None or row.get(n) == ""]
    if missing:
        raise _Bad(f"missing field(s) {missing}")


def _int(row: dict[str, Any], name: str, default: int = 0) -> int:
    value = row.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise _Bad(f"field {name!r} is not an integer: {value!r}") from e


def _check_stations(row: dict[str, Any], metro: dict[str, list[str]]) -> None:
    """The named stations are stations of the metro dict as the official scorer compares
    names (`cleaner.clean_rm`: case, spaces and bracketed notes ignored, so "坝堰站" names
    "坝堰（机场）站"); a row failing this cannot be answered correctly."""
    known = {clean_rm(s) for stations in metro.values() for s in stations}
    for key in ("station_1", "station_2"):
        name = row.get(key)
        if name is not None and clean_rm(str(name)) not in known:
            raise _Bad(f"{key} {name!r} is not a station of the metro json")


def _common(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "station_1": row.get("station_1"),
        "station_2": row.get("station_2"),
        "difficulty_city": row.get("difficulty_city") or "easy",
        "difficulty_question": row.get("difficulty_question") or "easy",
        "question_transfer_count": _int(row, "question_transfer_count"),
        "city_line_count": _int(row, "city_line_count"),
        "city_transfer_count": _int(row, "city_transfer_count"),
        "country": row.get("country") or "",
        "city": row.get("city") or "",
    }


def long_template(question_long: str) -> str:
    """`long_num_via` when the long question asks for "Number of Via Stops:" (with the colon,
    exactly the official test), else `long_via`."""
    return "long_num_via" if "Number of Via Stops:" in question_long else "long_via"


# ---------------------------------------------------------------------------------------------
# Row converters: row dict -> records (raise _Bad)

RowFn = Callable[[dict[str, Any], str, Path, int], list[Record]]


def _reasonmap_row(row: dict[str, Any], uid: str, base: Path, max_pixels: int) -> list[Record]:
    _require(row, "question_short", "question_long", "station_1", "station_2", "json")
    metro = _metro(row["json"], base)
    _check_stations(row, metro)
    figure = _checked_figure(row["figure"], base, max_pixels, embedded=True)
    routes = _routes(row.get("routes"))
    common = _common(row)
    return [
        Record(
            uid=f"{uid}:{kind}",
            type="planning",
            question=row[column],
            answer=None,
            figure=figure,
            metro=metro,
            routes=routes,
            template=template,
            source="reasonmap",
            **common,
        )
        for kind, column, template in (
            ("short", "question_short", "short"),
            ("long", "question_long", long_template(row["question_long"])),
        )
    ]


def _vqa_row(source: str, types: tuple[str, ...], need_metro: bool) -> RowFn:
    def convert(row: dict[str, Any], uid: str, base: Path, max_pixels: int) -> list[Record]:
        _require(row, "question", "type", *(("json",) if need_metro else ()))
        qtype = row["type"]
        if qtype not in types:
            raise _Bad(f"unknown question type {qtype!r}; expected one of {types}")
        if qtype != "planning":
            _require(row, "answer")
        metro = _metro(row["json"], base) if row.get("json") is not None else {}
        if metro:
            _check_stations(row, metro)
        figure = _checked_figure(row["figure"], base, max_pixels, embedded=False)
        is_planning = qtype == "planning"
        template = "vqa"
        if is_planning:
            q = row["question"]
            template = "short" if "Via Stops" not in q else long_template(q)
        return [
            Record(
                uid=uid,
                type=qtype,
                question=row["question"],
                answer=None if is_planning else _int(row, "answer"),
                figure=figure,
                metro=metro,
                routes=_routes(row.get("routes")),
                template=template,
                source=source,
                **_common(row),
            )
        ]

    return convert


def _parquet_files(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no .parquet files under {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no such parquet file or directory: {path}")
    return [path]


def _iter_rows(file: Path) -> Iterator[dict[str, Any]]:
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise ValueError(f"{file}: not a readable parquet file ({e})") from e
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
        yield from batch.to_pylist()


def _load(
    path: str | os.PathLike,
    convert: RowFn,
    source: str,
    root: str | os.PathLike | None,
    max_pixels: int,
    on_bad_row: str,
) -> LoadResult:
    if on_bad_row not in _ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {_ON_BAD_ROW}, got {on_bad_row!r}")
    records: list[Record] = []
    skipped: list[BadRow] = []
    for file in _parquet_files(path):
        base = Path(root) if root is not None else file.parent
        for i, row in enumerate(_iter_rows(file)):
            try:
                records.extend(convert(row, f"{source}:{file.stem}:{i}", base, max_pixels))
            except (_Bad, ValueError) as e:  # ValueError: e.g. a Record rejecting a label
                if on_bad_row == "raise":
                    raise BadRowError(f"{file}: row {i}: {e}") from e
                skipped.append(BadRow(str(file), i, str(e)))
    return LoadResult(records, skipped)


def load_reasonmap(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_bad_row: str = "raise",
) -> LoadResult:
    """ReasonMap parquet file(s) (a file or a directory of them): 2 planning records per row.

    Figures become PNG bytes. Record uids are `reasonmap:<file stem>:<row>:short|long`.
    """
    return _load(path, _reasonmap_row, "reasonmap", None, max_pixels, on_bad_row)


def load_reasonmap_plus(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_bad_row: str = "raise",
) -> LoadResult:
    """ReasonMap-Plus parquet file(s): one VQA record per row (types TorF1..Counting3).

    Relative figure / metro paths resolve against `root` (default: the parquet file's folder);
    figures become absolute paths. `json` is optional here.
    """
    return _load(
        path,
        _vqa_row("reasonmap_plus", PLUS_TYPES, False),
        "reasonmap_plus",
        root,
        max_pixels,
        on_bad_row,
    )


def load_reasonmap_train(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_bad_row: str = "raise",
) -> LoadResult:
    """ReasonMap-Train parquet file(s): one record per row, any of the six types.

    As `load_reasonmap_plus`, but `json` (inline or a path) is required: the planning reward
    checks routes against it.
    """
    return _load(
        path,
        _vqa_row("reasonmap_train", TASK_TYPES, True),
        "reasonmap_train",
        root,
        max_pixels,
        on_bad_row,
    )
