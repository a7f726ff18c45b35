"""Real-format loaders on the committed fixtures, including every bad-row case in both modes."""

from __future__ import annotations

import base64
import importlib.util
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rewardmap_jax.mapworld import generator, loaders
from rewardmap_jax.mapworld.records import PLUS_TYPES, TASK_TYPES

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
REASONMAP = FIX / "reasonmap" / "reasonmap-validation.parquet"
PLUS = FIX / "reasonmap_plus" / "test.parquet"
TRAIN = FIX / "reasonmap_train" / "train.parquet"
BAD = FIX / "bad"


def _pixels(image) -> np.ndarray:
    return np.asarray(loaders.load_figure(image))


def test_reasonmap_rows_expand_to_short_and_long_planning_records():
    result = loaders.load_reasonmap(REASONMAP)
    assert result.skipped == []
    recs = result.records
    assert len(recs) == 8
    # The fixture rows are map-world questions: (world, index) per row, see make_fixtures.py.
    sources = [("tiny", 0), ("tiny", 1), ("small", 2), ("small", 3)]
    union = set(pq.read_schema(REASONMAP).field("json").type.names)
    for k, (world, index) in enumerate(sources):
        short, long = recs[2 * k], recs[2 * k + 1]
        expected = generator.make_record(world, "test", index, "planning", template="short")
        assert short.uid.endswith(f":{k}:short") and long.uid.endswith(f":{k}:long")
        assert short.template == "short"
        assert long.template == ("long_num_via", "long_via")[index % 2]
        assert "Via Stops" in long.question and "Via Stops" not in short.question
        for rec in (short, long):
            assert rec.type == "planning" and rec.answer is None and rec.source == "reasonmap"
            assert rec.metro == expected.metro  # null-valued union keys dropped
            assert rec.routes == expected.routes
            assert (rec.station_1, rec.station_2) == (expected.station_1, expected.station_2)
            assert rec.difficulty_city == expected.difficulty_city
            assert rec.question_transfer_count == expected.question_transfer_count
            assert isinstance(rec.figure, bytes)
            assert np.array_equal(_pixels(rec), _pixels(expected.figure))
        assert set(short.metro) < union  # the struct really carried other maps' lines


def test_plus_rows_with_figure_paths_and_inline_json():
    result = loaders.load_reasonmap_plus(PLUS)
    recs = result.records
    assert result.skipped == [] and len(recs) == 10
    for i, rec in enumerate(recs):
        expected = generator.make_record("tiny", "test", i, PLUS_TYPES[i % 5])
        assert rec.type == expected.type and rec.answer == expected.answer
        assert rec.question == expected.question and rec.metro == expected.metro
        assert rec.template == "vqa" and rec.source == "reasonmap_plus"
        assert Path(rec.figure).is_absolute() and Path(rec.figure).is_file()
        assert np.array_equal(_pixels(rec), _pixels(expected.figure))


def test_train_rows_with_metro_json_files_and_all_types():
    recs = loaders.load_reasonmap_train(TRAIN).records
    assert [r.type for r in recs] == list(TASK_TYPES) * 2
    for i, rec in enumerate(recs):
        expected = generator.make_record("small", "test", i, TASK_TYPES[i % 6])
        assert rec.metro == expected.metro and rec.answer == expected.answer
        assert rec.routes == expected.routes and rec.template == expected.template
        assert rec.question_transfer_count == expected.question_transfer_count


def test_root_argument_resolves_relative_paths(tmp_path):
    table = pq.read_table(PLUS)
    pq.write_table(table, tmp_path / "moved.parquet")
    with pytest.raises(loaders.BadRowError, match="missing image file"):
        loaders.load_reasonmap_plus(tmp_path / "moved.parquet")
    recs = loaders.load_reasonmap_plus(tmp_path / "moved.parquet", root=PLUS.parent).records
    assert len(recs) == 10


BAD_CASES = [
    ("reasonmap", 1, "missing image"),
    ("reasonmap", 2, "undecodable image"),
    ("reasonmap", 3, "missing field(s) ['station_1']"),
    ("reasonmap", 4, "station_2 'Nowhere' is not a station of the metro json"),
    ("plus", 1, "missing image file './maps/missing.png'"),
    ("plus", 2, "undecodable image"),
    ("plus", 3, "missing field(s) ['question']"),
    ("plus", 4, "station_1 'Nowhere' is not a station of the metro json"),
    ("train", 1, "metro json file './stations/missing.json' not found"),
    ("train", 2, "unknown question type 'Counting9'"),
    ("train", 3, "missing field(s) ['answer']"),
    ("train", 4, "difficulty_city 'extreme'"),
]
LOADERS = {
    "reasonmap": loaders.load_reasonmap,
    "plus": loaders.load_reasonmap_plus,
    "train": loaders.load_reasonmap_train,
}
GOOD_RECORDS = {"reasonmap": 2, "plus": 1, "train": 1}  # from row 0 of each bad file


def _load(kind, path, **kw):
    if kind != "reasonmap":
        kw.setdefault("root", BAD)
    return LOADERS[kind](path, **kw)


@pytest.mark.parametrize(("kind", "row", "reason"), BAD_CASES)
def test_bad_row_raises_naming_file_and_row(kind, row, reason, tmp_path):
    table = pq.read_table(BAD / f"{kind}_bad.parquet")
    path = tmp_path / f"{kind}_case{row}.parquet"
    pq.write_table(table.take([0, row]), path)  # a good row first, then the bad one
    with pytest.raises(loaders.BadRowError) as err:
        _load(kind, path)
    message = str(err.value)
    assert message.startswith(f"{path}: row 1: ")
    assert reason in message


