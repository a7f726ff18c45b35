"""Host side of one RL step: batch -> prompt arrays -> G samples -> text -> rewards -> advantages.

The data pipeline (`rewardmap_jax.data.pipeline`) yields bucketed numpy batches of this
process's rows with packed image rows; this module turns them into the model's inputs (M-RoPE
positions, one vision window buffer per image), places them on the mesh as global arrays
(`rl/placement.py`), runs the sampler, decodes this process's completions to text, scores them
with the configured reward function (`rl/scoring.py`) and computes group advantages.

    batch, patches = agree_batch(batch, model_cfg, place)    # same shapes on every process
    prompts = prepare_prompts(batch, model_cfg, patches)     # numpy, this process's prompts
    out = rollout(model, prompts, batch, sp, key, tokenizer, reward_fn, rl_cfg, place, n)

Multi-process: each process holds `place.rows(n)` of the `n` prompts (and their G completion
rows, on the same shard); scores, lengths and task ids of every row are gathered to every
process (small arrays), so group advantages and metrics are computed identically everywhere.
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
from rewardmap_jax.model import rope_index, sequence
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.vision_layout import (
    bucket_patches,
    num_windows,
    pack_vision_inputs,
    required_patches,
)
from rewardmap_jax.rl import grpo, sampler, scoring
from rewardmap_jax.rl.placement import PROMPT_BATCH_DIMS, Placement

PROMPT_KEYS = ("prompt_ids", "prompt_mask", "positions", "rope_deltas", "vision", "vis_offsets")


def _example_rows(batch: dict[str, Any], i: int) -> np.ndarray:
    off, n = int(batch["patch_offsets"][i]), int(batch["num_patches"][i])
    return batch["pixel_values"][off : off + n]


def image_windows(batch: dict[str, Any], cfg: ModelConfig) -> int:
    """Attention windows of the batch's largest image (its per-image buffer needs
    `bucket_patches` of it)."""
    grids = np.asarray(batch["image_grid_thw"], np.int64)
    return max(num_windows(g[None], cfg.vision) for g in grids)


def agree_batch(batch: dict[str, Any], cfg: ModelConfig, place: Placement | None
                ) -> tuple[dict[str, Any], int]:
    """A pipeline batch of this process's rows re-padded to the shapes every process uses, and
    the per-image vision buffer size (patch slots).

    Each process buckets its own rows; the global batch takes the largest prompt bucket, answer
    bucket and image of all processes (`Placement.agree_max`, a collective), which is exactly
    what one process reading every row would pick: the batch does not depend on the topology.
    """
    dims = {"prompt": batch["input_ids"].shape[1], "windows": image_windows(batch, cfg)}
    if "target_ids" in batch:
        dims["target"] = batch["target_ids"].shape[1]
    if place is not None:
        dims = place.agree_max(dims)
    out = dict(batch)
    pad = dims["prompt"] - batch["input_ids"].shape[1]
    if pad:
        out["input_ids"] = np.pad(batch["input_ids"], ((0, 0), (pad, 0)),
                                  constant_values=cfg.pad_token_id)
        out["attention_mask"] = np.pad(batch["attention_mask"], ((0, 0), (pad, 0)))
    if "target_ids" in batch and (pad := dims["target"] - batch["target_ids"].shape[1]):
        out["target_ids"] = np.pad(batch["target_ids"], ((0, 0), (0, pad)),
                                   constant_values=cfg.pad_token_id)
        out["target_mask"] = np.pad(batch["target_mask"], ((0, 0), (0, pad)))
    return out, bucket_patches(dims["windows"], cfg.vision)


def prepare_prompts(batch: dict[str, Any], cfg: ModelConfig, num_patches: int | None = None
                    ) -> dict[str, Any]:
    """Model inputs of a pipeline batch's prompts (numpy; see `rl.steps` SeqBatch keys).

    One image per prompt (the pipeline's contract). With `num_patches` (the trainer: from
    `agree_batch`), or when every image has the same patch grid (the map world), each image gets
    its own window buffer of that many slots and `vision` leaves are stacked (B, P_1, ...): the
    tower then runs per image (`sequence.embed`), data-parallel over the batch's shards, and its
    full-attention blocks cost B * P_1^2 instead of (B * P_1)^2 over one packed buffer.
    Otherwise (single-process callers only) one packed buffer.
    """
    ids = np.asarray(batch["input_ids"], np.int32)
    mask = np.asarray(batch["attention_mask"]).astype(bool)
    grids = np.asarray(batch["image_grid_thw"], np.int64)
    pos, deltas = rope_index.get_rope_index(ids, cfg, mask, grids)
    rows = [_example_rows(batch, i) for i in range(len(ids))]
    if num_patches is not None or (grids == grids[:1]).all():
        per = [pack_vision_inputs(r, g[None], cfg.vision, num_patches)
               for r, g in zip(rows, grids, strict=True)]
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
    """One step's samples. Per-row fields hold this process's rows: its prompts `prompt_rows`
    (global indices), rows prompt-major (b * G + g); `scores`, `advantages`, `all_lengths` and
    `task_ids` hold every row of the global batch (gathered), identical on every process."""

    prompt_rows: np.ndarray  # (n,) int64 global prompt index of each local prompt
    tokens: np.ndarray  # (n*G, T) int32
    mask: np.ndarray  # (n*G, T) bool, completion tokens incl. the stop token
    logps: np.ndarray  # (n*G, T) fp32 sampler log-probs under the raw policy
    lengths: np.ndarray  # (n*G,) int32
    texts: list[str]  # (n*G,)
    records: list[Record]  # (n*G,) each prompt's record repeated G times
    scores: dict[str, np.ndarray]  # reward components, (N,) each, every row
    advantages: np.ndarray  # (N,) fp32, every row
    all_lengths: np.ndarray  # (N,) int32, every row
    task_ids: np.ndarray  # (N,) int32 index into TASK_TYPES, every row
    adv_metrics: dict[str, float]
    times: dict[str, float]

    @property
    def rows(self) -> np.ndarray:
        """Global row indices (into `scores`, `advantages`) of this process's rows."""
        g = len(self.tokens) // max(len(self.prompt_rows), 1)
        return (self.prompt_rows[:, None] * g + np.arange(g)).reshape(-1)


