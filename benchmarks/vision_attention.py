"""Vision tower on one packed buffer of many images: all keys vs `vision_frame_span` windows.

    python benchmarks/vision_attention.py --images 16 --side 32 --repeats 5

Packs `--images` images of random sizes (each side in [side/2, side] patches, even) into one
buffer, as `rl.rollout.prepare_prompts` does for a batch whose images differ in size, and times
the jitted tower (forward, and forward + backward) with `vision_frame_span = 0` (every
full-attention query chunk reads the whole buffer) and with the smallest valid span, measured
alternately in the same process. Prints one JSON line with median seconds, the ratio, and the
largest feature difference between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardmap_jax.model import vision_layout
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import init_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=32, help="largest image side in patches")
    ap.add_argument("--chunk", type=int, default=256, help="attention query chunk")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rs = np.random.RandomState(0)
    sides = rs.randint(args.side // 4, args.side // 2 + 1, size=(args.images, 2)) * 2
    grids = np.concatenate([np.ones((args.images, 1), np.int64), sides], axis=1)
    base = get_preset(args.preset, attn_chunk=args.chunk)
    span = max(vision_layout.required_patches(g[None], base.vision) for g in grids)
    pv = rs.randn(int(np.prod(grids, 1).sum()), base.vision.patch_dim).astype(np.float32)
    vi = jax.tree.map(jnp.asarray, vision_layout.pack_vision_inputs(pv, grids, base.vision))
    runs = {}
    for name, s in (("all_keys", 0), ("frame_span", span)):
        graphdef, params = nnx.split(init_model(base.replace(vision_frame_span=s)), nnx.Param)

        def feats(p, v, graphdef=graphdef):
            return nnx.merge(graphdef, p).visual(v)

        fwd = jax.jit(feats)
        grad = jax.jit(jax.grad(lambda p, v, f=feats: jnp.sum(f(p, v) ** 2)))
        out = fwd(params, vi).block_until_ready()
        jax.block_until_ready(grad(params, vi))
        runs[name] = dict(fwd=fwd, grad=grad, params=params, out=np.asarray(out), t={})
    times: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fwd+bwd": []} for n in runs}
    for _ in range(args.repeats):  # alternate, so machine noise hits both alike
        for name, r in runs.items():
            for kind, fn in (("fwd", r["fwd"]), ("fwd+bwd", r["grad"])):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(r["params"], vi))
                times[name][kind].append(time.perf_counter() - t0)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(json.dumps({
        "images": args.images, "slots": int(vi.pixels.shape[0]),
        "real_patches": int(np.prod(grids, 1).sum()), "frame_span": span, "chunk": args.chunk,
        "seconds": med,
        "speedup": {k: med["all_keys"][k] / med["frame_span"][k] for k in ("fwd", "fwd+bwd")},
        "max_abs_feature_diff": float(np.abs(runs["all_keys"]["out"]
                                             - runs["frame_span"]["out"]).max()),
    }))


if __name__ == "__main__":
    main()