@pytest.mark.parametrize("kind", ["reasonmap", "plus", "train"])
def test_bad_rows_are_skipped_and_counted(kind):
    result = _load(kind, BAD / f"{kind}_bad.parquet", on_bad_row="skip")
    assert len(result.records) == GOOD_RECORDS[kind]
    assert [b.row for b in result.skipped] == [1, 2, 3, 4]
    expected = [reason for k, _, reason in BAD_CASES if k == kind]
    for bad, reason in zip(result.skipped, expected, strict=True):
        assert reason in bad.reason and bad.file == str(BAD / f"{kind}_bad.parquet")
    with pytest.raises(loaders.BadRowError, match="row 1: "):
        _load(kind, BAD / f"{kind}_bad.parquet")


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_bad_row"):
        loaders.load_reasonmap(REASONMAP, on_bad_row="ignore")
    with pytest.raises(FileNotFoundError, match="nowhere.parquet"):
        loaders.load_reasonmap(FIX / "nowhere.parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        loaders.load_reasonmap(BAD / "maps" / "corrupt.png")


def test_pixel_limit_applies_to_rows_and_figures():
    with pytest.raises(loaders.BadRowError, match="exceeds max_pixels=100"):
        loaders.load_reasonmap(REASONMAP, max_pixels=100)
    skipped = loaders.load_reasonmap(REASONMAP, max_pixels=100, on_bad_row="skip").skipped
    assert len(skipped) == 4
    rec = loaders.load_reasonmap(REASONMAP).records[0]
    with pytest.raises(loaders.ImageTooLargeError, match="84x84 = 7056 px"):
        loaders.load_figure(rec, max_pixels=7055)
    assert loaders.load_figure(rec, max_pixels=7056).size == (84, 84)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pillow_bomb_guard_is_replaced_by_the_pixel_limit():
    huge = _png_header_only(20_000, 20_000)  # 400 Mpx: over twice Pillow's default limit
    with pytest.raises(loaders.ImageTooLargeError, match="exceeds max_pixels"):
        loaders.load_figure(huge, max_pixels=10**8)
    # Above our limit's reach the header opens (no DecompressionBombError); the data is absent.
    with pytest.raises(ValueError, match="cannot decode image"):
        loaders.load_figure(huge, max_pixels=10**9)


def test_load_figure_accepts_every_figure_kind(tmp_path):
    image = generator.make_record("tiny", "test", 0, "TorF1").figure
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    (tmp_path / "map.png").write_bytes(data)
    kinds = [
        image,
        image.convert("RGBA"),
        data,
        str(tmp_path / "map.png"),
        tmp_path / "map.png",
        base64.b64encode(data).decode(),
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(tmp_path / "map.png")},
    ]
    for fig in kinds:
        out = loaders.load_figure(fig)
        assert isinstance(out, Image.Image) and out.mode == "RGB"
        assert np.array_equal(np.asarray(out), np.asarray(image))
    with pytest.raises(ValueError, match="neither an existing path nor base64"):
        loaders.load_figure(str(tmp_path / "absent.png"))
    with pytest.raises(ValueError, match="unsupported figure type"):
        loaders.load_figure(12345)


def _make_fixtures_module():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", ROOT / "scripts/make_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixtures_are_deterministic_and_match_the_committed_ones(tmp_path):
    make = _make_fixtures_module()
    make.write_fixtures(tmp_path / "a")
    make.write_fixtures(tmp_path / "b")
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    committed = sorted(p.relative_to(FIX) for p in FIX.rglob("*") if p.is_file())
    assert files == committed
    total = 0
    for rel in files:
        a, b, c = (tmp_path / "a" / rel), (tmp_path / "b" / rel), FIX / rel
        assert a.read_bytes() == b.read_bytes(), rel
        total += c.stat().st_size
        if rel.suffix == ".parquet":
            assert pq.read_table(a).equals(pq.read_table(c)), rel
        elif rel.name != "corrupt.png" and rel.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c))), rel
        else:
            assert a.read_bytes() == c.read_bytes(), rel
    assert total < 1_000_000


def test_station_check_follows_the_official_cleaner(tmp_path):
    """Named stations match the metro dict as the official scorer compares names (case,
    spaces and bracketed notes ignored): such rows load; a truly unknown name is a bad row."""
    from rewardmap_jax.mapworld.export import reasonmap_rows, write_parquet

    good = reasonmap_rows(generator.get_world("tiny"), "test", [5])[0]
    first_line = next(iter(good["json"]))
    rows = []
    for s1 in (good["station_1"].upper(), "  " + good["station_1"].replace(" ", "  "), "坝堰站",
               "Nowhere"):
        row = dict(good, json={**good["json"], first_line: [*good["json"][first_line],
                                                             "坝堰（机场）站"]})
        row["station_1"] = s1
        rows.append(row)
    write_parquet(rows, tmp_path / "names.parquet")
    result = loaders.load_reasonmap(tmp_path / "names.parquet", on_bad_row="skip")
    assert len(result.records) == 6  # 3 rows x (short, long)
    assert [b.row for b in result.skipped] == [3]
    assert "station_1 'Nowhere' is not a station" in result.skipped[0].reason


def test_long_template_needs_the_colon_as_the_official_code():
    assert loaders.long_template("... Number of Via Stops: <n> ...") == "long_num_via"
    # Without the colon the official scorer reads a via-stop list.
    assert loaders.long_template("... Number of Via Stops <n> ... Via Stops: x") == "long_via"
    assert loaders.long_template("... Via Stops: <list> ...") == "long_via"
