"""Peak memory of one GRPO training step on a ~4k-token multimodal sequence, per remat policy.

    python benchmarks/memory.py                  # tiny-wide, remat none/full/dots, 4k tokens
    python benchmarks/memory.py --layers 2,4 --calibrate   # + per-layer activation calibration
    python benchmarks/memory.py --estimate-only --k-none 1.0 --k-full 1.0   # 3B/7B tables only

The step is the trainer's own `rl.steps.make_grpo_step` (vision tower, decoder forward, chunked
completion log-probs, GRPO loss with KL and entropy, grad, clip + AdamW update) on a `tiny-wide`
Qwen2.5-VL: the tiny preset's structure made wider (text hidden 768, head_dim 128, GQA 6/2,
vision hidden 192). Every configuration is compiled and run in its own subprocess and reports:

* XLA's compiled memory analysis: argument, output, alias and temp bytes; `peak_est` =
  argument + output + temp - alias (what the executable needs live at its worst);
* the process RSS high-water mark over the step minus the RSS just before it (`/proc` VmHWM
  after `clear_refs`), a cross-check of temp + output (arguments are resident before the call).

`--calibrate` also compiles each policy at every `--layers` count with a short sequence, so the
per-layer *activation* bytes are isolated from per-layer parameter/gradient bytes:
act/layer = [temp(L2, S) - temp(L1, S) - (temp(L2, s) - temp(L1, s))] / (L2 - L1), and compared
with the analytic formula `layer_act_elems` (calibration factor k = measured / formula).
The 3B/7B per-device estimates (`estimate`) use those factors; docs/memory.md explains them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import shapes
from rewardmap_jax.config_utils import get_config
from rewardmap_jax.model.config import ModelConfig, TextConfig, VisionConfig, get_preset
from rewardmap_jax.model.qwen2_5_vl import init_model, param_count
from rewardmap_jax.rl import grpo, optim, steps

MiB = 2**20
GiB = 2**30
_REPO = Path(__file__).resolve().parents[1]
_CONFIG_FILE = _REPO / "configs" / "curriculum.py"
# Real-model parameter totals (reference/qwen2_5_vl.md appendix; asserted against eval_shape).
PARAMS = {"qwen2_5_vl_3b": 3_754_622_976, "qwen2_5_vl_7b": 8_292_166_656}
# Device slices for the per-device tables: (name, devices in the FSDP axis, HBM GiB per device).
SLICES = (("8x H100/A100-80GB", 8, 80), ("TPU v5p-8 (4 chips)", 4, 95),
          ("TPU v4-32 (16 chips)", 16, 32))
# XLA's CPU pipeline expands jax.checkpoint's optimization barriers early ("cse_barrier_expander")
# and CSE then merges the recomputation with the forward pass: remat saves nothing on CPU (the
# "stock" rows). Keeping the barriers makes the CPU executable rematerialise. (The CPU
# MEMORY_OPTIMIZED scheduler type was tried too: it hoists the recomputation again once gradients
# flow into the vision tower, so the default scheduler is kept.)
REMAT_XLA_FLAGS = "--xla_disable_hlo_passes=cse_barrier_expander"


# ---------------------------------------------------------------------------------------------
# The tiny-wide model and one multimodal sequence
# ---------------------------------------------------------------------------------------------


def tiny_wide(args: argparse.Namespace, layers: int, remat: str) -> ModelConfig:
    """The tiny preset's token ids and structure, widened (head_dim 128 and M-RoPE [16,24,24] as
    the real models)."""
    base = get_preset("tiny")
    vd = args.vision_depth
    heads = args.hidden // 128
    full = tuple(i for i in range(vd) if i % 4 == 3) or (vd - 1,)  # real: every 8th block
    vision = VisionConfig(depth=vd, hidden_size=args.vision_hidden,
                          intermediate_size=args.vision_hidden * 8 // 3,
                          num_heads=args.vision_hidden // 64, out_hidden_size=args.hidden,
                          window_size=112, fullatt_block_indexes=full)
    text = TextConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=2 if heads % 2 == 0 else 1,
                      mrope_section=(16, 24, 24), max_position_embeddings=32768)
    return dataclasses.replace(base, vision=vision, text=text, remat=remat,
                               param_dtype=args.dtype, compute_dtype=args.dtype,
                               attn_chunk=args.attn_chunk)


def build_batch(cfg: ModelConfig, side: int, prompt_len: int, completion_len: int, reps: int,
                seed: int = 0) -> dict[str, Any]:
    """SeqBatch (see rl/steps.py) of one prompt: text, a (1, side, side)-patch image, text;
    `reps` completions of `completion_len` tokens; the step is the trainer's own."""
    batch = shapes.seq_batch(cfg, 1, reps, prompt_len, completion_len, side, seed, stacked=False)
    return jax.tree.map(jnp.asarray, batch)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Compiles (and with spec['run'] runs) one GRPO step; memory figures in bytes."""
    args = argparse.Namespace(**spec["args"])
    cfg = tiny_wide(args, spec["layers"], spec["remat"])
    c = get_config(_CONFIG_FILE, "qwen2_5_vl_7b")  # official RL / optimizer settings
    model = init_model(cfg)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optim.make_optimizer(c.optim, 1)
    opt_state = tx.init(params)
    batch = build_batch(cfg, spec["side"], spec["prompt_len"], spec["completion_len"], args.reps)
    step = steps.make_grpo_step(graphdef, tx, grpo.GRPOLossConfig.from_config(c.rl), args.reps,
                                chunk=int(c.rl.logprob_chunk), donate=args.donate)
    if args.donate:  # as the trainer's step; a buffer can be donated only once
        params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, batch).compile()
    ma = compiled.memory_analysis()
    nbytes = lambda t: int(sum(x.nbytes for x in jax.tree.leaves(t)))
    out = {
        "xla": spec["xla"], "remat": spec["remat"], "layers": spec["layers"],
        "tokens": spec["prompt_len"] + spec["completion_len"], "patches": spec["side"] ** 2,
        "params": param_count(model),
        "compile_s": round(time.perf_counter() - t0, 1),
        "param_bytes": nbytes(params), "opt_bytes": nbytes(opt_state), "batch_bytes": nbytes(batch),
        "arg": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
        "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes,
    }
    out["peak_est"] = out["arg"] + out["out"] + out["temp"] - out["alias"]
    if spec["run"]:
        jax.block_until_ready((params, opt_state, batch))
        try:  # reset the RSS high-water mark so compilation's peak is not counted
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        rss0 = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        res = compiled(params, opt_state, batch)
        metrics = jax.device_get(res[2])
        out["run_s"] = round(time.perf_counter() - t0, 1)
        out["rss_delta"] = (_rss_kib("VmHWM") - rss0) * 1024
        out["loss_finite"] = bool(np.isfinite(metrics["loss"]))
    return out


# ---------------------------------------------------------------------------------------------
# Analytic model (elements; multiply by bytes per element)
# ---------------------------------------------------------------------------------------------


def layer_act_elems(d: int, inter: int, kv: int, remat: str) -> int:
    """Activation elements one decoder layer keeps per token for the backward pass.

    none: x, norm1(x), q (rotated), the chunked-attention copy of q, attention out, x + attn,
      norm2, each D; rotated k and v, kv each; gate, up, silu(gate), their product, I each.
    full: only the layer input x (D); everything else is recomputed in the backward pass.
    dots: the matmul outputs q, k, v, o_proj, gate, up, down (non-batch dots) are saved.
    """
    if remat == "full":
        return d
    if remat == "dots":
        return 3 * d + 2 * kv + 2 * inter
    return 7 * d + 2 * kv + 4 * inter


def calibrate(rows: list[dict[str, Any]], dtype_bytes: int, args: argparse.Namespace
              ) -> dict[str, dict[str, float]]:
    """Per-layer activation bytes from the (layers x length) grid and k = measured / formula."""
    out = {}
    by = {(r["remat"], r["layers"], r["tokens"]): r["temp"] for r in rows
          if r["xla"] == rows[0]["xla"]}
    lays = sorted({r["layers"] for r in rows})
    toks = sorted({r["tokens"] for r in rows})
    if len(lays) < 2 or len(toks) < 2:
        return out
    (l1, l2), (s, big) = (lays[0], lays[-1]), (toks[0], toks[-1])
    t = tiny_wide(args, 1, "none").text
    kvd = t.num_key_value_heads * t.head_dim
    for remat in sorted({r["remat"] for r in rows}):
        try:
            d_big = by[(remat, l2, big)] - by[(remat, l1, big)]
            d_small = by[(remat, l2, s)] - by[(remat, l1, s)]
        except KeyError:
            continue
        per_layer = (d_big - d_small) / (l2 - l1)
        formula = (big - s) * layer_act_elems(t.hidden_size, t.intermediate_size, kvd, remat)
        formula *= dtype_bytes * args.reps
        out[remat] = {"act_per_layer_MiB": per_layer / MiB, "formula_MiB": formula / MiB,
                      "k": per_layer / formula}
    return out


OFFICIAL = {"prompt": 20000, "response": 2048, "gens": 4, "prompts_per_update": 16}
TEXT_TOKENS = 500  # prompt tokens that are not image tokens (system + question + template)


def estimate(name: str, k: dict[str, float], n: int, b: float, act_bytes: int = 2,
             prompt: int | None = None, patches: int | None = None,
             layout: str = "repeated") -> dict[str, float]:
    """Per-device bytes of each memory term for a real preset at the official lengths.

    n: devices in the FSDP axis; b: decoder rows per device in one value_and_grad: sequences
    `[prompt | response]` (layout "repeated") or groups `[prompt | G responses]` ("shared",
    model/sequence.py). Activation terms use the calibration factors k["none"], k["full"].
    prompt / patches: prompt tokens and patches of its one image (default: the official
    20,000-token prompt filled by its map; `benchmarks/real_shapes.py` compiles 20,480 / 65,536).
    """
    cfg = get_preset(name)
    t, v = cfg.text, cfg.vision
    g = OFFICIAL["gens"]
    prompt = prompt or OFFICIAL["prompt"]
    kvd = t.num_key_value_heads * t.head_dim
    patches = patches or v.merge_unit * (prompt - TEXT_TOKENS)  # one image per prompt
    p = PARAMS[name]
    if layout == "shared":  # a row is a whole group; b groups = b prompts, b * G responses
        s = prompt + g * OFFICIAL["response"]
        prompts, responses = max(1.0, b), b * g
    else:  # images encoded once per prompt, shared by its G rows
        s = prompt + OFFICIAL["response"]
        prompts, responses = max(1.0, b / g), b
    t_none = layer_act_elems(t.hidden_size, t.intermediate_size, kvd, "none")
    v_none = layer_act_elems(v.hidden_size, v.intermediate_size, v.hidden_size, "none")
    out = {
        "state_bf16": 10 * p / n,  # params 2 + grads 2 + Adam mu, nu 2 + 2 + reference 2
        "state_mixed": 18 * p / n,  # fp32 params 4 + grads 4 + Adam 8, bf16 reference 2
        "act_full_text": k["full"] * act_bytes * b * t.num_hidden_layers * s * t.hidden_size,
        "act_full_vision": k["full"] * act_bytes * prompts * v.depth * patches * v.hidden_size,
        "act_none": k["none"] * act_bytes * (b * t.num_hidden_layers * s * t_none
                                             + prompts * v.depth * patches * v_none),
        # remat full: the layer being recomputed in the backward pass (text or vision block)
        "recompute": k["none"] * act_bytes * max(b * s * t_none, prompts * patches * v_none),
        # fp32 logits + probabilities of one attention query chunk (text or vision full attn)
        "attn_chunk": 2 * 4 * cfg.attn_chunk * max(b * t.num_attention_heads * s,
                                                   prompts * v.num_heads * patches),
        # fp32 logits, softmax and their cotangent for one 256-position log-prob chunk
        "logits_chunk": responses * 3 * 256 * t.vocab_size * 4,
        # sampler (default group-shared cache): per prompt L prompt slots + G x T sample slots,
        # k and v, bf16; `kv_cache_repeat` = the QWEN2_5_VL_REPEAT mode, G x (L + T) slots
        "kv_cache": max(1.0, OFFICIAL["prompts_per_update"] / n)
        * (prompt + g * OFFICIAL["response"]) * t.num_hidden_layers * 2 * kvd
        * act_bytes,
        "kv_cache_repeat": max(1.0, OFFICIAL["prompts_per_update"] / n) * g * s
        * t.num_hidden_layers * 2 * kvd * act_bytes,
    }
    out["act_full"] = out["act_full_text"] + out["act_full_vision"]
    out["peak_full"] = out["act_full"] + out["recompute"] + out["attn_chunk"] + out["logits_chunk"]
    out["peak_none"] = out["act_none"] + out["logits_chunk"]
    return out


# The shapes benchmarks/real_shapes.py compiles: a 20,480-token prompt holding a 256 x 256-patch
# map (docs/memory.md §5); one prompt group per device, the fewest the prompt-sharded batch allows.
GROUP_SHAPES = {"prompt": 20480, "patches": 65536}


def layout_table(k: dict[str, float]) -> list[str]:
    """Markdown rows: per-device GiB of the update with one prompt group (G responses) per
    device, remat full, in the repeated (G rows) and the shared (one row) layout:
    fp32 params + AdamW (12P / n), fp32 grads (4P / n), activations and transients."""
    rows = ["| model | slice | layout | decoder tokens | params + Adam | grads "
            "| activations (remat full) | recompute | attention chunk | log-prob chunk | total "
            "| HBM | headroom |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    g, r = OFFICIAL["gens"], OFFICIAL["response"]
    gib = lambda x: f"{x / GiB:.1f}"  # noqa: E731
    for name in PARAMS:
        for sl, n, hbm in SLICES[:2]:
            for layout, b, tokens in (("repeated", g, g * (GROUP_SHAPES["prompt"] + r)),
                                      ("shared", 1, GROUP_SHAPES["prompt"] + g * r)):
                e = estimate(name, k, n, b, layout=layout, **GROUP_SHAPES)
                state, grads = 12 * PARAMS[name] / n, 4 * PARAMS[name] / n
                total = state + grads + e["peak_full"]
                rows.append(f"| {name} | {sl} | {layout} | {tokens:,} | {gib(state)} | "
                            f"{gib(grads)} | {gib(e['act_full'])} | {gib(e['recompute'])} | "
                            f"{gib(e['attn_chunk'])} | {gib(e['logits_chunk'])} | "
                            f"**{gib(total)}** | {hbm} | {(hbm * GiB - total) / GiB:.1f} |")
    return rows


def device_table(k: dict[str, float]) -> list[str]:
    """Markdown rows: per-device GiB for 3B/7B x slices, b = 1 (official micro batch) and
    b = 64 / n (the trainer today: a whole 16-prompt x G=4 mini-batch in one value_and_grad)."""
    rows = ["| model | slice (n) | state bf16 | state fp32 master | update, remat full, b=1 "
            "| update, no remat, b=1 | update, remat full, b=64/n | rollout KV cache "
            "| total, bf16 state, remat full, b=1 | HBM / device |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    # rollout KV column: group-shared cache (default sampler), repeat mode in parentheses
    gib = lambda x: f"{x / GiB:.1f}"
    for name in PARAMS:
        for sl, n, hbm in SLICES:
            e1 = estimate(name, k, n, 1)
            bt = OFFICIAL["prompts_per_update"] * OFFICIAL["gens"] / n
            et = estimate(name, k, n, bt)
            # rollout (KV cache) and update (activations) are not live at the same time
            total = e1["state_bf16"] + max(e1["peak_full"], e1["kv_cache"])
            rows.append(f"| {name} | {sl} ({n}) | {gib(e1['state_bf16'])} | "
                        f"{gib(e1['state_mixed'])} | {gib(e1['peak_full'])} | "
                        f"{gib(e1['peak_none'])} | {gib(et['peak_full'])} (b={bt:g}) | "
                        f"{gib(e1['kv_cache'])} ({gib(e1['kv_cache_repeat'])}) | {gib(total)} "
                        f"| {hbm} |")
    return rows


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768, help="text hidden (multiple of 128)")
    ap.add_argument("--layers", default="4", help="decoder layer counts, comma separated")
    ap.add_argument("--vision-hidden", type=int, default=192, help="multiple of 64")
    ap.add_argument("--vision-depth", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--side", type=int, default=64, help="image side in patches (64 = 4096)")
    ap.add_argument("--tokens", type=int, default=4096, help="prompt + completion tokens")
    ap.add_argument("--completion", type=int, default=1024, help="completion tokens")
    ap.add_argument("--reps", type=int, default=1, help="completions per prompt (rows)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--attn-chunk", type=int, default=512)
    ap.add_argument("--remat", default="none,full,dots")
    ap.add_argument("--calibrate", action="store_true",
                    help="also compile a short sequence at every --layers count (compile only)")
    ap.add_argument("--no-run", action="store_true", help="compile only (no RSS cross-check)")
    ap.add_argument("--donate", action="store_true",
                    help="donate params and optimizer state (as the trainer does)")
    ap.add_argument("--pipeline", default="both", choices=("both", "remat", "stock"),
                    help="XLA CPU pipeline: 'remat' keeps checkpoint barriers (REMAT_XLA_FLAGS), "
                    "'stock' is the default one; 'both' adds stock rows, compile only")
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--k-none", type=float, default=1.0, help="calibration for --estimate-only")
    ap.add_argument("--k-full", type=float, default=1.0, help="calibration for --estimate-only")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def _specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    layers = [int(x) for x in args.layers.split(",")]
    for x in layers:
        if x < 1:
            raise SystemExit(f"--layers: {x} is not a positive layer count")
    if args.hidden % 128 or args.vision_hidden % 64:
        raise SystemExit("--hidden must be a multiple of 128 and --vision-hidden of 64")
    bad = [r for r in args.remat.split(",") if r not in ("none", "full", "dots")]
    if bad:
        raise SystemExit(f"--remat: unknown policies {bad}; choose from none, full, dots")
    if args.side < 2 or args.side % 2:
        raise SystemExit(f"--side {args.side} must be an even number of patches >= 2")
    if args.tokens - args.completion < args.side**2 // 4 + 4:
        raise SystemExit(f"--tokens - --completion = {args.tokens - args.completion} prompt "
                         f"tokens cannot hold {args.side**2 // 4} image tokens + text")
    if args.completion >= args.tokens:
        raise SystemExit(f"--completion {args.completion} must be < --tokens {args.tokens}")
    shared = {k: v for k, v in vars(args).items() if k != "worker"}
    main = "stock" if args.pipeline == "stock" else "remat"
    full = {"args": shared, "side": args.side, "prompt_len": args.tokens - args.completion,
            "completion_len": args.completion}
    out = []
    for remat in args.remat.split(","):
        for lay in layers:
            run = not args.no_run and lay == max(layers)
            out.append({**full, "xla": main, "remat": remat, "layers": lay, "run": run})
            if args.calibrate:  # short sequence, tiny image: per-layer non-activation bytes
                out.append({"args": shared, "xla": main, "remat": remat, "layers": lay,
                            "side": 8, "prompt_len": 96, "completion_len": 32, "run": False})
        if args.pipeline == "both":
            out.append({**full, "xla": "stock", "remat": remat, "layers": max(layers),
                        "run": False})
    return out


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{_REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} {REMAT_XLA_FLAGS}" if spec["xla"] == "remat" else flags
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"worker {spec['remat']}/{spec['layers']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    if args.estimate_only:
        k = {"none": args.k_none, "full": args.k_full}
        print("\n".join(device_table(k)))
        print("\n".join(layout_table(k)))
        return
    rows = [_run_worker(s) for s in _specs(args)]
    print("| XLA CPU | remat | layers | tokens | patches | XLA temp | arg | out | alias "
          "| peak est. | RSS delta | compile s | step s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mb = lambda key, r=r: f"{r[key] / MiB:,.0f}" if key in r else "-"
        print(f"| {r['xla']} | {r['remat']} | {r['layers']} | {r['tokens']} | {r['patches']} | "
              f"{mb('temp')} | {mb('arg')} | {mb('out')} | {mb('alias')} | {mb('peak_est')} | "
              f"{mb('rss_delta')} | {r['compile_s']} | {r.get('run_s', '-')} |")
    print("(MiB)")
    cal = calibrate(rows, jnp.dtype(args.dtype).itemsize, args)
    for remat, c in cal.items():
        print(f"calibration {remat}: measured {c['act_per_layer_MiB']:.1f} MiB/layer, formula "
              f"{c['formula_MiB']:.1f} MiB/layer, k = {c['k']:.2f}")
    print(json.dumps({"rows": rows, "calibration": cal}))
    if {"none", "full"} <= set(cal):
        print("\n".join(device_table({m: cal[m]["k"] for m in ("none", "full")})))


if __name__ == "__main__":
    main()