def _forward(model, ids, positions, mask, vision, cache):
    """Sampler contract (`sampler.ModelAdapter.forward`) with `sequence.embed`'s vision path."""
    if vision is None:
        x = model.language_model.embed(ids)
    else:
        x = sequence.embed(model, ids, vision[0], vision[1])
    hidden, cache = model.language_model(x, positions, mask, cache)
    return model.logits(hidden[:, -1]), cache


ADAPTER = dataclasses.replace(sampler.QWEN2_5_VL, forward=_forward)


def sample(model: sampler.Policy, prompts: dict[str, Any], params: sampler.SamplingParams,
           key: jax.Array, place: Placement | None = None, n: int | None = None
           ) -> sampler.Rollout:
    """G samples per prompt (rows b * G + g); images encoded once per prompt.

    `prompts`: host arrays of this process's prompts; with `place`, they are placed as global
    arrays of `n` prompts (default: as many as given) and the sampler runs under the activation
    sharding rules; its outputs are global arrays (`place.local` reads this process's rows)."""
    if place is not None:
        n = len(prompts["prompt_ids"]) if n is None else n
        prompts = place.put({k: prompts[k] for k in PROMPT_KEYS}, n, PROMPT_BATCH_DIMS)
    pb = sampler.PromptBatch(input_ids=prompts["prompt_ids"],
                             attention_mask=prompts["prompt_mask"],
                             positions=prompts["positions"], rope_deltas=prompts["rope_deltas"],
                             vision=(prompts["vision"], prompts["vis_offsets"]))
    if place is None:
        return sampler.generate(model, ADAPTER, pb, params, key)
    with place.context():
        return sampler.generate(model, ADAPTER, pb, params, key)


def local_outputs(out: sampler.Rollout, place: Placement | None, n: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, lengths, policy log-probs) of this process's rows of a rollout, as numpy."""
    if place is None:
        return np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logp_policy)
    return tuple(place.local(x, n) for x in (out.tokens, out.lengths, out.logp_policy))


