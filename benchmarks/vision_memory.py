"""Peak memory of the vision tower on one large image (CPU), showing no N x N allocation.

    python benchmarks/vision_memory.py --side 128            # 128x128 patches = 16,384 patches
    python benchmarks/vision_memory.py --side 128 --dense    # compile-only estimate with one chunk

Reports, as one JSON line: XLA's compiled temp-buffer size for the jitted tower, the process peak
RSS after running it, and the size one (heads, N, N) fp32 logits array would have had.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardmap_jax.model import vision_layout
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import init_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--side", type=int, default=128, help="image side in patches (even)")
    ap.add_argument("--chunk", type=int, default=512, help="attention query chunk")
    ap.add_argument("--dense", action="store_true",
                    help="one chunk over all queries (N x N logits); compile only, not run")
    args = ap.parse_args()
    n = args.side * args.side
    cfg = get_preset(args.preset, attn_chunk=n if args.dense else args.chunk)
    model = init_model(cfg)
    grid = np.array([[1, args.side, args.side]])
    pv = np.random.RandomState(0).randn(n, cfg.vision.patch_dim).astype(np.float32)
    vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(pv, grid, cfg.vision))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, v: nnx.merge(graphdef, s).visual(v))
    compiled = fwd.lower(state, vi).compile()
    mem = compiled.memory_analysis()
    out = {
        "preset": args.preset, "patches": n, "buffer_slots": int(vi.pixels.shape[0]),
        "attn_chunk": cfg.attn_chunk,
        "xla_temp_MiB": round(mem.temp_size_in_bytes / 2**20, 1),
        "nxn_logits_MiB": round(cfg.vision.num_heads * n * n * 4 / 2**20, 1),
    }
    if not args.dense:
        t0 = time.perf_counter()
        y = compiled(state, vi)
        y.block_until_ready()
        out["run_s"] = round(time.perf_counter() - t0, 2)
        out["finite"] = bool(np.isfinite(np.asarray(y)).all())
        out["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
