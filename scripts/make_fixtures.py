"""Writes the loader test fixtures under tests/fixtures/ (deterministic; rerun on format changes).

    python scripts/make_fixtures.py [--out tests/fixtures]

Everything is made from the map world in the real file formats (rewardmap.md §1-§3); nothing is
copied from the real datasets. Layout:

    reasonmap/reasonmap-validation.parquet       ReasonMap rows (base64 PNG, struct json/routes)
    reasonmap_plus/test.parquet + maps/           ReasonMap-Plus rows (figure paths, inline json)
    reasonmap_train/train.parquet + maps/ stations/  ReasonMap-Train rows (json file paths)
    bad/{reasonmap,plus,train}_bad.parquet        row 0 good, rows 1.. one defect each (see BAD)
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rewardmap_jax.mapworld.export import plus_rows, reasonmap_rows, train_rows, write_parquet
from rewardmap_jax.mapworld.generator import get_world
from rewardmap_jax.mapworld.records import PLUS_TYPES, TASK_TYPES

SPLIT = "test"
# The defect of each bad row, in row order (row 0 of each bad file is good).
BAD = {
    "reasonmap": [
        "figure is null",
        "figure is not an image",
        "station_1 is null",
        "station_2 not in json",
    ],
    "plus": [
        "figure file missing",
        "figure file corrupt",
        "question is null",
        "station_1 not in json",
    ],
    "train": ["json file missing", "unknown type", "answer is null", "difficulty_city invalid"],
}


def write_fixtures(out: Path) -> None:
    tiny, small = get_world("tiny"), get_world("small")
    rm = reasonmap_rows(tiny, SPLIT, [0, 1]) + reasonmap_rows(small, SPLIT, [2, 3])
    write_parquet(rm, out / "reasonmap" / "reasonmap-validation.parquet")

    plus_dir = out / "reasonmap_plus"
    items = [(i, t) for i, t in enumerate(PLUS_TYPES * 2)]
    write_parquet(plus_rows(tiny, SPLIT, items, plus_dir), plus_dir / "test.parquet")

    train_dir = out / "reasonmap_train"
    items = [(i, t) for i, t in enumerate(TASK_TYPES * 2)]
    write_parquet(train_rows(small, SPLIT, items, train_dir), train_dir / "train.parquet")

    bad_dir = out / "bad"
    good = reasonmap_rows(tiny, SPLIT, [5])[0]
    rows = [dict(good) for _ in range(5)]
    rows[1]["figure"] = None
    rows[2]["figure"] = base64.b64encode(b"this is not a PNG file").decode("ascii")
    rows[3]["station_1"] = None
    rows[4]["station_2"] = "Nowhere"
    write_parquet(rows, bad_dir / "reasonmap_bad.parquet")

    good = plus_rows(tiny, SPLIT, [(5, "TorF1")], bad_dir)[0]
    (bad_dir / "maps" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = [dict(good) for _ in range(5)]
    rows[1]["figure"] = "./maps/missing.png"
    rows[2]["figure"] = "./maps/corrupt.png"
    rows[3]["question"] = None
    rows[4]["station_1"] = "Nowhere"
    write_parquet(rows, bad_dir / "plus_bad.parquet")

    good = train_rows(tiny, SPLIT, [(6, "TorF2")], bad_dir)[0]
    rows = [dict(good) for _ in range(5)]
    rows[1]["json"] = "./stations/missing.json"
    rows[2]["type"] = "Counting9"
    rows[3]["answer"] = None
    rows[4]["difficulty_city"] = "extreme"
    write_parquet(rows, bad_dir / "train_bad.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    args = parser.parse_args()
    for name in ("reasonmap", "reasonmap_plus", "reasonmap_train", "bad"):
        shutil.rmtree(args.out / name, ignore_errors=True)
    write_fixtures(args.out)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote fixtures under {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
