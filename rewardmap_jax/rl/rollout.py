"""Host side of one RL step: batch -> prompt arrays -> G samples -> text -> rewards -> advantages.

The data pipeline (`rewardmap_jax.data.pipeline`) yields bucketed numpy batches with packed
image rows; this module turns them into the model's inputs (M-RoPE positions, the packed vision
window buffer), runs the sampler, decodes completions to text, scores them with the configured
reward function (host parsing + jitted device reward) and computes group advantages.

    prompts = prepare_prompts(batch, model_cfg)            # numpy SeqBatch prompt part
    out = rollout(model, prompts, batch["records"], sp, key, tokenizer, reward_fn, rl_cfg)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.model import rope_index
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.vision_layout import pack_vision_inputs, required_patches
from rewardmap_jax.rl import grpo, sampler, steps

PROMPT_KEYS = ("prompt_ids", "prompt_mask", "positions", "rope_deltas", "vision", "vis_offsets")


def _example_rows(batch: dict[str, Any], i: int) -> np.ndarray:
    off, n = int(batch["patch_offsets"][i]), int(batch["num_patches"][i])
    return batch["pixel_values"][off : off + n]


def prepare_prompts(batch: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Model inputs of a pipeline batch's prompts (numpy; see `rl.steps` SeqBatch keys).

    One image per prompt (the pipeline's contract). When every image has the same patch grid
    (the map world), each image gets its own window buffer and `vision` leaves are stacked
    (B, P_1, ...): the tower then runs per image (`steps.embed`), so its full-attention blocks
    cost B * P_1^2 instead of (B * P_1)^2 over one packed buffer. Otherwise one packed buffer.
    """
    ids = np.asarray(batch["input_ids"], np.int32)
    mask = np.asarray(batch["attention_mask"]).astype(bool)
    grids = np.asarray(batch["image_grid_thw"], np.int64)
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, grids)
    rows = [_example_rows(batch, i) for i in range(len(ids))]
    if (grids == grids[:1]).all():
        per = [pack_vision_inputs(r, g[None], cfg.vision) for r, g in zip(rows, grids,
                                                                           strict=True)]
        vision = jax.tree.map(lambda *x: np.stack(x), *per)
    else:
        span = cfg.vision_frame_span
        if span and (most := max(required_patches(np.array([[1, h, w]]), cfg.vision)
                                 for _, h, w in grids)) > span:  # one frame's slots
            raise ValueError(f"an image of this batch spans {most} vision buffer slots, more "
                             f"than model.vision_frame_span={span}: raise it (a multiple of "
                             f"{cfg.vision.window_patches}) or set it to 0")
        vision = pack_vision_inputs(np.concatenate(rows), grids, cfg.vision)
    tokens = np.prod(grids, axis=1) // cfg.vision.merge_unit
    offsets = np.concatenate([[0], np.cumsum(tokens)[:-1]]).astype(np.int32)
    return {"prompt_ids": ids, "prompt_mask": mask, "positions": pos, "rope_deltas": deltas,
            "vision": vision, "vis_offsets": offsets}


def select_examples(batches: Sequence[dict[str, Any]], picks: Sequence[tuple[int, int]],
                    pad_id: int = 0) -> dict[str, Any]:
    """A pipeline-format batch made of example `j` of `batches[i]` for each `(i, j)` in picks.

    Prompts are re-left-padded to the longest prompt bucket among the sources; image rows are
    repacked. Used for prompt mini-batches and dynamic sampling.
    """
    length = max(int(batches[i]["input_ids"].shape[1]) for i, _ in picks)
    ids, mask, rows, grids, counts = [], [], [], [], []
    out: dict[str, Any] = {"records": []}
    for i, j in picks:
        b = batches[i]
        pad = length - b["input_ids"].shape[1]
        ids.append(np.pad(b["input_ids"][j], (pad, 0), constant_values=pad_id))
        mask.append(np.pad(b["attention_mask"][j], (pad, 0)))
        rows.append(_example_rows(b, j))
        grids.append(b["image_grid_thw"][j])
        counts.append(int(b["num_patches"][j]))
        out["records"].append(b["records"][j])
    for key in ("task_id", "stage", "element"):
        out[key] = np.array([batches[i][key][j] for i, j in picks])
    if "target_ids" in batches[0]:
        t = max(int(batches[i]["target_ids"].shape[1]) for i, _ in picks)
        for key, fill in (("target_ids", pad_id), ("target_mask", 0)):
            out[key] = np.stack([np.pad(batches[i][key][j], (0, t - batches[i][key].shape[1]),
                                        constant_values=fill) for i, j in picks])
    counts_a = np.array(counts, np.int32)
    out.update(
        input_ids=np.stack(ids).astype(np.int32),
        attention_mask=np.stack(mask).astype(np.int32),
        pixel_values=np.concatenate(rows),
        image_grid_thw=np.stack(grids).astype(np.int32),
        num_patches=counts_a,
        patch_offsets=np.concatenate([[0], np.cumsum(counts_a)[:-1]]).astype(np.int32),
    )
    return out


