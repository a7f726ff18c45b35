"""Per-step decode cost of the rollout sampler, before and after: time, loop-body HLO, cost.

    python benchmarks/decode_step.py                         # this checkout
    python benchmarks/decode_step.py --baseline 8eee384      # and the package at a git ref
    python benchmarks/decode_step.py --model tiny-wide --temperature 0

Each implementation runs in its own worker process: this checkout, and with `--baseline` the
`rewardmap_jax` package of that commit (`git archive` into a temporary directory; the worker
imports it ahead of this checkout, the benchmark inputs come from `benchmarks/inputs.py`). The
parent runs the workers' rollouts interleaved through `benchmarks/harness.py`, so both see the
same machine; the workers time their own calls (no pipe overhead).

* Step time: rollouts of `--steps T1,T2` new tokens without a stop token; per round,
  (t(T2) - t(T1)) / (T2 - T1) is one decode step of all B*G rows (prefill and compilation
  excluded). Wall and process-CPU seconds.
* Loop-body HLO: each worker dumps its optimised rollout programs (`--xla_dump_to`);
  `benchmarks/hlo.py` reads the T2 program's decode loops (the while loops computing logits):
  instructions, fusions, sorts, nested loops, conditionals, copies and the bytes one iteration
  touches. The current program has several loops (one per key-length segment and row bucket),
  each listed with its row count.
* Cost analysis: XLA's estimate for one decode step in isolation: the model's cached one-token
  call on a full decode state (prompt + T2 slots) and the token draw (flops, bytes accessed,
  transcendentals).
* `--trace`: the JAX profiler over 3 T2 rollouts; the 12 costliest XLA thunks (CPU backend).
* `--plans`: this checkout only, per `DecodePlan` (single loop, segments, default): decode loops
  in the T2 program, the largest copy inside one, sorts, XLA's temp bytes and the process-CPU
  seconds of its compilation (load-independent, no timing). With `--data-parallel N`: the same
  programs with the rows over N (fake CPU) devices (`Placement.context`, data = N), each plan
  compiled as given (`generate` itself turns compaction off there), and the collectives in them:
  count and bytes, outside and inside the decode loops.

Prints one JSON object and Markdown rows (per implementation, and the step-time ratio).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Worker (runs against whichever rewardmap_jax is first on sys.path)
# ---------------------------------------------------------------------------------------------


def _step_costs(model, cfg, batch, g: int, t: int, temperature: float, shared: bool) -> dict:
    """XLA cost analysis of one cached one-token model call and of one draw, N = B*G rows."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rewardmap_jax.model.kv_cache import KVCache, SharedKVCache
    from rewardmap_jax.rl import sampler, sampling

    b, length = batch.input_ids.shape
    n = b * g
    cache = (SharedKVCache.share(KVCache.init(cfg, b, length), g, t) if shared
             else KVCache.init(cfg, n, length + t))
    graphdef, state = nnx.split(model)
    tok = jnp.zeros((n, 1), jnp.int32)
    pos = jnp.zeros((3, n, 1), jnp.int32)

    def step(state, tok, pos, cache):
        return nnx.merge(graphdef, state)(tok, pos, jnp.ones((n, 1), bool), cache=cache)

    vocab = cfg.text.vocab_size
    logits = jnp.zeros((n, vocab), jnp.float32)
    forbidden = sampling.forbidden_mask(vocab, sampler.vision_special_ids(cfg))
    knobs = (jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0))
    if hasattr(sampling, "draw"):  # static sampling class, one uniform per row
        cls = sampling.SamplingClass.of(temperature, 0, 1.0)
        draw = jax.jit(lambda u, x, k: sampling.draw(u, x, *k, forbidden, cls))
        draw_args = (jnp.zeros((n,), jnp.float32), logits, knobs)
    else:
        draw = jax.jit(lambda key, x, k: sampling.sample_tokens(key, x, *k, forbidden))
        draw_args = (jax.random.key(0), logits, knobs)

    def cost(fn, *args) -> dict:
        ca = fn.lower(*args).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        return {k: float(ca.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}

    return {"model_step": cost(jax.jit(step), state, tok, pos, cache),
            "draw": cost(draw, *draw_args)}


def _trace(run) -> list[tuple[str, float, int]]:
    import jax

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for r in range(3):
                run(r)
        data = jax.profiler.ProfileData.from_file(
            glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            for ev in line.events:
                if not ev.name.startswith("ThunkExecutor") and "Await" not in ev.name:
                    total[ev.name] += ev.duration_ns
                    count[ev.name] += 1
    return [(k, round(v / 3e3, 1), count[k] // 3) for k, v in total.most_common(12)]


def worker(args: argparse.Namespace) -> None:
    import jax

    from benchmarks import inputs
    from rewardmap_jax.model.qwen2_5_vl import init_model
    from rewardmap_jax.rl import sampler

    cfg = inputs.model_cfg(args.model)
    model = init_model(cfg, args.seed)
    ids, mask, grids, pv = inputs.build_prompts(cfg, args.prompts, args.seed)
    batch = inputs.prompt_batch(cfg, ids, mask, grids, pv)
    adapter = {"shared": sampler.QWEN2_5_VL, "repeat": sampler.QWEN2_5_VL_REPEAT}[args.adapter]
    steps = [int(s) for s in args.steps.split(",")]

    def params(t: int):
        return sampler.SamplingParams(max_new_tokens=t, num_generations=args.generations,
                                      temperature=args.temperature, pad_id=cfg.pad_token_id,
                                      forbidden_ids=sampler.vision_special_ids(cfg))

    def run(t: int, r: int):
        out = sampler.generate(model, adapter, batch, params(t), jax.random.key(r + 1))
        return jax.block_until_ready(out)

    compile_s = {}
    for t in steps:
        t0 = time.perf_counter()
        out = run(t, -1)
        compile_s[t] = round(time.perf_counter() - t0, 2)
        assert int(out.steps) == t, (int(out.steps), t)
    traces = dict(sampler.TRACE_COUNTS)
    try:  # the decode-step copies per program (absent before rl/decode.py)
        from rewardmap_jax.rl import decode
        traces.update({f"decode_{k}": v for k, v in decode.TRACE_COUNTS.items()})
    except ImportError:
        pass
    ready = {"compile_s": compile_s, "trace_counts": traces,
             "cost": _step_costs(model, cfg, batch, args.generations, steps[-1],
                                 args.temperature, args.adapter == "shared"),
             "rows": int(ids.shape[0]) * args.generations, "prompt_len": int(ids.shape[1]),
             "vocab": cfg.text.vocab_size}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            t0, c0 = time.perf_counter(), time.process_time()
            run(int(cmd[1]), int(cmd[2]))
            reply = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
        elif cmd[0] == "trace":
            reply = {"top_thunks_us_per_rollout": _trace(lambda r: run(steps[-1], r))}
        else:
            break
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, name: str, package_root: Path, args: argparse.Namespace, dump: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(package_root), str(_REPO)])
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} "
                            "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*rollout.*")
        cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--prompts",
               str(args.prompts), "--generations", str(args.generations), "--steps", args.steps,
               "--temperature", str(args.temperature), "--adapter", args.adapter,
               "--seed", str(args.seed)]
        self.name, self.dump = name, dump
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(_REPO))
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (see its stderr above)")
        return json.loads(line)

    def ask(self, cmd: str) -> dict[str, Any]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def loop_rows(text: str, loop, vocab: int) -> int:
    """Rows of a decode loop: the leading dim of its (rows, vocab) logits."""
    from benchmarks import hlo

    body = hlo.computations(text)[loop.attr("body")]
    return int(next(i.shape.split("[")[1].split(",")[0] for i in body
                    if i.shape.startswith("f32[") and i.shape.split("{")[0].endswith(
                        f",{vocab}]")))


