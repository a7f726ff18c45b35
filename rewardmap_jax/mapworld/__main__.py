"""Writes map-world maps (PNG) and their questions (JSONL) for a person to inspect.

    python -m rewardmap_jax.mapworld --out /tmp/mapworld --n 20 --seed 0 [--preset tiny]

Record i has type TYPES[i % 6]. Each JSONL line is the record as a real-format row (`json` for the
metro dict, `figure` the PNG's file name) plus `reference_answer`, the answer a perfect model
would write.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rewardmap_jax.mapworld.generator import PRESETS, SPLITS, generate_records, get_world
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.mapworld.records import TASK_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write map-world maps and questions.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=20, help="number of questions")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--types", nargs="+", default=list(TASK_TYPES), choices=TASK_TYPES)
    parser.add_argument("--highlight", action="store_true", help="mark the named stations")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    world = get_world(args.preset, seed=args.seed, highlight=args.highlight)
    records = generate_records(world, args.split, args.n, task_types=args.types)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "questions.jsonl", "w", encoding="utf-8") as f:
        for i, rec in enumerate(records):
            name = f"{i:05d}_{rec.type}.png"
            rec.figure.save(args.out / name)
            row = rec.to_row(figure=name)
            row["reference_answer"] = answer_text(rec)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} questions and maps to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