def decode_completions(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray,
                       stop_ids: Sequence[int]) -> list[str]:
    """Completion texts (stop token and padding removed, special tokens kept out)."""
    texts = []
    for row, n in zip(tokens, lengths, strict=True):
        ids = [int(t) for t in row[: int(n)]]
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


@dataclasses.dataclass
class RolloutResult:
    """One step's samples, rows prompt-major (b * G + g)."""

    tokens: np.ndarray  # (N, T) int32
    mask: np.ndarray  # (N, T) bool, completion tokens incl. the stop token
    logps: np.ndarray  # (N, T) fp32 sampler log-probs under the raw policy
    lengths: np.ndarray  # (N,) int32
    texts: list[str]
    records: list[Record]  # (N,) each prompt's record repeated G times
    scores: dict[str, np.ndarray]  # reward components, (N,) each
    advantages: np.ndarray  # (N,) fp32
    adv_metrics: dict[str, float]
    times: dict[str, float]


def _forward(model, ids, positions, mask, vision, cache):
    """Sampler contract (`sampler.ModelAdapter.forward`) with `steps.embed`'s vision path."""
    if vision is None:
        x = model.language_model.embed(ids)
    else:
        x = steps.embed(model, ids, vision[0], vision[1], 1)
    hidden, cache = model.language_model(x, positions, mask, cache)
    return model.logits(hidden[:, -1]), cache


ADAPTER = dataclasses.replace(sampler.QWEN2_5_VL, forward=_forward)


def sample(model: Any, prompts: dict[str, Any], params: sampler.SamplingParams,
           key: jax.Array) -> sampler.Rollout:
    """G samples per prompt (rows b * G + g); images encoded once per prompt."""
    pb = sampler.PromptBatch(input_ids=prompts["prompt_ids"],
                             attention_mask=prompts["prompt_mask"],
                             positions=prompts["positions"], rope_deltas=prompts["rope_deltas"],
                             vision=(prompts["vision"], prompts["vis_offsets"]))
    return sampler.generate(model, ADAPTER, pb, params, key)


def rollout(model: Any, prompts: dict[str, Any], records: Sequence[Record],
            params: sampler.SamplingParams, key: jax.Array, tokenizer: Any, reward_fn: Any,
            rl: Any) -> RolloutResult:
    """Samples G completions per prompt, decodes and scores them, computes advantages."""
    g = params.num_generations
    t0 = time.perf_counter()
    out = sample(model, prompts, params, key)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    logps = np.asarray(out.logp_policy)
    t1 = time.perf_counter()
    texts = decode_completions(tokenizer, tokens, lengths, params.stop_ids)
    recs = [r for r in records for _ in range(g)]
    scores = reward_fn(recs, texts)
    adv, adv_m = grpo.group_advantages(jnp.asarray(scores["overall"]), g,
                                       scaling=rl.adv_scaling, eps=float(rl.adv_eps),
                                       ddof=int(rl.adv_std_ddof))
    adv = np.asarray(adv, np.float32)
    t2 = time.perf_counter()
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    return RolloutResult(tokens=tokens, mask=mask, logps=logps, lengths=lengths, texts=texts,
                         records=recs, scores=scores, advantages=adv,
                         adv_metrics={k: float(v) for k, v in adv_m.items()},
                         times={"sample": t1 - t0, "reward": t2 - t1})


def reward_metrics(scores: dict[str, np.ndarray], records: Sequence[Record]) -> dict[str, float]:
    """`reward/<component>` means, `reward/mean`, `accuracy/<task>` and `accuracy/mean`."""
    m = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items()}
    m["reward/mean"] = m["reward/overall"]
    if "accuracy" in scores:
        acc = scores["accuracy"]
        types = np.array([r.type for r in records])
        for t in TASK_TYPES:
            sel = types == t
            if sel.any():
                m[f"accuracy/{t}"] = float(acc[sel].mean())
        m["accuracy/mean"] = float(acc.mean())
    return m


