"""Input-pipeline throughput: batches/s of the Grain pipeline, and the cost of one real-size map.

    python benchmarks/pipeline.py                       # tiny map world, in-process
    python benchmarks/pipeline.py --workers 2 --batches 100
    python benchmarks/pipeline.py --world dense --batch-size 4 --batches 10
    python benchmarks/pipeline.py --real-map            # one 5,839 x 5,449 px map, official pixels
    python benchmarks/pipeline.py --real-data --workers 0 --batch-size 2 --batches 6
    python benchmarks/pipeline.py --real-data --workers 2 --batch-size 2 --batches 6

`--real-data` runs the real-data path (`data.source="reasonmap"`, the 3B preset's buckets and
pixel budget) on a copy of the ReasonMap-Train test fixture whose maps are replaced by
5,839 x 5,449 px PNGs (ReasonMap's average size; each resized to `data.max_pixels`): the
throughput a training host gets, to hold against the step rate it must feed (docs/data.md).

Prints one JSON line per measurement. The first batch (tokenizer load, worker start, map cache)
is timed separately from the steady state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402

from configs.curriculum import get_config  # noqa: E402
from rewardmap_jax.data.image_processing import ImageProcessorConfig, preprocess  # noqa: E402
from rewardmap_jax.data.pipeline import DataPipeline  # noqa: E402


def bench_pipeline(args: argparse.Namespace) -> dict:
    c = get_config("tiny")
    c.data.shard = "none"
    c.data.worker_count = args.workers
    c.data.mapworld_world = args.world
    c.data.batch_size = args.batch_size
    c.curriculum.preset = args.curriculum
    c.curriculum.repeat = True
    if args.world != "tiny":  # bigger maps: official-like buckets
        c.data.prompt_buckets = (512, 1024, 2048, 4096, 8192)
        c.data.patch_buckets = (4096, 8192, 16384, 32768, 65536)
    t0 = time.perf_counter()
    pipe = DataPipeline.from_config(c, with_targets=args.targets)
    it = pipe.iterator()
    first = next(it)
    t1 = time.perf_counter()
    shapes = set()
    for _ in range(args.batches):
        batch = next(it)
        shapes.add((batch["input_ids"].shape, batch["pixel_values"].shape))
    t2 = time.perf_counter()
    return {
        "bench": "pipeline",
        "world": args.world,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "first_batch_s": round(t1 - t0, 3),
        "batches": args.batches,
        "batches_per_s": round(args.batches / (t2 - t1), 2),
        "examples_per_s": round(args.batches * args.batch_size / (t2 - t1), 1),
        "distinct_shapes": len(shapes),
        "pixel_rows": int(first["pixel_values"].shape[0]),
        "prompt_len": int(first["input_ids"].shape[1]),
    }


def _real_size_dataset(root: Path, seed: int = 0) -> Path:
    """The ReasonMap-Train fixture with every map replaced by a 5,839 x 5,449 px PNG."""
    import shutil

    from PIL import Image

    data = root / "reasonmap_train"
    shutil.copytree(_REPO / "tests" / "fixtures" / "reasonmap_train", data)
    rng = np.random.default_rng(seed)
    for f in sorted((data / "maps").rglob("*.png")):
        blocks = rng.integers(0, 256, (5449 // 16, 5839 // 16, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((5839, 5449), Image.Resampling.NEAREST).save(f)
    return data


def bench_real_data(args: argparse.Namespace) -> dict:
    import os
    import tempfile

    real = get_config("qwen2_5_vl_3b").data
    with tempfile.TemporaryDirectory() as tmp:
        c = get_config("tiny")
        for k in ("prompt_buckets", "patch_buckets", "answer_buckets", "min_pixels",
                  "max_pixels", "pixel_dtype"):
            c.data[k] = real[k]
        c.data.source = "reasonmap"
        c.data.reasonmap_train_dir = str(_real_size_dataset(Path(tmp)))
        c.data.shard = "none"
        c.data.worker_count = args.workers
        c.data.batch_size = args.batch_size
        c.curriculum.preset = "official"
        c.curriculum.stages = ()
        c.curriculum.repeat = True
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        it = DataPipeline.from_config(c).iterator()
        first = next(it)
        t1 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        t2 = time.perf_counter()
    per_batch = (t2 - t1) / args.batches
    return {
        "bench": "real_data", "workers": args.workers, "batch_size": args.batch_size,
        "batches": args.batches, "first_batch_s": round(t1 - t0, 2),
        "seconds_per_batch": round(per_batch, 2),
        "seconds_per_map": round(per_batch / args.batch_size, 2),
        "patch_rows": int(first["pixel_values"].shape[0]),
        "load_before": load, "load_after": os.getloadavg()[0],
    }


def bench_real_map(args: argparse.Namespace) -> dict:
    from PIL import Image

    h, w = 5449, 5839  # ReasonMap's average map size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST)
    cfg = ImageProcessorConfig(max_pixels=args.max_pixels)
    t0 = time.perf_counter()
    rows, grid = preprocess(image, cfg)
    dt = time.perf_counter() - t0
    return {
        "bench": "real_map",
        "size": [h, w],
        "max_pixels": args.max_pixels,
        "grid_thw": grid.tolist(),
        "patch_rows": int(rows.shape[0]),
        "image_tokens": int(rows.shape[0] // 4),
        "pixel_values_mb": round(rows.nbytes / 2**20, 1),
        "seconds": round(dt, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--world", default="tiny")
    p.add_argument("--curriculum", default="shuffled")
    p.add_argument("--targets", action="store_true", help="also build SFT targets")
    p.add_argument("--real-map", action="store_true", help="time one real-size map instead")
    p.add_argument("--max-pixels", type=int, default=12845056)
    p.add_argument("--real-data", action="store_true",
                   help="the real-data pipeline on real-size maps (see the module docstring)")
    args = p.parse_args()
    if args.real_data:
        result = bench_real_data(args)
    else:
        result = bench_real_map(args) if args.real_map else bench_pipeline(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