def rollout(model: sampler.Policy, prompts: dict[str, Any], batch: dict[str, Any],
            params: sampler.SamplingParams, key: jax.Array, tokenizer: Any, reward_fn: Any,
            rl: Any, place: Placement | None = None, n: int | None = None) -> RolloutResult:
    """Samples G completions per prompt, decodes and scores this process's, computes
    advantages over every row (`n` prompts in the global batch, default: all here)."""
    g = params.num_generations
    n = len(prompts["prompt_ids"]) if n is None else n
    prompt_rows = np.arange(n) if place is None else place.rows(n)
    t0 = time.perf_counter()
    out = sample(model, prompts, params, key, place, n)
    tokens, lengths, logps = local_outputs(out, place, n)
    t1 = time.perf_counter()
    texts = decode_completions(tokenizer, tokens, lengths, params.stop_ids)
    recs = [r for r in batch["records"] for _ in range(g)]
    scores = scoring.score(reward_fn, recs, texts, place, n, g)
    task_ids = np.repeat(np.asarray(batch["task_id"], np.int32), g)
    all_lengths, task_ids = ((lengths, task_ids) if place is None
                             else place.gather_rows((lengths, task_ids), n))
    if int(rl.get("overlong_buffer", 0)):  # DAPO soft overlong punishment, in the advantages
        scores["overlong_penalty"] = np.asarray(grpo.overlong_penalty(
            all_lengths, tokens.shape[1], int(rl.overlong_buffer), float(rl.overlong_penalty)))
    shaped = scores["overall"] + scores.get("overlong_penalty", 0.0)
    adv, adv_m = grpo.group_advantages(jnp.asarray(shaped), g,
                                       scaling=rl.adv_scaling, eps=float(rl.adv_eps),
                                       ddof=int(rl.adv_std_ddof))
    adv = np.asarray(adv, np.float32)
    t2 = time.perf_counter()
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    return RolloutResult(prompt_rows=prompt_rows, tokens=tokens, mask=mask, logps=logps,
                         lengths=lengths, texts=texts, records=recs, scores=scores,
                         advantages=adv, all_lengths=all_lengths, task_ids=task_ids,
                         adv_metrics={k: float(v) for k, v in adv_m.items()},
                         times={"sample": t1 - t0, "reward": t2 - t1})


def reward_metrics(scores: dict[str, np.ndarray], task_ids: np.ndarray) -> dict[str, float]:
    """`reward/<component>` means, `reward/mean`, `accuracy/<task>` and `accuracy/mean` over
    rows with task ids `task_ids` (indices into TASK_TYPES)."""
    m = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items()}
    m["reward/mean"] = m["reward/overall"]
    if "accuracy" in scores:
        acc = scores["accuracy"]
        for i, t in enumerate(TASK_TYPES):
            sel = task_ids == i
            if sel.any():
                m[f"accuracy/{t}"] = float(acc[sel].mean())
        m["accuracy/mean"] = float(acc.mean())
    return m