def select_rows(results: Sequence[RolloutResult], rows: Sequence[tuple[int, int]]
                ) -> RolloutResult:
    """Row `r` of `results[i]` for each `(i, r)` in `rows` (dynamic sampling's batch); the
    advantage metrics are the first result's, the times the sums."""
    first = results[0]
    cat = lambda f: np.stack([getattr(results[i], f)[r] for i, r in rows])  # noqa: E731
    return RolloutResult(
        tokens=cat("tokens"), mask=cat("mask"), logps=cat("logps"), lengths=cat("lengths"),
        texts=[results[i].texts[r] for i, r in rows],
        records=[results[i].records[r] for i, r in rows],
        scores={k: np.stack([results[i].scores[k][r] for i, r in rows]) for k in first.scores},
        advantages=cat("advantages"), adv_metrics=first.adv_metrics,
        times={k: sum(x.times[k] for x in results) for k in first.times})


def dynamic_sampling(first: tuple[dict[str, Any], dict[str, Any], RolloutResult],
                     draw: Any, g: int, max_rounds: int, mcfg: ModelConfig
                     ) -> tuple[dict[str, Any], dict[str, Any], RolloutResult, dict[str, Any]]:
    """DAPO: replace groups whose G rewards are all equal by groups from further rounds.

    `first` = (pipeline batch, prompts, rollout) of the step's batch; `draw(r)` samples round
    r >= 1 the same way (StopIteration when the curriculum is used up: train on what we have).
    Returns the (batch, prompts, rollout) of B groups (kept groups first, then filtered ones
    to fill up) and metrics."""
    def mixed(x):  # (B,) bool: the group's G rewards are not all equal
        return np.asarray(grpo.dynamic_sampling_keep(x[2].scores["overall"], g)[0])

    rounds, keep = [first], [mixed(first)]
    b = first[0]["input_ids"].shape[0]
    for r in range(1, max(1, max_rounds)):
        if sum(int(k.sum()) for k in keep) >= b:
            break
        try:
            rounds.append(draw(r))
        except StopIteration:
            break
        keep.append(mixed(rounds[-1]))
    picks = [(i, j) for i, k in enumerate(keep) for j in np.flatnonzero(k)]
    filtered = [(i, j) for i, k in enumerate(keep) for j in np.flatnonzero(~k)]
    picks = (picks + filtered)[:b]
    batch = select_examples([x[0] for x in rounds], picks, mcfg.pad_token_id)
    rows = [(i, j * g + k) for i, j in picks for k in range(g)]
    res = select_rows([x[2] for x in rounds], rows)
    kept = int(sum(int(k.sum()) for k in keep))
    extra = {"dynamic_sampling/rounds": len(rounds), "dynamic_sampling/kept_groups": kept,
             "dynamic_sampling/zero_var_frac": 1 - min(kept, b) / b}
    return batch, prepare_prompts(batch, mcfg), res, extra


def seq_batch(prompts: dict[str, Any], completion: np.ndarray, mask: np.ndarray,
              **extra: np.ndarray) -> dict[str, Any]:
    """Device arrays of one `[prompt | completion]` batch for the jitted steps: the prompt
    keys, `completion` [N, T] int32, `completion_mask` [N, T] bool and `extra` (e.g.
    `advantages` [N], `old_logps` [N, T])."""
    return jax.tree.map(jnp.asarray, {**{k: prompts[k] for k in PROMPT_KEYS},
                                      "completion": completion, "completion_mask": mask, **extra})


def update_batches(batch: dict[str, Any], prompts: dict[str, Any], res: RolloutResult, g: int,
                   minibatches: int, mcfg: ModelConfig) -> list[dict[str, Any]]:
    """The GRPO step's `minibatches` update batches of whole prompt groups (prompt j owns
    completion rows j*g .. j*g+g-1), each with its advantages and behaviour log-probs."""
    per = len(batch["records"]) // minibatches
    out = []
    for k in range(minibatches):
        idx = list(range(k * per, (k + 1) * per))
        rows = np.concatenate([np.arange(j * g, (j + 1) * g) for j in idx])
        p = prompts if minibatches == 1 else prepare_prompts(
            select_examples([batch], [(0, j) for j in idx], mcfg.pad_token_id), mcfg)
        out.append(seq_batch(p, res.tokens[rows], res.mask[rows],
                             advantages=res.advantages[rows], old_logps=res.logps[rows]))
    return out
