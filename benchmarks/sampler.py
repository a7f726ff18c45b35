"""Rollout throughput: rewardmap_jax sampler vs transformers `generate` (torch CPU), interleaved.

    python benchmarks/sampler.py                      # default: 8 prompts x G 4, 64 new tokens
    python benchmarks/sampler.py --mixed              # short answers beside long plans
    python benchmarks/sampler.py --model tiny-wide    # hidden 768, 4 layers, vocab 8192
    python benchmarks/sampler.py --extra-prompt-tokens 1900     # long prompts (2048 bucket)

Both sides run the same random Qwen2.5-VL weights (transformers builds them; our port loads the
saved directory with `hf_io.load_hf`), the same left-padded prompts with one 84x84 map image each
(9 image tokens) and G samples per prompt; vision tokens are forbidden on both sides; fp32.
Timing goes through `benchmarks/harness.py` (interleaved rounds, median and spread, load).
Our sampler is given the weights split once, `(graphdef, state)`, as the trainer holds them
(`sampler.split_policy`); transformers is given its module. Each timed round includes
everything else either side does per call (inputs from host numpy, checks, dispatch).

* default: plain sampling (temperature 1, no truncation), exactly T new tokens (no stop on
  either side). Implementations: `jax_shared` (default adapter: one prompt cache per prompt
  shared by its G samples), `jax_repeat` (G copies of the prompt cache), `hf`.
* `--mixed`: greedy decoding, stop ids chosen from a free greedy run (`mixed_split`) so that
  half of the prompts stop within `--short-tokens` + 1 tokens while the others never stop
  within T, as the map world's 4-5 token VQA answers beside long route plans.
  Implementations: `compact` (default `DecodePlan`: segments + compaction of finished
  prompts), `no_compact` (segments, no compaction), `single_loop` (one loop over the full
  cache), `hf`. All four must return the same tokens (asserted: the compacted program equals
  the uncompacted one and transformers; with `--no-hf`, transformers is left out).

Decode tokens/s on an accelerator, against the HBM roofline: `benchmarks/accelerator.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from benchmarks.inputs import build_prompts, model_cfg, prompt_batch  # noqa: E402
from rewardmap_jax.model import config as model_config  # noqa: E402
from rewardmap_jax.model import hf_io  # noqa: E402
from rewardmap_jax.rl import decode, sampler  # noqa: E402

PLANS = {"compact": decode.DecodePlan(), "no_compact": decode.DecodePlan(unit_buckets=1),
         "single_loop": decode.SINGLE_LOOP}


def build_hf(cfg: model_config.ModelConfig, seed: int, workdir: str):
    """A random transformers model with `cfg`'s shapes, and our port loaded from it."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    hf_cfg = Qwen2_5_VLConfig(**model_config.to_hf_config(cfg))
    hf_cfg._attn_implementation = "sdpa"
    hf = Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    hf.save_pretrained(workdir)
    return hf, hf_io.load_hf(workdir)


def hf_generate(hf, cfg, ids, mask, grids, pv, g: int, t: int, *, greedy: bool,
                stop_ids=(), seed: int = 0) -> np.ndarray:
    """transformers `generate`: (B*G, T) new tokens, padded after the stop."""
    import torch

    torch.manual_seed(seed)
    if greedy:  # generate() refuses num_return_sequences > 1 without sampling: repeat the rows
        per = np.prod(grids, 1)
        pv = np.concatenate([pv[o:o + n] for o, n in zip(np.cumsum(per) - per, per,
                                                          strict=True) for _ in range(g)])
        ids, mask, grids = (np.repeat(x, g, 0) for x in (ids, mask, grids))
        kw = dict(do_sample=False)
    else:
        kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=t,
                  num_return_sequences=g)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grids),
            mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
            max_new_tokens=t,
            bad_words_ids=[[i] for i in sampler.vision_special_ids(cfg)],
            eos_token_id=list(stop_ids) or cfg.eos_token_id, pad_token_id=cfg.pad_token_id, **kw)
    new = out[:, ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, t - new.shape[1])), constant_values=cfg.pad_token_id)


