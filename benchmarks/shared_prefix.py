"""Shared vs repeated sequence layout of the GRPO update (`model/sequence.py`).

    python benchmarks/shared_prefix.py                    # tiny-wide step: time + memory
    python benchmarks/shared_prefix.py --flops            # + 3B/7B update FLOPs (compile only)
    python benchmarks/shared_prefix.py --flops --no-time  # FLOPs only
    python benchmarks/shared_prefix.py --no-run           # tiny-wide memory only (no timing)

**Step** (CPU, one process): the trainer's own `rl.steps.make_grpo_step` (vision tower, decoder,
chunked log-probs, GRPO loss with KL and entropy, grad, clip + AdamW) on the `tiny-wide` model
of `benchmarks/memory.py` (text hidden 768, 4 layers, vocab 8192; vision hidden 192, depth 4),
fp32, remat `full` (the real presets' setting; the XLA flag of `memory.REMAT_XLA_FLAGS` keeps
the CPU executable rematerialising). One prompt of 4,096 tokens with a 64x64-patch image
(1,024 image tokens), G = 4 completions of 512 tokens, for both layouts:

* XLA memory analysis of each compiled step (temp = activations and transients; peak =
  argument + output + temp - alias): load-independent.
* wall time of the step through `benchmarks/harness.py` (the layouts interleaved, order
  rotated every round, one warm-up call each): median and spread over `--repeats` (>= 5), the
  per-round ratio, and the harness's loaded-machine verdict (load average before, CPU used by
  other processes during the rounds); with `--strict` a loaded machine exits with status 3.

**FLOPs** (`--flops`): XLA's cost analysis of the 3B and 7B update at RewardMap's lengths
(prompt 20,480 tokens holding a 280x280-patch map = 19,600 image tokens, 2,048-token
completions, G = 4; bf16 compute, fp32 params, no remat), lowered with abstract inputs and
compiled, nothing allocated. XLA counts a loop body once whatever its trip count, so these
compiles use one attention chunk and one log-prob chunk (same FLOPs, no loop). Full depth is
slow to compile on 2 cores: each update is compiled at 1 and 2 decoder layers and at vision
depths 2 and 3 (one windowed or one full-attention block more), and the totals are
extrapolated per layer: F = F(1 text layer, 2 vision blocks) + (L - 1) f_text
+ (28 - 1) f_window + (4 - 1) f_full for the 32-block tower (28 windowed, 4 full-attention).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.memory import REMAT_XLA_FLAGS, build_batch, tiny_wide  # noqa: E402
from rewardmap_jax.config_utils import get_config  # noqa: E402
from rewardmap_jax.model import vision_layout  # noqa: E402
from rewardmap_jax.model.config import get_preset  # noqa: E402
from rewardmap_jax.model.qwen2_5_vl import abstract_model, init_model  # noqa: E402
from rewardmap_jax.model.sequence import LAYOUTS  # noqa: E402
from rewardmap_jax.rl import grpo, optim, steps  # noqa: E402

MiB = 2**20
_CONFIG = _REPO / "configs" / "curriculum.py"


def _step(graphdef, c, g: int, layout: str, chunk: int):
    tx = optim.make_optimizer(c.optim, 1)
    step = steps.make_grpo_step(graphdef, tx, grpo.GRPOLossConfig.from_config(c.rl), g,
                                chunk=chunk, layout=layout)
    return tx, step


# ---------------------------------------------------------------------------------------------
# tiny-wide: time and memory
# ---------------------------------------------------------------------------------------------


def time_and_memory(args: argparse.Namespace) -> dict[str, Any]:
    cfg = tiny_wide(args, args.layers, args.remat)
    c = get_config(_CONFIG, "qwen2_5_vl_7b")  # official RL / optimizer settings
    graphdef, params = nnx.split(init_model(cfg), nnx.Param)
    batch = build_batch(cfg, args.side, args.prompt, args.completion, args.g)
    out: dict[str, Any] = {"layouts": {}}
    compiled: dict[str, Any] = {}
    for layout in LAYOUTS:
        tx, step = _step(graphdef, c, args.g, layout, int(c.rl.logprob_chunk))
        opt_state = tx.init(params)
        t0 = time.perf_counter()
        exe = step.lower(params, opt_state, batch).compile()
        ma = exe.memory_analysis()
        row = {"compile_s": time.perf_counter() - t0, "temp": ma.temp_size_in_bytes,
               "arg": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
               "alias": ma.alias_size_in_bytes}
        row["peak"] = row["arg"] + row["out"] + row["temp"] - row["alias"]
        out["layouts"][layout] = row
        compiled[layout] = (exe, opt_state)
        print(f"{layout}: compiled in {row['compile_s']:.0f} s, temp {row['temp'] / MiB:,.0f} "
              f"MiB, peak {row['peak'] / MiB:,.0f} MiB", flush=True)
    sh, rep = out["layouts"]["shared"], out["layouts"]["repeated"]
    out["temp_ratio"] = rep["temp"] / sh["temp"]
    out["peak_ratio"] = rep["peak"] / sh["peak"]
    if args.no_run:
        return out
    losses: dict[str, float] = {}

    def call(layout: str):
        def fn(r: int) -> None:
            exe, opt_state = compiled[layout]
            t0 = time.perf_counter()
            res = exe(params, opt_state, batch)
            losses[layout] = float(res[2]["loss"])  # blocks until the step is done
            print(f"round {r} {layout}: {time.perf_counter() - t0:.1f} s, loss "
                  f"{losses[layout]:.6f}", flush=True)
        return fn

    tm = harness.interleave({k: call(k) for k in LAYOUTS}, args.repeats,
                            **harness.limits(args))
    for layout in LAYOUTS:
        v = tm.wall[layout]
        out["layouts"][layout].update(median_s=statistics.median(v), min_s=min(v), max_s=max(v),
                                      cpu_s=statistics.median(tm.cpu[layout]),
                                      loss=losses[layout])
    out["speedup"] = rep["median_s"] / sh["median_s"]
    out["speedup_per_round"] = tm.ratio("repeated", "shared")
    out.update(tm.as_dict())
    out["loaded"] = tm.loaded
    return out


# ---------------------------------------------------------------------------------------------
# 3B / 7B: FLOPs at the official lengths, compile only
# ---------------------------------------------------------------------------------------------

OFFICIAL = {"prompt": 20480, "completion": 2048, "g": 4, "side": 280}


def _abstract_batch(cfg, prompt: int, completion: int, g: int, side: int) -> dict[str, Any]:
    """ShapeDtypeStructs of one prompt (stacked per-image vision buffer) and its G rows."""
    grid = np.array([[1, side, side]])
    slots = vision_layout.required_patches(grid, cfg.vision)
    sds = jax.ShapeDtypeStruct
    vision = vision_layout.VisionInputs(
        pixels=sds((1, slots, cfg.vision.patch_dim), jnp.float32),
        valid=sds((1, slots), jnp.bool_), segment_ids=sds((1, slots), jnp.int32),
        rope_pos=sds((1, slots, 2), jnp.int32),
        token_index=sds((1, slots // cfg.vision.merge_unit), jnp.int32))
    rows = (g, completion)
    return {
        "prompt_ids": sds((1, prompt), jnp.int32), "prompt_mask": sds((1, prompt), jnp.bool_),
        "positions": sds((3, 1, prompt), jnp.int32), "rope_deltas": sds((1,), jnp.int32),
        "vision": vision, "vis_offsets": sds((1,), jnp.int32),
        "completion": sds(rows, jnp.int32), "completion_mask": sds(rows, jnp.bool_),
        "old_logps": sds(rows, jnp.float32), "ref_logps": sds(rows, jnp.float32),
        "advantages": sds((g,), jnp.float32),
    }


@functools.cache
def update_flops(name: str, layout: str, text_layers: int, vision_depth: int,
                 full_blocks: tuple[int, ...]) -> float:
    base = get_preset(name, compute_dtype="bfloat16")
    o = OFFICIAL
    cfg = dataclasses.replace(
        base, remat="none", attn_chunk=1 << 20,  # one chunk: XLA counts a loop body once
        text=dataclasses.replace(base.text, num_hidden_layers=text_layers),
        vision=dataclasses.replace(base.vision, depth=vision_depth,
                                   fullatt_block_indexes=full_blocks))
    c = get_config(_CONFIG, name)
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    tx, step = _step(graphdef, c, o["g"], layout, o["completion"])
    opt_state = jax.eval_shape(tx.init, params)
    batch = _abstract_batch(cfg, o["prompt"], o["completion"], o["g"], o["side"])
    ca = step.lower(params, opt_state, batch).compile().cost_analysis()
    return float((ca[0] if isinstance(ca, list) else ca)["flops"])


def flops(models: list[str]) -> dict[str, Any]:
    out = {}
    for name in models:
        cfg = get_preset(name)
        n_full = len(cfg.vision.fullatt_block_indexes)
        n_win = cfg.vision.depth - n_full
        row: dict[str, Any] = {}
        # vision terms are the same in both layouts: measured once (shared layout)
        a = update_flops(name, "shared", 1, 2, (1,))
        win = update_flops(name, "shared", 1, 3, (2,)) - a  # one windowed block more
        full = update_flops(name, "shared", 1, 3, (1, 2)) - a  # one full-attention block more
        vision = n_win * win + n_full * full
        row["vision_block_flops"] = {"window": win, "full": full, "tower": vision}
        for layout in LAYOUTS:
            f1 = update_flops(name, layout, 1, 2, (1,))
            f2 = update_flops(name, layout, 2, 2, (1,))
            per_layer = f2 - f1
            total = f1 + (cfg.text.num_hidden_layers - 1) * per_layer + (n_win - 1) * win + (
                n_full - 1) * full
            row[layout] = {"one_layer_model": f1, "per_text_layer": per_layer, "total": total,
                           "without_vision": total - vision}
            print(f"{name} {layout}: {per_layer:.3e} FLOPs per decoder layer, total "
                  f"{total:.3e}", flush=True)
        row["ratio_total"] = row["repeated"]["total"] / row["shared"]["total"]
        row["ratio_decoder_layer"] = (row["repeated"]["per_text_layer"]
                                      / row["shared"]["per_text_layer"])
        row["ratio_without_vision"] = (row["repeated"]["without_vision"]
                                       / row["shared"]["without_vision"])
        out[name] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vision-hidden", type=int, default=192)
    ap.add_argument("--vision-depth", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--attn-chunk", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    ap.add_argument("--side", type=int, default=64, help="image side in patches (64: 1,024 "
                    "image tokens)")
    ap.add_argument("--prompt", type=int, default=4096, help="prompt tokens")
    ap.add_argument("--completion", type=int, default=512, help="tokens per completion")
    ap.add_argument("--g", type=int, default=4, help="completions per prompt")
    harness.add_arguments(ap)
    ap.add_argument("--no-time", action="store_true", help="skip the tiny-wide step")
    ap.add_argument("--no-run", action="store_true", help="tiny-wide: compile and memory only")
    ap.add_argument("--flops", action="store_true", help="3B/7B FLOPs (compile only)")
    ap.add_argument("--models", default="qwen2_5_vl_3b,qwen2_5_vl_7b")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    # read when the CPU backend starts (first computation), so setting it here is in time
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {REMAT_XLA_FLAGS}".strip()
    if not args.no_time and not args.no_run:
        harness.check_arguments(args)
    res: dict[str, Any] = {"argv": sys.argv[1:], "jax": jax.__version__}
    if not args.no_time:
        res["step"] = s = time_and_memory(args)
        for lay, r in s["layouts"].items():
            t = (f"{r['median_s']:.1f} ({r['min_s']:.1f}-{r['max_s']:.1f})"
                 if "median_s" in r else "-")
            print(f"| {lay} | {r['temp'] / MiB:,.0f} | {r['peak'] / MiB:,.0f} | {t} |")
        print(f"repeated / shared: temp {s['temp_ratio']:.2f}x, peak {s['peak_ratio']:.2f}x")
        if "speedup" in s:
            ld = s["load"]
            print(f"repeated / shared step time {s['speedup']:.2f}x (per round "
                  f"{harness.spread(s['speedup_per_round'])}); load before {ld['before'][0]}, "
                  f"after {ld['after'][0]}, other processes {ld['foreign_cores']} cores"
                  + (" (LOADED: re-measure the times on an idle machine)" if s["loaded"] else ""))
    if args.flops:
        res["flops"] = f = flops(args.models.split(","))
        for name, r in f.items():
            print(f"{name}: repeated / shared FLOPs {r['ratio_total']:.2f}x (per decoder layer "
                  f"{r['ratio_decoder_layer']:.2f}x, without the vision tower "
                  f"{r['ratio_without_vision']:.2f}x)")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return harness.EXIT_LOADED if args.strict and res.get("step", {}).get("loaded") else 0


if __name__ == "__main__":
    sys.exit(main())
