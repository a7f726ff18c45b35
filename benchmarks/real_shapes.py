"""AOT proof at the official lengths: the 3B / 7B programs compiled on fake meshes, no allocation.

    python benchmarks/real_shapes.py                          # 3B + 7B, 8 and 4 CPU devices
    python benchmarks/real_shapes.py --models qwen2_5_vl_3b --devices 8 --programs update_micro
    python benchmarks/real_shapes.py --full-depth --topology 4=v5p:2x2x1,8=v5p:2x2x2 \
        --libtpu /opt/libtpu --json benchmarks/results/real_shapes_tpu.jsonl   # TPU compiler

Each program is the project's own code, lowered with `jax.ShapeDtypeStruct` inputs that carry
their shardings (params / optimizer state by `mesh.rules` as the trainer lays them out, batches
over the prompt axis) and compiled for N fake CPU devices or the N chips of a TPU slice (mesh
(1, N, 1): FSDP over all):

* `prefill`: `rl.sampler.generate` through the trainer's adapter (`rl.rollout.ADAPTER`: images
  encoded once per prompt) with one new token: vision tower + prompt prefill + group-shared
  KV cache, for the rollout batch (`data.batch_size` prompts, G = `rl.num_generations`);
* `decode`: one decode step of that adapter on the full-size `SharedKVCache` (prompt bucket +
  G x `rl.max_new_tokens` own slots), cache donated as in the sampler's loop;
* `logprobs`: `rl.steps.make_logprob_fn` over one mini-batch (reference / old log-probs);
* `update_micro`: `rl.steps.make_grpo_step` (remat, AdamW, donated state) over one micro-batch:
  one prompt group per device;
* `update_preset`: the same step over one mini-batch with `rl.grad_accum` micro-batches (the
  preset's step as it runs).

Shapes: prompt bucket 20,480 tokens holding one real-size map (256 x 256 patches = 65,536
patches, 16,384 image tokens: the largest `data.max_pixels` allows), 2,048 completion tokens,
G = 4, 16 prompts; the preset's dtypes (fp32 params, bf16 compute), remat and attention chunk.

Two ways to get full-depth figures:

* `--full-depth` (`--depth full`) compiles every program once at the model's depth, (text
  layers, windowed vision blocks, full-attention vision blocks) = (36 or 28, 28, 4), and reports
  it as compiled (`--depth L,W,F`: any one depth). Use it with `--topology` (the TPU compiler:
  5-16 minutes a program on 2 cores). A program the TPU compiler refuses (RESOURCE_EXHAUSTED:
  more than the chip's HBM) is reported as not fitting.
* Otherwise (the CPU compiler, too slow at full depth on 2 cores) every program is compiled at a
  few depths, (1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2) (decode: text layers 1 and 2 only), and
  each memory figure and the FLOPs are extrapolated with the exact linear fit a + b L + c W + d F
  to the full depth; (2, 2, 2) checks the fit (`--check`). Do not fit the TPU compiler's
  figures: its memory is not linear in the depth at 1-4 layers (docs/memory.md §5.2).

Memory is XLA's per-device `memory_analysis()` of the executable (argument, output, alias, temp;
peak = argument + output + temp - alias); FLOPs are `cost_analysis()` of the per-device program
(remat recomputation included). CPU workers keep `jax.checkpoint`'s barriers
(`memory.REMAT_XLA_FLAGS`), else CPU XLA would undo remat. docs/memory.md compares the numbers
with its estimates term by term.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # `python benchmarks/real_shapes.py` puts benchmarks/ first
    sys.path.insert(0, str(_REPO))
GiB = 2**30
REMAT_XLA_FLAGS = "--xla_disable_hlo_passes=cse_barrier_expander"  # as benchmarks/memory.py
FIT_DEPTHS = ((1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2))
CHECK_DEPTH = (2, 2, 2)
VISION_FIT = ("qwen2_5_vl_3b", 8, "update_micro")  # the one fit that varies the vision blocks
PROMPT_LEN, SIDE = 20480, 256
FIELDS = ("arg", "out", "alias", "temp", "peak", "flops")


# ---------------------------------------------------------------------------------------------
# Worker: one program, one depth, one mesh
# ---------------------------------------------------------------------------------------------


def _compile(spec: dict[str, Any]) -> dict[str, Any]:
    import jax

    jax.config.update("jax_num_cpu_devices", spec["devices"])
    topology = spec.get("topology", "")
    if topology:  # deviceless AOT compile for a TPU slice (libtpu installed, no TPU needed)
        from jax.experimental import topologies

        devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
        if len(devices) != spec["devices"]:
            raise SystemExit(f"topology {topology} has {len(devices)} chips, not "
                             f"{spec['devices']}")
    else:
        devices = jax.devices()[: spec["devices"]]
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from benchmarks import shapes
    from configs.curriculum import get_config
    from rewardmap_jax.model import build, sharding
    from rewardmap_jax.model.kv_cache import KVCache, SharedKVCache
    from rewardmap_jax.model.layers import activation_sharding
    from rewardmap_jax.model.qwen2_5_vl import abstract_model
    from rewardmap_jax.rl import grpo, optim, rollout, sampler, steps

    c = get_config(spec["model"])
    c.rl.grad_accum = spec["grad_accum"]
    mesh = sharding.make_mesh(c.mesh, devices=devices)
    rules = sharding.rules_from_config(c.mesh)
    cfg = shapes.with_depth(build.model_config(c), *spec["depth"])
    graphdef, abs_state = nnx.split(abstract_model(cfg))
    shard = build.param_shardings(c, cfg, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abs_state, shard)
    g, t = int(c.rl.num_generations), int(c.rl.max_new_tokens)
    prompts = int(c.data.batch_size)
    chunk = int(c.rl.logprob_chunk)

    def named(names, shape):
        return NamedSharding(mesh, sharding.logical_to_spec(names, rules, shape, mesh))

    def batch_sharding(key, shape):  # prompt / row axis over the batch mesh axes
        axis = shapes.PROMPT_AXIS.get(key, 0)
        return named(tuple("batch" if i == axis else None for i in range(len(shape))), shape)

    def sds(shape, dtype, names=None):
        if names is None:
            names = ("batch",) + (None,) * (len(shape) - 1) if shape else ()
        return jax.ShapeDtypeStruct(shape, dtype, sharding=named(names, shape))

    program = spec["program"]
    if program == "update_micro":  # one micro-batch: one prompt group per device, no scan
        prompts = spec["devices"]
    t0 = time.perf_counter()
    with activation_sharding(mesh, c.mesh.rules):
        if program in ("logprobs", "update_micro", "update_preset"):
            batch = shapes.abstract_batch(cfg, prompts, g, PROMPT_LEN, t, SIDE, batch_sharding)
            if program == "logprobs":
                lowered = steps.make_logprob_fn(graphdef, g, chunk).lower(params, batch)
            else:
                tx = optim.make_optimizer(c.optim, 1000)
                opt = jax.eval_shape(tx.init, params)
                opt_sh = sharding.state_shardings(opt, mesh, rules)
                opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                     sharding=s), opt, opt_sh)
                ga = 1 if program == "update_micro" else spec["grad_accum"]
                step = steps.make_grpo_step(graphdef, tx, grpo.GRPOLossConfig.from_config(c.rl),
                                            g, chunk=chunk, grad_accum=ga, donate=True)
                lowered = step.lower(params, opt, batch)
        elif program == "prefill":
            b = shapes.abstract_batch(cfg, prompts, g, PROMPT_LEN, t, SIDE, batch_sharding)
            sp = sampler.params_from_config(c.rl, cfg, max_new_tokens=1)

            def prefill(state, ids, mask, pos, vision, offsets, key):
                pb = sampler.PromptBatch(ids, mask, pos, None, (vision, offsets))
                return sampler.generate(nnx.merge(graphdef, state), rollout.ADAPTER, pb, sp,
                                        key)

            key = jax.eval_shape(lambda: jax.random.key(0))  # no eager op on the mesh
            lowered = jax.jit(prefill).lower(params, b["prompt_ids"], b["prompt_mask"],
                                             b["positions"], b["vision"], b["vis_offsets"], key)
        elif program == "decode":
            cache = jax.eval_shape(lambda: SharedKVCache.share(
                KVCache.init(cfg, prompts, PROMPT_LEN), g, t))
            cache = jax.tree.map(lambda x: sds(x.shape, x.dtype), cache)
            rows = prompts * g

            def decode(state, tok, pos, cache):
                model = nnx.merge(graphdef, state)
                return rollout.ADAPTER.forward(model, tok, pos, jnp.ones(tok.shape, bool), None,
                                               cache)

            lowered = jax.jit(decode, donate_argnums=(3,)).lower(
                params, sds((rows, 1), jnp.int32), sds((3, rows, 1), jnp.int32,
                                                      (None, "batch", None)), cache)
        else:
            raise SystemExit(f"unknown program {program!r}")
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program over HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return {**spec, "compile_s": round(time.perf_counter() - t0, 1),
                    "does_not_fit": str(e).strip().splitlines()[0][:400]}
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out = {**spec, "compile_s": round(seconds, 1),
           "arg": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
           "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes,
           "flops": float((cost or {}).get("flops", float("nan")))}
    out["peak"] = out["arg"] + out["out"] + out["temp"] - out["alias"]
    return out


# ---------------------------------------------------------------------------------------------
# Driver: workers, per-layer fit, tables
# ---------------------------------------------------------------------------------------------


def full_depth(model: str) -> tuple[int, int, int]:
    from rewardmap_jax.model.config import get_preset

    cfg = get_preset(model)
    n_full = len(cfg.vision.fullatt_block_indexes)
    return cfg.text.num_hidden_layers, cfg.vision.depth - n_full, n_full


def _vision_block(model: str) -> tuple[int, float, float]:
    """(parameters of one vision block, forward FLOPs of a window-attention and of a
    full-attention block on one 65,536-patch image)."""
    from benchmarks import shapes
    from rewardmap_jax.model.config import get_preset
    from rewardmap_jax.model.qwen2_5_vl import abstract_model, param_count

    cfg = get_preset(model)
    one, two = (param_count(abstract_model(shapes.with_depth(cfg, 1, w, 1))) for w in (1, 2))
    v = cfg.vision
    patches = SIDE * SIDE
    mm = 2 * (4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size)
    attn = 4 * v.hidden_size  # QK^T and PV per key, all heads
    return (two - one, float(patches * (mm + attn * v.window_patches)),
            float(patches * (mm + attn * patches)))


def fit(rows: list[dict[str, Any]], target: tuple[int, int, int], program: str, devices: int,
        model: str, borrow: dict[str, list[float]] | None) -> dict[str, Any]:
    """value(L, W, F) = a + b L + c W + d F at `target`.

    Fits that vary the vision blocks (`VISION_FIT`) solve all four coefficients. Every other fit
    solves a, b from the text depths, and takes the vision-block coefficients c = d:
    * update programs: arguments / outputs / aliased = the block's fp32 params + Adam moments
      per device (12 bytes x params / devices, exact); temp and FLOPs from `borrow` (the
      VISION_FIT's, one image per device as here), temp corrected for the block's fp32
      gradient shard at this mesh size;
    * forward programs: arguments = the block's fp32 params per device; nothing kept (temp 0);
      FLOPs = the block's forward FLOPs x images per device (0 for decode).
    """
    depths = np.array([[1, *r["depth"]] for r in rows], float)
    vary = [i for i in range(4) if i == 0 or np.ptp(depths[:, i]) > 0]
    params, *block_flops = _vision_block(model)
    pb = 4.0 * params / devices  # fp32 bytes of one block's params on one device
    images = 0 if program == "decode" else (devices if program.startswith("update") else 16)
    out: dict[str, Any] = {"coef": {}}
    for f in FIELDS:
        y = np.array([r[f] for r in rows], float)
        coef = np.zeros(4)
        if 2 not in vary:
            for i in (2, 3):  # windowed, full
                if f == "peak":
                    c = 0.0  # from the parts, below
                elif program.startswith("update"):
                    c = {"arg": 3 * pb, "out": 3 * pb, "alias": 3 * pb}.get(f)
                    if f == "temp":
                        c = borrow["temp"][i] + pb - 4.0 * params / VISION_FIT[1]
                    elif c is None:
                        c = borrow[f][i]
                else:
                    c = {"arg": pb, "flops": block_flops[i - 2] * images / devices}.get(f, 0.0)
                coef[i] = c
        fixed = [i for i in (2, 3) if i not in vary]
        sol, *_ = np.linalg.lstsq(depths[:, vary], y - depths[:, fixed] @ coef[fixed],
                                  rcond=None)
        coef[vary] = sol
        out["coef"][f] = coef.tolist()
    if 2 not in vary:  # peak = arg + out + temp - alias, coefficient by coefficient
        c = out["coef"]
        for i in (2, 3):
            c["peak"][i] = c["arg"][i] + c["out"][i] + c["temp"][i] - c["alias"][i]
        ref = np.array([r["peak"] for r in rows], float)
        fixed = [2, 3]
        sol, *_ = np.linalg.lstsq(depths[:, vary], ref - depths[:, fixed] @ np.array(
            c["peak"])[fixed], rcond=None)
        c["peak"][0], c["peak"][1] = float(sol[0]), float(sol[1])
    for f in FIELDS:
        out[f] = float(np.array([1, *target], float) @ np.array(out["coef"][f]))
    return out


def _run_worker(spec: dict[str, Any], libtpu: str = "") -> dict[str, Any]:
    path = os.pathsep.join(x for x in (str(_REPO), libtpu, os.environ.get("PYTHONPATH", "")) if x)
    env = dict(os.environ, PYTHONPATH=path)
    if spec.get("topology"):
        env["JAX_PLATFORMS"] = "cpu"  # no TPU runtime here: only the compiler is used
        env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # parallel workers (libtpu's lockfile)
    else:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {REMAT_XLA_FLAGS}".strip()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"worker {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _grad_accum(args: argparse.Namespace, model: str, devices: int, program: str) -> int:
    """update_preset: --grad-accum, else one prompt group per device per micro-step
    (rl.mini_batch_size / devices, the per-slice value docs/memory.md recommends); other
    programs: the preset's (unused)."""
    from configs.curriculum import get_config

    c = get_config(model)
    if program == "update_preset":
        return args.grad_accum or max(1, int(c.rl.mini_batch_size) // devices)
    return int(c.rl.grad_accum)


def _chosen_depths(args: argparse.Namespace, model: str, devices: int, program: str
                   ) -> list[tuple[int, int, int]]:
    if args.depth == "fit":
        return _depths(model, devices, program, args.check)
    if args.depth == "full":
        return [full_depth(model)]
    depth = tuple(int(x) for x in args.depth.split(","))
    if len(depth) != 3:
        raise SystemExit(f"--depth {args.depth!r}: expected 'fit', 'full' or L,W,F")
    return [depth]


def _depths(model: str, devices: int, program: str, check: bool
            ) -> list[tuple[int, int, int]]:
    """Depths compiled per (model, mesh, program). Text layers vary everywhere; the vision
    blocks only for the 3B update on 8 devices: every other fit borrows those per-block
    coefficients (the towers are identical, one image per device in every case; only the
    blocks' parameter shards differ, a few tens of MiB per block). Forward-only programs keep
    nothing of a vision block once it is done, so their vision coefficients are 0 beyond the
    parameter bytes (`_param_bytes` adds those exactly)."""
    out = [FIT_DEPTHS[0]] if program == "update_preset" else list(FIT_DEPTHS[:2])
    if (model, devices, program) == VISION_FIT:
        out = list(FIT_DEPTHS)
    return out + ([CHECK_DEPTH] if check and program not in ("decode", "update_preset") else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2_5_vl_3b,qwen2_5_vl_7b")
    ap.add_argument("--devices", default="8,4")
    ap.add_argument("--programs", default="update_micro,prefill,decode,logprobs,update_preset")
    ap.add_argument("--grad-accum", type=int, default=0, help="0 = the preset's rl.grad_accum")
    ap.add_argument("--check", action="store_true", help="also compile (2, 2, 2) to test the fit")
    ap.add_argument("--depth", default="fit",
                    help="'fit' (default): a few shallow depths, fitted to the full depth; "
                    "'full': each program once at the model's depth, no fit (what the TPU "
                    "compiler, minutes a program, should be given: its memory is not linear in "
                    "the depth, docs/memory.md §5.2); 'L,W,F': that depth (text layers, windowed "
                    "and full-attention vision blocks), as compiled")
    ap.add_argument("--full-depth", dest="depth", action="store_const", const="full",
                    help="same as --depth full")
    ap.add_argument("--jobs", type=int, default=1, help="compile workers at a time")
    ap.add_argument("--topology", default="",
                    help="compile for TPU slices instead of CPU devices, e.g. "
                    "'4=v5p:2x2x1,8=v5p:2x2x2' (needs libtpu importable, `--libtpu`)")
    ap.add_argument("--libtpu", default="", help="directory holding the libtpu package")
    ap.add_argument("--json", default="",
                    help="JSONL of every compiled row (new rows go to the first; all are reused)")
    ap.add_argument("--report-only", action="store_true",
                    help="compile nothing: tabulate the --json rows (incomplete fits skipped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_compile(json.loads(args.worker))))
        return
    print(f"load average at start: {os.getloadavg()[0]:.1f} (compile times are load-dependent; "
          "memory and FLOPs are not)")
    models, meshes = args.models.split(","), [int(x) for x in args.devices.split(",")]
    programs = args.programs.split(",")
    done: dict[str, dict[str, Any]] = {}
    for path in (p for p in args.json.split(",") if p and os.path.exists(p)):
        for line in open(path):
            r = json.loads(line)
            done[_key(r)] = r
    topo = dict(x.split("=") for x in args.topology.split(",")) if args.topology else {}
    specs = [{"model": m, "devices": n, "program": p, "depth": list(d),
              "grad_accum": _grad_accum(args, m, n, p), "topology": topo.get(str(n), "")}
             for p in programs for n in meshes for m in models
             for d in _chosen_depths(args, m, n, p)]
    todo = [] if args.report_only else [sp for sp in specs if _key(sp) not in done]

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        r = _run_worker(spec, args.libtpu)
        print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json.split(",")[0], "a") as f:
                f.write(json.dumps(r) + "\n")
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(one, todo):
            done[_key(r)] = r
    results, coefs = [], {}
    for p in programs:
        for n in meshes:
            for m in models:
                want = [sp for sp in specs if (sp["model"], sp["devices"], sp["program"]) ==
                        (m, n, p)]
                if any(_key(sp) not in done for sp in want):
                    print(f"(skipped {m} / {n} / {p}: depths not compiled yet)")
                    continue
                rows = [done[_key(sp)] for sp in want]
                fit_rows = [r for r in rows if tuple(r["depth"]) != CHECK_DEPTH]
                borrow = coefs.get(VISION_FIT)
                refused = [r for r in rows if r.get("does_not_fit")]
                if refused:  # no fit through a program the compiler refused
                    results.append({**refused[0], "coef": None})
                    continue
                if p == "update_preset" or args.depth != "fit":  # as compiled, no fit
                    results.append({**rows[0], "coef": None})
                    continue
                res = {"model": m, "devices": n, "program": p, "grad_accum": rows[0]["grad_accum"],
                       "depth": full_depth(m),
                       **fit(fit_rows, full_depth(m), p, n, m, borrow),
                       "compile_s": [r["compile_s"] for r in rows]}
                coefs[(m, n, p)] = res["coef"]
                check = [r for r in rows if tuple(r["depth"]) == CHECK_DEPTH]
                if check:
                    pred = fit(fit_rows, CHECK_DEPTH, p, n, m, borrow)
                    res["check"] = {f: (check[0][f], pred[f]) for f in ("temp", "peak", "flops")}
                results.append(res)
    how = "extrapolated to full depth" if args.depth == "fit" else "as compiled"
    print(f"\nPer device, {how} (GiB; TFLOP per device per call, a loop body counted once):\n")
    print("| model | devices | program | arguments | outputs | aliased | temp | peak "
          "| per text layer (temp) | per vision block (temp) | TFLOP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        g = lambda k, r=r: f"{r[k] / GiB:.1f}"  # noqa: E731
        if r.get("does_not_fit"):
            print(f"| {r['model']} | {r['devices']} | {r['program']} at depth "
                  f"{tuple(r['depth'])}: **does not fit**: {r['does_not_fit']} | | | | | | | | |")
            continue
        if r["coef"] is None:
            ga = f" (grad_accum {r['grad_accum']})" if r["program"] == "update_preset" else ""
            print(f"| {r['model']} | {r['devices']} | {r['program']}{ga}, as compiled at depth "
                  f"{tuple(r['depth'])} | {g('arg')} | "
                  f"{g('out')} | {g('alias')} | {g('temp')} | {g('peak')} | | | "
                  f"{r['flops'] / 1e12:,.1f} |")
            continue
        tc = r["coef"]["temp"]
        prog = r["program"] + (f" (grad_accum {r['grad_accum']})"
                               if r["program"] == "update_preset" else "")
        print(f"| {r['model']} | {r['devices']} | {prog} | {g('arg')} | {g('out')} | "
              f"{g('alias')} | {g('temp')} | **{g('peak')}** | {tc[1] / GiB:.2f} | "
              f"{tc[2] / GiB:.2f} / {tc[3] / GiB:.2f} | {r['flops'] / 1e12:,.1f} |")
    for r in results:
        if "check" in r:
            print(f"fit check {r['model']}/{r['devices']}/{r['program']} at {CHECK_DEPTH}: "
                  + ", ".join(f"{k} compiled {a / GiB:.3f} vs fit {b / GiB:.3f} GiB"
                              if k != "flops" else f"flops {a:.4g} vs {b:.4g}"
                              for k, (a, b) in r["check"].items()))
    print(json.dumps({"results": results}))


def _key(r: dict[str, Any]) -> str:
    return json.dumps([r["model"], r["devices"], r["program"], list(r["depth"]),
                       r["grad_accum"], r.get("topology", "")])


if __name__ == "__main__":
    main()