def select_rows(results: Sequence[RolloutResult], rows: Sequence[tuple[int, int]]
                ) -> RolloutResult:
    """Row `r` of `results[i]` for each `(i, r)` in `rows` (dynamic sampling's batch, one
    process: local rows are the global rows); the advantage metrics are the first result's, the
    times the sums."""
    first = results[0]
    cat = lambda f: np.stack([getattr(results[i], f)[r] for i, r in rows])  # noqa: E731
    g = len(first.tokens) // len(first.prompt_rows)
    return RolloutResult(
        prompt_rows=np.arange(len(rows) // g), tokens=cat("tokens"), mask=cat("mask"),
        logps=cat("logps"), lengths=cat("lengths"),
        texts=[results[i].texts[r] for i, r in rows],
        records=[results[i].records[r] for i, r in rows],
        scores={k: np.stack([results[i].scores[k][r] for i, r in rows]) for k in first.scores},
        advantages=cat("advantages"), all_lengths=cat("all_lengths"), task_ids=cat("task_ids"),
        adv_metrics=first.adv_metrics,
        times={k: sum(x.times[k] for x in results) for k in first.times})


def dynamic_sampling(first: tuple[dict[str, Any], dict[str, Any], RolloutResult],
                     draw: Any, g: int, max_rounds: int, mcfg: ModelConfig
                     ) -> tuple[dict[str, Any], dict[str, Any], RolloutResult, dict[str, Any]]:
    """DAPO: replace groups whose G rewards are all equal by groups from further rounds.

    `first` = (pipeline batch, prompts, rollout) of the step's batch; `draw(r)` samples round
    r >= 1 the same way (StopIteration when the curriculum is used up: train on what we have).
    Returns the (batch, prompts, rollout) of B groups (kept groups first, then filtered ones
    to fill up) and metrics. One process only (the refill moves groups between shards; the
    trainer refuses it in multi-process runs)."""
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
    patches = bucket_patches(image_windows(batch, mcfg), mcfg.vision)
    return batch, prepare_prompts(batch, mcfg, patches), res, extra


def seq_batch(prompts: dict[str, Any], completion: np.ndarray, mask: np.ndarray,
              place: Placement | None = None, n: int | None = None,
              **extra: np.ndarray) -> dict[str, Any]:
    """Device arrays of one `[prompt | completion]` batch for the jitted steps: the prompt
    keys, `completion` [N, T] int32, `completion_mask` [N, T] bool and `extra` (e.g.
    `advantages` [N], `old_logps` [N, T]). Host arrays of this process's rows; with `place`
    they become global arrays of `n` prompts (default: as many as given)."""
    host = {**{k: prompts[k] for k in PROMPT_KEYS}, "completion": completion,
            "completion_mask": mask, **extra}
    if place is None:
        return jax.tree.map(jnp.asarray, host)
    n = len(prompts["prompt_ids"]) if n is None else n
    return place.put(host, n, PROMPT_BATCH_DIMS)


def take_prompts(prompts: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    """Prompts `idx` (local indices) of a `prepare_prompts` dict with per-image buffers."""
    if prompts["vision"].pixels.ndim != 3:
        raise ValueError("take_prompts needs per-image vision buffers (prepare_prompts with "
                         "num_patches)")
    out = jax.tree.map(lambda x: x[idx], {k: v for k, v in prompts.items() if k != "positions"})
    out["positions"] = prompts["positions"][:, idx]
    return out


def minibatch_prompts(n: int, minibatches: int, place: Placement | None,
                      prompt_rows: np.ndarray) -> list[np.ndarray]:
    """Local indices of this process's prompts in each of the `minibatches` update batches.

    Mini-batch k holds global prompts k, k + M, k + 2M, ... (M = minibatches): membership does
    not depend on the topology, and with shards of whole multiples of M prompts every shard
    holds its share of every mini-batch (no data moves between hosts)."""
    per = n // minibatches
    out = []
    for k in range(minibatches):
        want = np.arange(per) * minibatches + k
        if place is not None:
            want = want[place.rows(per)]
        pos = {int(j): i for i, j in enumerate(prompt_rows)}
        missing = [int(j) for j in want if int(j) not in pos]
        if missing:
            raise ValueError(
                f"mini-batch {k} needs prompts {missing[:4]} that another process holds: "
                f"rl.mini_batch_size ({per}) must be divisible by the data-parallel size "
                f"({place.dp if place else 1}) and the shards hold whole multiples of "
                f"{minibatches} prompts")
        out.append(np.array([pos[int(j)] for j in want], np.int64))
    return out


def update_batches(prompts: dict[str, Any], res: RolloutResult, g: int, minibatches: int,
                   n: int, place: Placement | None = None) -> list[dict[str, Any]]:
    """The GRPO step's `minibatches` update batches (global arrays with `place`) of whole
    prompt groups (prompt j owns completion rows j*g .. j*g+g-1), each with its advantages and
    behaviour log-probs; `prompts` are this process's (`res.prompt_rows`) of the `n`."""
    adv = res.advantages[res.rows]
    out = []
    for idx in minibatch_prompts(n, minibatches, place, res.prompt_rows):
        rows = (idx[:, None] * g + np.arange(g)).reshape(-1)
        p = prompts if minibatches == 1 else take_prompts(prompts, idx)
        out.append(seq_batch(p, res.tokens[rows], res.mask[rows], place, n // minibatches,
                             advantages=adv[rows], old_logps=res.logps[rows]))
    return out
