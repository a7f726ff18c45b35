"""One-command accelerator benchmark: 3B shapes, random init, bf16 compute.

    python benchmarks/accelerator.py --out results/           # on one GPU/TPU, < 8 min
    python benchmarks/accelerator.py --tiny --out /tmp/acc    # CPU smoke run (tested)

Measures, on the first device, with the project's own code paths:

* **rollout** (`rl.sampler.generate` through the trainer's adapter `rl.rollout.ADAPTER`):
  prefill tokens/s (timed as a rollout of one new token) and decode tokens/s (the rest of a
  `--completion`-token rollout, no early stop), each as % of the device roofline: time at
  peak FLOP/s or at peak HBM bandwidth (parameters read once per call, KV cache read once per
  decode step), whichever is longer;
* **reference log-probs** (`rl.steps.make_logprob_fn`) and **one GRPO update**
  (`rl.steps.make_grpo_step`: remat full, `--grad-accum` micro-batches, AdamW, donated state):
  tokens/s (prompt + completion of every sample) and MFU (model FLOPs of the layout the steps
  run, `shapes.learner_forward_flops`, x3 for the update, over peak bf16 FLOP/s);
* peak device memory (`memory_stats`, after each phase) and every compile time;
* bf16-on-device vs fp32-on-CPU logits of a small model (tiny preset, one image).

Default shapes (the issue's): prompt 4,096 tokens with one 64 x 64-patch image (1,024 image
tokens), 512 completion tokens, G = 4, 8 prompts; fp32 master params (the presets'), bf16
compute, remat full. The GRPO end-to-end figure adds rollout + reference log-probs + update (the
way EasyR1 reports tokens/s per GPU: ~1,800 for Qwen2.5-VL-3B on an H100, MFU 8%).

Writes `accelerator.json` and `accelerator.md` (a Markdown row for docs/benchmarks.md) to
`--out`. Imports neither ml_collections nor grain: the official RL / optimizer values it needs are
restated in `OFFICIAL` and tested equal to `configs/curriculum.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import shapes  # noqa: E402
from rewardmap_jax.model.config import get_preset  # noqa: E402
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL, init_model, param_count  # noqa: E402
from rewardmap_jax.rl import grpo, optim, rollout, sampler, steps  # noqa: E402

# configs/curriculum.py:qwen2_5_vl_3b values this script needs (tests/test_accelerator.py checks
# them against the config, which cannot be imported here: it needs ml_collections).
OFFICIAL = {
    "optim": {"lr": 1e-6, "schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0,
              "weight_decay": 1e-2, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "grad_clip": 1.0,
              "freeze_vision": False},
    "loss": {"policy_loss": "grpo", "clip_low": 0.2, "clip_high": 0.2, "dual_clip": 0.0,
             "log_ratio_clamp": 20.0, "kl_coef": 1e-2, "kl_estimator": "k3", "kl_clamp": 10.0,
             "entropy_coef": 1e-3, "loss_agg": "token-mean", "norm_len": 0, "tis_cap": 0.0},
    "model": {"param_dtype": "float32", "compute_dtype": "bfloat16", "remat": "full"},
    "logprob_chunk": 256,
    "sequence_layout": "shared",
}
# Peak dense bf16 FLOP/s and HBM bytes/s per device (vendor specs), by `device_kind` prefix.
PEAKS = {
    "NVIDIA H200": (989e12, 4.8e12),
    "NVIDIA H100": (989e12, 3.35e12),
    "NVIDIA A100": (312e12, 2.0e12),
    "TPU v5p": (459e12, 2.76e12),
    "TPU v5 lite": (197e12, 0.82e12),
    "TPU v4": (275e12, 1.2e12),
}


class _Section(dict):
    """Attribute access for `optim.make_optimizer` (which reads a config section)."""

    __getattr__ = dict.__getitem__


def _peaks(device: jax.Device) -> tuple[float, float] | None:
    return next((v for k, v in PEAKS.items() if device.device_kind.startswith(k)), None)


def _peak_mem(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _timed(fn, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def _compiled(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    c = jitted.lower(*args).compile()
    return c, time.perf_counter() - t0


def _shape_args(a: argparse.Namespace) -> dict[str, Any]:
    if a.tiny:
        return dict(preset="tiny", prompts=2, prompt_len=96, side=8, completion=8, gens=2,
                    repeats=2, grad_accum=a.grad_accum)
    return dict(preset="qwen2_5_vl_3b", prompts=a.prompts, prompt_len=a.prompt_len,
                side=a.side, completion=a.completion, gens=a.gens, repeats=a.repeats,
                grad_accum=a.grad_accum)


def run(a: argparse.Namespace) -> dict[str, Any]:
    s = _shape_args(a)
    dev = jax.devices()[0]
    peaks = _peaks(dev)
    res: dict[str, Any] = {"device": dev.device_kind, "platform": dev.platform,
                           "jax": jax.__version__, "shapes": s,
                           "load_avg_start": os.getloadavg()[0], "compile_s": {},
                           "peak_memory_bytes": {}, "errors": {}}
    cfg = get_preset(s["preset"], **OFFICIAL["model"])
    b, g, t, length = s["prompts"], s["gens"], s["completion"], s["prompt_len"]
    t0 = time.perf_counter()
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: init_model(cfg, seed=0)))
    model = nnx.merge(graphdef, jax.jit(lambda: nnx.split(init_model(cfg, seed=0))[1])())
    graphdef, params = nnx.split(model, nnx.Param)
    jax.block_until_ready(params)
    res["init_s"] = time.perf_counter() - t0
    res["params"] = param_count(model)
    vision_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.visual, nnx.Param)))
    batch = jax.tree.map(jnp.asarray, shapes.seq_batch(cfg, b, g, length, t, s["side"]))
    patches = s["side"] ** 2
    keys_prefill = length / 2

    def phase(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record and go on to the next phase
            res["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        res["peak_memory_bytes"][name] = _peak_mem(dev)

    # -- rollout: prefill (1 new token) and decode (the rest) ---------------------------------
    def rollout_phase():
        pb = sampler.PromptBatch(batch["prompt_ids"], batch["prompt_mask"], batch["positions"],
                                 None, (batch["vision"], batch["vis_offsets"]))
        key = jax.random.key(0)
        times = {}
        for name, new in (("prefill", 1), ("rollout", t)):
            sp = sampler.SamplingParams(max_new_tokens=new, num_generations=g, temperature=1.0,
                                        stop_ids=(), pad_id=cfg.pad_token_id,
                                        forbidden_ids=sampler.vision_special_ids(cfg))
            fn = lambda sp=sp: sampler.generate(model, rollout.ADAPTER, pb, sp, key)  # noqa
            t1 = time.perf_counter()
            out = jax.block_until_ready(fn())  # first call compiles
            res["compile_s"][name] = time.perf_counter() - t1
            assert int(out.steps) == new, (int(out.steps), new)
            times[name] = _timed(fn, s["repeats"])
        pre, full = times["prefill"]["median_s"], times["rollout"]["median_s"]
        dec = max(full - pre, 1e-9)
        pre_tok, dec_tok = b * length, b * g * (t - 1)
        res["prefill"] = {**times["prefill"], "tokens": pre_tok, "tokens_per_s": pre_tok / pre}
        res["decode"] = {"seconds": dec, "tokens": dec_tok, "tokens_per_s": dec_tok / dec,
                         "rollout": times["rollout"]}
        # Roofline: prefill FLOPs / peak vs parameter bytes / bandwidth; decode per step:
        # FLOPs of B*G tokens vs parameters (text + head) + KV cache read once per step.
        pbytes = sum(x.nbytes for x in jax.tree.leaves(params))
        text_bytes = pbytes - vision_bytes
        kv_elem = 2 * cfg.text.num_hidden_layers * cfg.text.num_key_value_heads * \
            cfg.text.head_dim * jnp.dtype(cfg.compute_dtype).itemsize
        kv_read = (b * length + b * g * (t / 2)) * kv_elem  # mean over the decode steps
        f_pre = shapes.forward_flops(cfg, rows=b, new=length, keys=keys_prefill, head_rows=b,
                                     images=b, patches=patches)
        f_dec = shapes.forward_flops(cfg, rows=b * g, new=1, keys=length + t / 2,
                                     head_rows=b * g)
        res["prefill"]["model_flops"] = f_pre
        res["decode"]["model_flops_per_step"] = f_dec
        res["decode"]["bytes_per_step"] = text_bytes + kv_read
        if peaks:
            fl, bw = peaks
            roof_pre = max(f_pre / fl, pbytes / bw)
            roof_dec = (t - 1) * max(f_dec / fl, (text_bytes + kv_read) / bw)
            res["prefill"]["roofline_pct"] = 100 * roof_pre / pre
            res["prefill"]["mfu_pct"] = 100 * f_pre / pre / fl
            res["decode"]["roofline_pct"] = 100 * roof_dec / dec
            res["decode"]["hbm_gbs"] = (t - 1) * (text_bytes + kv_read) / dec / 1e9

    # -- reference log-probs and one GRPO update --------------------------------------------
    # tokens/s counts each sample's prompt + completion (as EasyR1); MFU counts the model FLOPs
    # of the layout the steps run (the shared layout runs each prompt once per group)
    train_tokens = b * g * (length + t)
    layout = OFFICIAL["sequence_layout"]
    f_fwd = shapes.learner_forward_flops(cfg, layout=layout, prompts=b, g=g, prompt_len=length,
                                         completion_len=t, patches=patches)

    def logprob_phase():
        fn = steps.make_logprob_fn(graphdef, g, chunk=OFFICIAL["logprob_chunk"], layout=layout)
        c, res["compile_s"]["logprobs"] = _compiled(fn, params, batch)
        tm = _timed(lambda: c(params, batch), s["repeats"])
        res["logprobs"] = {**tm, "tokens": train_tokens,
                           "tokens_per_s": train_tokens / tm["median_s"], "model_flops": f_fwd}
        if peaks:
            res["logprobs"]["mfu_pct"] = 100 * f_fwd / tm["median_s"] / peaks[0]

    def update_phase():
        tx = optim.make_optimizer(_Section(OFFICIAL["optim"]), 1000)
        step = steps.make_grpo_step(graphdef, tx, grpo.GRPOLossConfig(**OFFICIAL["loss"]), g,
                                    chunk=OFFICIAL["logprob_chunk"], grad_accum=s["grad_accum"],
                                    donate=True, layout=layout)
        state = [params, tx.init(params)]
        c, res["compile_s"]["update"] = _compiled(step, *state, batch)
        ma = c.memory_analysis()
        if ma is not None:
            res["update_memory_analysis"] = {
                "argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
                "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}

        def once():
            state[0], state[1], m = c(state[0], state[1], batch)
            return m["loss"]

        jax.block_until_ready(once())  # warm-up (first run allocates)
        tm = _timed(once, s["repeats"])
        res["update"] = {**tm, "tokens": train_tokens,
                         "tokens_per_s": train_tokens / tm["median_s"],
                         "model_flops": 3 * f_fwd}
        if peaks:
            res["update"]["mfu_pct"] = 100 * 3 * f_fwd / tm["median_s"] / peaks[0]

    phase("rollout", rollout_phase)
    phase("logprobs", logprob_phase)
    phase("update", update_phase)  # donates `params`: the last phase that uses them
    if all(k in res for k in ("prefill", "decode", "logprobs", "update")):
        sec = (res["decode"]["rollout"]["median_s"] + res["logprobs"]["median_s"]
               + res["update"]["median_s"])
        res["grpo_step"] = {"seconds": sec, "tokens": train_tokens,
                            "tokens_per_s": train_tokens / sec}
        if peaks:
            flops = res["prefill"]["model_flops"] + (t - 1) * res["decode"][
                "model_flops_per_step"] + f_fwd + 3 * f_fwd
            res["grpo_step"]["mfu_pct"] = 100 * flops / sec / peaks[0]
    phase("logits_bf16_vs_fp32_cpu", lambda: res.update(logit_parity()))
    res["load_avg_end"] = os.getloadavg()[0]
    return res


def logit_parity() -> dict[str, Any]:
    """Tiny-preset logits (one 8 x 8-patch image in a 96-token prompt): bf16 compute on the
    default device vs fp32 on the CPU, same fp32 weights."""
    cpu = jax.devices("cpu")[0]
    cfg32 = get_preset("tiny")
    with jax.default_device(cpu):
        model32 = init_model(cfg32, seed=1)
    graphdef, state = nnx.split(model32)
    b = shapes.seq_batch(cfg32, 2, 1, 96, 4, 8, stacked=False)
    args = (b["prompt_ids"], b["positions"], b["prompt_mask"], b["vision"])

    def logits(cfg, device):
        gd = nnx.split(nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0))))[0]
        fn = jax.jit(lambda st, *x: nnx.merge(gd, st)(*x)[0])
        return np.asarray(fn(jax.device_put(state, device), *jax.device_put(args, device)),
                          np.float64)

    ref = logits(cfg32, cpu)
    got = logits(cfg32.replace(compute_dtype="bfloat16"), jax.devices()[0])
    logp = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - x.max(-1, keepdims=True)  # noqa: E731
    p_ref, p_got = logp(ref), logp(got)
    kl = (np.exp(p_ref) * (p_ref - p_got)).sum(-1)
    return {"logits_bf16_vs_fp32_cpu": {
        "max_abs_diff": float(np.abs(got - ref).max()), "logit_scale": float(np.abs(ref).max()),
        "mean_kl": float(kl.mean()), "argmax_agree": float((got.argmax(-1) == ref.argmax(-1))
                                                           .mean()),
        "device": jax.devices()[0].device_kind}}


def markdown_row(r: dict[str, Any]) -> str:
    def f(path: str, key: str, fmt: str = "{:,.0f}") -> str:
        v = r.get(path, {}).get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    mem = max((v for v in r["peak_memory_bytes"].values() if v), default=None)
    lp = r.get("logits_bf16_vs_fp32_cpu", {})
    cells = [
        r["device"],
        f"{f('prefill', 'tokens_per_s')} ({f('prefill', 'roofline_pct', '{:.0f}')}%)",
        f"{f('decode', 'tokens_per_s')} ({f('decode', 'roofline_pct', '{:.0f}')}%)",
        f("update", "tokens_per_s"), f"{f('update', 'mfu_pct', '{:.1f}')}%",
        f("grpo_step", "tokens_per_s"), f"{f('grpo_step', 'mfu_pct', '{:.1f}')}%",
        f"{mem / 2**30:.1f} GiB" if mem else "-",
        f"{sum(r['compile_s'].values()):.0f} s",
        f"{lp.get('max_abs_diff', float('nan')):.2e} / {lp.get('mean_kl', float('nan')):.1e}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| device | prefill tok/s (% roofline) | decode tok/s (% roofline) | update tok/s "
          "| update MFU | GRPO step tok/s | step MFU | peak memory | compile | bf16 vs fp32 "
          "logits (max abs / KL) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny preset and shapes (CPU smoke run)")
    ap.add_argument("--out", default=".", help="directory for accelerator.json / .md")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=4096)
    ap.add_argument("--side", type=int, default=64, help="image side in patches (64: 1,024 "
                    "image tokens)")
    ap.add_argument("--completion", type=int, default=512)
    ap.add_argument("--gens", type=int, default=4, help="G, samples per prompt")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    res = run(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator.json").write_text(json.dumps(res, indent=1, default=float))
    row = markdown_row(res)
    (out / "accelerator.md").write_text(HEADER + "\n" + row + "\n")
    print(json.dumps(res, default=float))
    print(HEADER + "\n" + row)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
