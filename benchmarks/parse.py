"""Host parsing speed: 1,024 map-world completions -> reward arrays, ms per 1,000 (one core).

    python benchmarks/parse.py [--n 1024] [--repeats 5] [--world small] [--pin]

Completions: each record's reference answer plus mutations (wrong stop, extra section, chatter
around the plan, wrong VQA option), G=4 per record as in training, plus a worst-case batch of
20,000-character completions. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from configs.curriculum import get_config  # noqa: E402
from rewardmap_jax.mapworld.generator import generate_records  # noqa: E402
from rewardmap_jax.mapworld.questions import answer_text  # noqa: E402
from rewardmap_jax.rewards import tables, text  # noqa: E402
from rewardmap_jax.rewards.parse import ParseSpec, parse_batch  # noqa: E402
from rewardmap_jax.rewards.tables import TablesCache  # noqa: E402


def completions(world: str, n: int, group: int, seed: int = 0):
    rng = random.Random(seed)
    records = generate_records(world, "train", max(1, n // group))
    recs, texts = [], []
    for r in records:
        ref = answer_text(r)
        for g in range(group):
            kind = (g + rng.randrange(4)) % 4
            if kind == 0:
                t = ref
            elif kind == 1:
                t = "Let me read the map carefully before answering.\n" * 6 + ref
            elif kind == 2 and r.type == "planning":
                t = ref + "\n--\n" + ref.split("\n--\n")[-1]
            elif r.type == "planning":
                t = ref.replace("Departure Stop: ", "Departure Stop: X", 1)
            else:
                t = rng.choice(["\\boxed{yes}", "\\boxed{B}", "The answer is 3.", "\\boxed{no}"])
            recs.append(r)
            texts.append(t)
    return recs[:n], texts[:n]


def measure(recs, texts, spec, repeats: int, level: str) -> tuple[float, float]:
    """Best (wall, CPU) ms per 1,000 completions over `repeats` runs.

    level: "cold" (every cache cleared before each run), "new_records" (record tables rebuilt,
    memoised names/cities kept: a training step whose records are new questions on recurring
    maps), "warm" (tables of these very records cached). CPU time (`time.process_time`) is the
    robust figure on a shared machine: it excludes time spent waiting for a core.
    """
    best_wall = best_cpu = float("inf")
    cache = TablesCache()
    for _ in range(repeats):
        if level != "warm":
            cache = TablesCache()
        if level == "cold":
            text.clean_rw.cache_clear()
            text.clean_rm.cache_clear()
            tables.metro_tables_cache_clear()
        w0, c0 = time.perf_counter(), time.process_time()
        parse_batch(recs, texts, spec, cache)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    scale = 1000.0 * 1000.0 / len(texts)
    return best_wall * scale, best_cpu * scale


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--world", default="small")
    ap.add_argument("--pin", action="store_true", help="pin this process to one CPU core")
    args = ap.parse_args()
    if args.pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    spec = ParseSpec.from_config(get_config().reward)
    recs, texts = completions(args.world, args.n, args.group)
    long_texts = [(t * (20_000 // max(1, len(t)) + 1))[:20_000] for t in texts]
    for name, batch, level, repeats in (
        ("cold", texts, "cold", args.repeats),
        ("new_records", texts, "new_records", args.repeats),
        ("warm", texts, "warm", args.repeats),
        ("cold_20k_chars", long_texts, "cold", 1),
    ):
        wall, cpu = measure(recs, batch, spec, repeats, level)
        row = {"bench": "parse", "case": name, "world": args.world, "n": len(batch)}
        row["mean_chars"] = round(sum(map(len, batch)) / len(batch))
        row.update(wall_ms_per_1000=round(wall, 2), cpu_ms_per_1000=round(cpu, 2))
        print(json.dumps(row))


if __name__ == "__main__":
    main()