def loop_profile(dump: str, rows_steps: str, vocab: int) -> list[dict[str, Any]]:
    """hlo.body_stats of the decode loops of the rollout program whose tokens are (rows, T2)."""
    from benchmarks import hlo

    files = sorted(glob.glob(os.path.join(dump, "*rollout*after_optimizations.txt")))
    text = next((Path(f).read_text() for f in files
                 if rows_steps in Path(f).read_text().split("ENTRY")[-1].split("\n")[0]), None)
    if text is None:
        return []
    out = []
    for loop in hlo.decode_loops(text, vocab):
        st = hlo.body_stats(text, loop)
        out.append({"rows": loop_rows(text, loop, vocab), **{k: st[k] for k in (
            "instructions", "fusions_by_kind", "nested", "copies", "copy_bytes",
            "touched_bytes")}})
    return out


def _timed(w: Worker, t: int):
    from benchmarks import harness

    return lambda r: harness.Measured(**w.ask(f"run {t} {r}"))


def export_ref(ref: str, into: str) -> Path:
    """`rewardmap_jax` as of git `ref`, extracted under `into`."""
    archive = subprocess.run(["git", "-C", str(_REPO), "archive", ref, "rewardmap_jax"],
                             check=True, capture_output=True).stdout
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return Path(into)


class _Captured(Exception):
    pass


def rollout_args(sampler_module, call) -> tuple:
    """The arguments `sampler.generate` passes to its jitted `_rollout` (nothing runs)."""
    real = sampler_module._rollout
    seen: list[tuple] = []

    def capture(*a):
        seen.append(a)
        raise _Captured

    sampler_module._rollout = capture
    try:
        call()
    except _Captured:
        pass
    finally:
        sampler_module._rollout = real
    return seen[0]


