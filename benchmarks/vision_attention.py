"""Vision tower on one packed buffer of many images: all keys vs `vision_frame_span` windows.

    python benchmarks/vision_attention.py --images 16 --side 32 --repeats 5

Packs `--images` images of random sizes (each side in [side/2, side] patches, even) into one
buffer, as `rl.rollout.prepare_prompts` does for a batch whose images differ in size, and times
the jitted tower (forward, and forward + backward) with `vision_frame_span = 0` (every
full-attention query chunk reads the whole buffer) and with the smallest valid span, interleaved
through `benchmarks/harness.py` (median and spread, per-round ratios, load average). Prints one
JSON line with the timings, the ratios and the largest feature difference between the two, and
a Markdown row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from rewardmap_jax.model import vision_layout  # noqa: E402
from rewardmap_jax.model.config import get_preset  # noqa: E402
from rewardmap_jax.model.qwen2_5_vl import init_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=32, help="largest image side in patches")
    ap.add_argument("--chunk", type=int, default=256, help="attention query chunk")
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    harness.check_arguments(args)
    rs = np.random.RandomState(0)
    sides = rs.randint(args.side // 4, args.side // 2 + 1, size=(args.images, 2)) * 2
    grids = np.concatenate([np.ones((args.images, 1), np.int64), sides], axis=1)
    base = get_preset(args.preset, attn_chunk=args.chunk)
    span = max(vision_layout.required_patches(g[None], base.vision) for g in grids)
    pv = rs.randn(int(np.prod(grids, 1).sum()), base.vision.patch_dim).astype(np.float32)
    vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(pv, grids, base.vision))
    fns, feats_out = {}, {}
    for name, s in (("all_keys", 0), ("frame_span", span)):
        graphdef, params = nnx.split(init_model(base.replace(vision_frame_span=s)), nnx.Param)

        def feats(p, v, graphdef=graphdef):
            return nnx.merge(graphdef, p).visual(v)

        fwd = jax.jit(feats)
        grad = jax.jit(jax.grad(lambda p, v, f=feats: jnp.sum(f(p, v) ** 2)))
        feats_out[name] = np.asarray(fwd(params, vi))
        fns[f"{name}_fwd"] = lambda r, f=fwd, p=params: jax.block_until_ready(f(p, vi))
        fns[f"{name}_fwd+bwd"] = lambda r, f=grad, p=params: jax.block_until_ready(f(p, vi))
    tm = harness.interleave(fns, args.repeats, **harness.limits(args))
    speedup = {k: tm.ratio(f"all_keys_{k}", f"frame_span_{k}") for k in ("fwd", "fwd+bwd")}
    result = {
        "bench": "vision_attention", "images": args.images, "slots": int(vi.pixels.shape[0]),
        "real_patches": int(np.prod(grids, 1).sum()), "frame_span": span, "chunk": args.chunk,
        "speedup": speedup,
        "max_abs_feature_diff": float(np.abs(feats_out["all_keys"]
                                             - feats_out["frame_span"]).max()),
    }
    wall = tm.as_dict()["wall_s"]
    row = [f"{args.images} images, {result['slots']} slots, span {span}",
           *(harness.spread(wall[n]) for n in fns),
           *(harness.spread(speedup[k]) + "x" for k in speedup),
           f"{tm.load_before[0]:.2f} / {tm.load_after[0]:.2f}"]
    return harness.emit(result, tm, args, row)


if __name__ == "__main__":
    sys.exit(main())