def mixed_split(tokens: np.ndarray, g: int, at: int) -> tuple[tuple[int, ...], list[int]]:
    """Stop ids and the prompts they end early, from free greedy completions (a prompt's G rows
    are identical): prompts sharing a token are kept on one side, whole groups join the short
    side until it holds half the prompts, and each short prompt's token `at` becomes a stop id,
    which no long prompt ever emits (so those run the full T)."""
    rows = [set(r.tolist()) for r in tokens[::g]]
    groups: list[list[int]] = []
    for b, toks in enumerate(rows):
        joined = [grp for grp in groups if any(rows[o] & toks for o in grp)]
        for grp in joined:
            groups.remove(grp)
        groups.append(sorted([b, *(o for grp in joined for o in grp)]))
    short: list[int] = []
    for grp in sorted(groups, key=len):
        if len(short) + len(grp) <= len(rows) // 2:
            short += grp
    if not short or len(short) > sampler.MAX_STOP_IDS:
        raise RuntimeError(f"no short/long split of these prompts (groups {groups}); "
                           "try another --seed")
    return tuple(sorted({int(tokens[b * g, at]) for b in short})), sorted(short)


def run_default(args, hf, model, cfg) -> int:
    g, t = args.generations, args.max_new_tokens
    ids, mask, grids, pv = build_prompts(cfg, args.prompts, args.seed,
                                         extra=args.extra_prompt_tokens)
    batch = prompt_batch(cfg, ids, mask, grids, pv)
    params = sampler.SamplingParams(max_new_tokens=t, num_generations=g, temperature=1.0,
                                    pad_id=cfg.pad_token_id,
                                    forbidden_ids=sampler.vision_special_ids(cfg))
    adapters = {"jax_shared": sampler.QWEN2_5_VL, "jax_repeat": sampler.QWEN2_5_VL_REPEAT}
    # The weights as the trainer holds them, split once (`sampler.split_policy`).
    model = sampler.split_policy(model)
    first_s = {}
    for name, adapter in adapters.items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(sampler.generate(model, adapter, batch, params,
                                                     jax.random.key(0)))
        first_s[name] = time.perf_counter() - t0
        assert out.tokens.shape == (args.prompts * g, t) and int(out.steps) == t

    def ours(adapter):
        return lambda r: jax.block_until_ready(sampler.generate(
            model, adapter, batch, params, jax.random.key(r + 1)))

    fns = {name: ours(a) for name, a in adapters.items()}
    fns["hf"] = lambda r: hf_generate(hf, cfg, ids, mask, grids, pv, g, t, greedy=False,
                                      seed=r + 1)
    traces = trace_counts()
    tm = harness.interleave(fns, args.repeats, **harness.limits(args))
    assert trace_counts() == traces, "a timed round recompiled"
    new_tokens = args.prompts * g * t
    med = {n: tm.median(n) for n in fns}
    result = {
        "bench": "sampler", "model": args.model, "prompts": args.prompts, "generations": g,
        "max_new_tokens": t, "prompt_len": int(ids.shape[1]), "new_tokens": new_tokens,
        "compile_s": {n: round(first_s[n] - med[n], 2) for n in adapters},
        "tokens_per_s": {n: round(new_tokens / v, 1) for n, v in med.items()},
        "speedup_vs_hf": {n: tm.ratio("hf", n) for n in adapters},
        "trace_counts": traces, **_versions(),
    }
    su = result["speedup_vs_hf"]
    row = [f"{args.model}, {args.prompts}x{g}, T {t}, L {ids.shape[1]}",
           *(harness.spread(tm.as_dict()["wall_s"][n]) for n in fns),
           *(harness.spread(su[n]) + "x" for n in adapters),
           f"{tm.load_before[0]:.2f} / {tm.load_after[0]:.2f}"]
    return harness.emit(result, tm, args, row)