def plan_profile(args: argparse.Namespace) -> list[dict[str, Any]]:
    """This checkout only, per `DecodePlan` (`--plans`): the T2 rollout program's decode loops,
    copies inside them, XLA's temp bytes and the process-CPU seconds of the compilation."""
    import jax

    from benchmarks import hlo, inputs
    from rewardmap_jax.model.qwen2_5_vl import init_model
    from rewardmap_jax.rl import decode, sampler

    cfg = inputs.model_cfg(args.model)
    model = init_model(cfg, args.seed)
    ids, mask, grids, pv = inputs.build_prompts(cfg, args.prompts, args.seed)
    batch = inputs.prompt_batch(cfg, ids, mask, grids, pv)
    t = int(args.steps.split(",")[-1])
    params = sampler.SamplingParams(max_new_tokens=t, num_generations=args.generations,
                                    temperature=args.temperature, pad_id=cfg.pad_token_id,
                                    forbidden_ids=sampler.vision_special_ids(cfg))
    adapter = {"shared": sampler.QWEN2_5_VL, "repeat": sampler.QWEN2_5_VL_REPEAT}[args.adapter]
    context = contextlib.nullcontext
    if args.data_parallel > 1:
        from configs.curriculum import get_config
        from rewardmap_jax.model import sharding
        from rewardmap_jax.rl.placement import Placement

        mesh_cfg = get_config().mesh
        mesh_cfg.update(data=args.data_parallel, fsdp=1, tensor=1)
        mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:args.data_parallel])
        context = Placement(mesh, sharding.rules_from_config(mesh_cfg)).context
    out = []
    for name, plan in (("single_loop", decode.SINGLE_LOOP),
                       ("segments", decode.DecodePlan(unit_buckets=1)),
                       ("default", decode.DecodePlan())):
        with context():
            args_of_call = rollout_args(sampler, functools.partial(
                sampler.generate, model, adapter, batch, params, jax.random.key(0), plan))
            # The plan as given, also under data parallelism (`generate` turns compaction off).
            args_of_call = tuple(plan if isinstance(a, decode.DecodePlan) else a
                                 for a in args_of_call)
            c0 = time.process_time()
            compiled = sampler._rollout.lower(*args_of_call).compile()
            cpu = time.process_time() - c0
        text = compiled.as_text()
        found = hlo.decode_loops(text, cfg.text.vocab_size)
        loops = [hlo.body_stats(text, w) for w in found]
        # The full-batch loops, one per segment: their bytes grow with the segment's slots.
        rows = max(loop_rows(text, w, cfg.text.vocab_size) for w in found)
        full = sorted(st["touched_bytes"] for w, st in zip(found, loops, strict=True)
                      if loop_rows(text, w, cfg.text.vocab_size) == rows)
        ends = plan.segment_ends(t)
        spans = [e - b for b, e in zip((1, *ends[:-1]), ends, strict=True)]
        out.append({"plan": name, "segment_ends": list(ends),
                    "step_touched_mib": round(sum(b * n for b, n in zip(full, spans, strict=True))
                                              / (t - 1) / 2**20, 2),
                    "compile_cpu_s": round(cpu, 2), "decode_loops": len(loops),
                    "max_copy_bytes_per_step": max(x["copy_bytes"] for x in loops),
                    "sorts": sum(x["nested"]["sort"] for x in loops),
                    "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 2),
                    **({"collectives": collectives(text, found)} if args.data_parallel > 1
                       else {})})
    return out


_COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def collectives(text: str, loops: list) -> dict[str, dict[str, int]]:
    """Collective ops of a compiled program and their result bytes, split into those in the
    decode loops (once per step) and the rest (once per rollout or segment)."""
    from benchmarks import hlo

    comps = hlo.computations(text)
    inside: set[str] = set()
    todo = [w.attr(k) for w in loops for k in ("body", "condition")]
    while todo:  # a loop's body and condition, and everything they call
        name = todo.pop()
        if name in inside or name not in comps:
            continue
        inside.add(name)
        todo += [c for i in comps[name] for c in i.called()]
    out = {"in_loops": {"count": 0, "bytes": 0, "largest": 0},
           "outside": {"count": 0, "bytes": 0, "largest": 0}}
    for name, instrs in comps.items():
        for i in instrs:
            if i.op.removesuffix("-start") in _COLLECTIVES:
                size = hlo.shape_bytes(i.shape)
                d = out["in_loops" if name in inside else "outside"]
                d["count"] += 1
                d["bytes"] += size
                d["largest"] = max(d["largest"], size)
    return out


