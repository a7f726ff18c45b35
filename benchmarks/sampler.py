"""Rollout throughput: rewardmap_jax sampler vs transformers `generate` (torch CPU), side by side.

Both run the same random `tiny` Qwen2.5-VL weights (transformers builds them; our port loads the
saved directory with `hf_io.load_hf`), the same left-padded prompts with one 84x84 map image each
(9 image tokens), G samples per prompt, exactly T new tokens (no early stop on either side) and
plain sampling (temperature 1, no truncation, vision tokens forbidden). The two sides alternate
within one process so machine load hits both alike.

    python benchmarks/sampler.py --prompts 8 --generations 4 --max-new-tokens 64

Both sampler modes are timed: `shared` (default: group-shared prompt KV cache) and `repeat` (G
copies of the prompt cache). Prints one JSON line: compile time, steady-state seconds per rollout
and tokens/s for each, and the speed-ups over transformers (medians over repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewardmap_jax.model import config as model_config  # noqa: E402
from rewardmap_jax.model import hf_io, rope_index  # noqa: E402
from rewardmap_jax.model.vision_layout import pack_vision_inputs  # noqa: E402
from rewardmap_jax.rl import sampler  # noqa: E402

GRID = (1, 6, 6)  # an 84x84 tiny map: 6x6 patches -> 9 image tokens
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


def build_models(seed: int, workdir: str):
    cfg = model_config.tiny()
    torch.manual_seed(seed)
    hf_cfg = Qwen2_5_VLConfig(**model_config.to_hf_config(cfg))
    hf_cfg._attn_implementation = "sdpa"
    hf = Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    hf.save_pretrained(workdir)
    return hf, hf_io.load_hf(workdir)


def build_prompts(cfg, n: int, seed: int, buckets: tuple[int, ...], extra: int = 0):
    rs = np.random.RandomState(seed)
    ntok = int(np.prod(GRID)) // cfg.vision.merge_unit
    seqs = []
    for i in range(n):
        head = list(rs.randint(0, 1024, size=12 + 3 * i + extra))
        tail = list(rs.randint(0, 1024, size=20))
        seqs.append([cfg.bos_token_id, *head, cfg.vision_start_token_id,
                     *[cfg.image_token_id] * ntok, cfg.vision_end_token_id, *tail])
    length = sampler.pick_bucket(max(map(len, seqs)), buckets)
    ids = np.full((n, length), cfg.pad_token_id, np.int64)
    mask = np.zeros((n, length), np.int64)
    for r, s in enumerate(seqs):
        ids[r, length - len(s):] = s
        mask[r, length - len(s):] = 1
    grids = np.array([GRID] * n)
    pv = rs.randn(int(np.prod(grids, 1).sum()), cfg.vision.patch_dim).astype(np.float32)
    return ids, mask, grids, pv


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extra-prompt-tokens", type=int, default=0,
                    help="text tokens added to every prompt (long-prompt regime)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as d:
        hf, model = build_models(args.seed, d)
    cfg = model.cfg
    g, t = args.generations, args.max_new_tokens
    ids, mask, grids, pv = build_prompts(cfg, args.prompts, args.seed, BUCKETS,
                                         args.extra_prompt_tokens)
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, grids)
    batch = sampler.PromptBatch(ids.astype(np.int32), mask.astype(bool), pos, deltas,
                                pack_vision_inputs(pv, grids, cfg.vision))
    forbidden = sampler.vision_special_ids(cfg)
    params = sampler.SamplingParams(max_new_tokens=t, num_generations=g, temperature=1.0,
                                    stop_ids=(), pad_id=cfg.pad_token_id, forbidden_ids=forbidden)

    adapters = {"shared": sampler.QWEN2_5_VL, "repeat": sampler.QWEN2_5_VL_REPEAT}

    def ours(mode, seed):
        out = sampler.generate(model, adapters[mode], batch, params, jax.random.key(seed))
        return jax.block_until_ready(out)

    hf_inputs = dict(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
        pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grids),
        mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
    )

    def theirs(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hf.generate(**hf_inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              num_return_sequences=g, max_new_tokens=t, min_new_tokens=t,
                              bad_words_ids=[[i] for i in forbidden],
                              eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        assert out.shape == (args.prompts * g, ids.shape[1] + t), out.shape
        return out

    first_s = {}
    for mode in adapters:
        t0 = time.perf_counter()
        first = ours(mode, 0)
        first_s[mode] = time.perf_counter() - t0
        assert first.tokens.shape == (args.prompts * g, t) and int(first.steps) == t
    theirs(0)  # warm-up (allocator, kernel selection)
    runs = {mode: [] for mode in (*adapters, "hf")}
    for r in range(args.repeats):
        for mode in adapters:
            t0 = time.perf_counter()
            ours(mode, r + 1)
            runs[mode].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs(r + 1)
        runs["hf"].append(time.perf_counter() - t0)
    new_tokens = args.prompts * g * t
    med = {mode: statistics.median(v) for mode, v in runs.items()}
    result = {
        "prompts": args.prompts, "generations": g, "max_new_tokens": t,
        "prompt_len": int(ids.shape[1]), "new_tokens": new_tokens,
        **{f"jax_{m}_compile_s": round(first_s[m] - med[m], 3) for m in adapters},
        **{f"{m}_rollout_s": round(v, 4) for m, v in med.items()},
        **{f"{m}_tokens_per_s": round(new_tokens / v, 1) for m, v in med.items()},
        **{f"speedup_{m}": round(med["hf"] / med[m], 2) for m in adapters},
        "runs_s": {m: [round(x, 4) for x in v] for m, v in runs.items()},
        "jax": jax.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backend": jax.default_backend(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