def run_mixed(args, hf, model, cfg) -> int:
    g, t = args.generations, args.max_new_tokens
    ids, mask, grids, pv = build_prompts(cfg, args.prompts, args.seed)
    batch = prompt_batch(cfg, ids, mask, grids, pv)
    model = sampler.split_policy(model)  # as in run_default
    base = sampler.SamplingParams(max_new_tokens=t, num_generations=g, temperature=0.0,
                                  pad_id=cfg.pad_token_id,
                                  forbidden_ids=sampler.vision_special_ids(cfg))
    free = sampler.generate(model, sampler.QWEN2_5_VL, batch, base, jax.random.key(0),
                            decode.SINGLE_LOOP)
    stops, short = mixed_split(np.asarray(free.tokens), g, args.short_tokens)
    params = sampler.SamplingParams(**{**base.__dict__, "stop_ids": stops})

    def ours(plan):
        return lambda r: jax.block_until_ready(sampler.generate(
            model, sampler.QWEN2_5_VL, batch, params, jax.random.key(0), plan))

    fns = {name: ours(plan) for name, plan in PLANS.items()}
    if not args.no_hf:
        fns["hf"] = lambda r: hf_generate(hf, cfg, ids, mask, grids, pv, g, t, greedy=True,
                                          stop_ids=stops)
    outs = {name: fn(0) for name, fn in fns.items()}
    want = outs["single_loop"] if args.no_hf else outs["hf"]
    for name in PLANS:
        np.testing.assert_array_equal(np.asarray(outs[name].tokens), np.asarray(
            want.tokens if args.no_hf else want), err_msg=name)
    lengths = np.asarray(outs["compact"].lengths).reshape(args.prompts, g)
    is_short = np.isin(np.arange(args.prompts), short)
    traces = trace_counts()
    tm = harness.interleave(fns, args.repeats, warmup=0, **harness.limits(args))
    assert trace_counts() == traces, "a timed round recompiled"
    result = {
        "bench": "sampler_mixed", "model": args.model, "prompts": args.prompts,
        "generations": g, "max_new_tokens": t, "stop_ids": list(stops),
        "short_prompts": short, "lengths": lengths.tolist(),
        "same_tokens": sorted(fns), "trace_counts": traces,
        "speedup_compact_vs": {n: tm.ratio(n, "compact") for n in fns if n != "compact"},
        **_versions(),
    }
    row = [f"{args.model}, {len(short)}x{g} short (<= {lengths[is_short].max()} tok) + "
           f"{args.prompts - len(short)}x{g} long ({lengths[~is_short].min()} tok)",
           *(harness.spread(tm.as_dict()["wall_s"][n]) for n in fns),
           harness.spread(result["speedup_compact_vs"]["no_compact"]) + "x",
           f"{tm.load_before[0]:.2f} / {tm.load_after[0]:.2f}"]
    return harness.emit(result, tm, args, row)


def trace_counts() -> dict[str, int]:
    """Rollout compilations and the decode-step copies traced into them."""
    return {**sampler.TRACE_COUNTS, **{f"decode_{k}": v for k, v in decode.TRACE_COUNTS.items()}}


def _versions() -> dict[str, Any]:
    import torch
    import transformers

    return {"jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "backend": jax.default_backend()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", choices=("tiny", "tiny-wide"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="default 64, or 128 with --mixed")
    ap.add_argument("--extra-prompt-tokens", type=int, default=0,
                    help="text tokens added to every prompt (long-prompt regime)")
    ap.add_argument("--mixed", action="store_true", help="short answers beside long plans")
    ap.add_argument("--no-hf", action="store_true",
                    help="--mixed: time the decode plans only (tokens still asserted equal)")
    ap.add_argument("--short-tokens", type=int, default=4,
                    help="--mixed: the short prompts stop by this token (0-based)")
    ap.add_argument("--seed", type=int, default=0)
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    harness.check_arguments(args)
    if args.no_hf and not args.mixed:
        ap.error("--no-hf applies to --mixed only (the default run compares with transformers)")
    if args.max_new_tokens is None:
        args.max_new_tokens = 128 if args.mixed else 64
    cfg = model_cfg(args.model)
    with tempfile.TemporaryDirectory() as d:
        hf, model = build_hf(cfg, args.seed, d)
    return (run_mixed if args.mixed else run_default)(args, hf, model, model.cfg)


if __name__ == "__main__":
    sys.exit(main())