def main(argv=None) -> int:
    # `python benchmarks/decode_step.py` puts benchmarks/ first. Not at import time, and never
    # ahead of PYTHONPATH: a baseline worker has its own package root first there (and this
    # checkout after it, so the guard leaves its order alone).
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))
    from benchmarks import harness

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="git ref of the package to compare against")
    ap.add_argument("--model", default="tiny", choices=("tiny", "tiny-wide"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--steps", default="16,80", help="T1,T2 new tokens")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--adapter", default="shared", choices=("shared", "repeat"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", action="store_true", help="JAX profiler: costliest thunks")
    ap.add_argument("--plans", action="store_true",
                    help="this checkout: loops, copies, temp bytes, compile CPU per DecodePlan")
    ap.add_argument("--data-parallel", type=int, default=1,
                    help="--plans: rows over this many fake CPU devices; report collectives")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    harness.check_arguments(args)
    if args.data_parallel > 1:
        if not args.plans:
            ap.error("--data-parallel applies to --plans")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.data_parallel}")
    if args.plans:
        rows = plan_profile(args)
        print(json.dumps({"bench": "decode_plans", "model": args.model, "steps": args.steps,
                          "adapter": args.adapter, "plans": rows}))
        for r in rows:
            print(harness.markdown_row([r["plan"], r["segment_ends"], r["decode_loops"],
                                        r["sorts"], r["max_copy_bytes_per_step"],
                                        r["step_touched_mib"], r["temp_mib"],
                                        r["compile_cpu_s"],
                                        *([r["collectives"]] if "collectives" in r else [])]))
        return 0
    t1, t2 = (int(s) for s in args.steps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"current": _REPO}
        if args.baseline:
            roots = {"baseline": export_ref(args.baseline, os.path.join(tmp, "base")), **roots}
        workers = {n: Worker(n, r, args, os.path.join(tmp, f"dump_{n}"))
                   for n, r in roots.items()}
        try:
            fns = {f"{n}@{t}": _timed(w, t) for n, w in workers.items() for t in (t1, t2)}
            tm = harness.interleave(fns, args.repeats, **harness.limits(args))
            traces = {n: w.ask("trace") for n, w in workers.items()} if args.trace else {}
        finally:
            for w in workers.values():
                w.close()
        result: dict[str, Any] = {"bench": "decode_step", "model": args.model,
                                  "adapter": args.adapter, "temperature": args.temperature,
                                  "steps": [t1, t2], "baseline": args.baseline, "impl": {}}
        per_step = {}
        for n, w in workers.items():
            per_step[n] = [(b - a) / (t2 - t1) for a, b in
                           zip(tm.wall[f"{n}@{t1}"], tm.wall[f"{n}@{t2}"], strict=True)]
            cpu = [(b - a) / (t2 - t1) for a, b in
                   zip(tm.cpu[f"{n}@{t1}"], tm.cpu[f"{n}@{t2}"], strict=True)]
            rows = w.ready["rows"]
            result["impl"][n] = {
                **w.ready, "step_ms": harness.summary([x * 1e3 for x in per_step[n]], 3),
                "step_cpu_ms": harness.summary([x * 1e3 for x in cpu], 3),
                "loops": loop_profile(w.dump, f"[{rows},{t2}]", w.ready["vocab"]),
                **traces.get(n, {})}
        if args.baseline:
            result["speedup"] = harness.summary(
                [b / c for b, c in zip(per_step["baseline"], per_step["current"], strict=True)],
                3)
    rows_md = []
    for n, r in result["impl"].items():
        loops = r["loops"]
        full = max(loops, key=lambda x: (x["rows"], x["touched_bytes"])) if loops else {}
        rows_md.append(harness.markdown_row([
            f"{n} ({args.model}, {r['rows']} rows, L {r['prompt_len']})",
            harness.spread(r["step_ms"]), f"{r['step_cpu_ms']['median']:.3g}",
            len(loops), full.get("instructions"), full.get("nested", {}).get("sort"),
            full.get("nested", {}).get("while"), f"{full.get('copy_bytes', 0) / 1e6:.2f}",
            f"{full.get('touched_bytes', 0) / 1e6:.1f}",
            f"{r['cost']['model_step']['bytes accessed'] / 1e6:.1f}",
            f"{r['cost']['draw']['bytes accessed'] / 1e6:.2f}",
            f"{r['cost']['draw']['transcendentals'] / 1e3:.0f}k"]))
    if args.baseline:
        rows_md.append(f"step-time ratio baseline / current: {harness.spread(result['speedup'])}")
    status = harness.emit(result, tm, args)
    print("\n".join(rows_md))
    return status


if __name__ == "__main__":
    sys.exit(main())
