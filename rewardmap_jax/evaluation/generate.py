"""Greedy completions for evaluation questions: batched by image size, shown with a progress
bar, cached in a JSONL file so that an interrupted evaluation resumes where it stopped.

    cache = CompletionCache(out / "final.completions.jsonl", fingerprint)
    result = generate(model, records, config, cache=cache, should_stop=lambda: preempted)
    result.completions[uid], result.bad_rows, result.stopped

Batches: the questions still to answer are sorted by their image's patch count (read from the
image header, nothing decoded) and cut into `eval.batch_size` batches, so one batch holds maps
of one size and pads little; records sharing a map reuse its processed patches. Every batch
has exactly `eval.batch_size` rows (the last is padded with copies, dropped afterwards) and is
bucketed like training batches (`data.prompt_buckets`, `data.patch_buckets`), so compilations
stay few. The next batch is prepared on a thread while the model decodes the current one.

Decoding is greedy (`num_generations` 1, temperature 0) to `eval.max_new_tokens`. A question
whose figure or prompt cannot be processed is a bad row (reported, not fatal). `should_stop`
is polled between batches; when it answers True the completions so far stay in the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rewardmap_jax.data import pipeline
from rewardmap_jax.data.fast_tokenizer import FastTokenizer
from rewardmap_jax.data.image_processing import grid_for_size
from rewardmap_jax.data.tokenizer import special_token_ids, tokenizer_source
from rewardmap_jax.mapworld.records import TASK_TYPES, Record
from rewardmap_jax.model.vision_layout import bucket_patches
from rewardmap_jax.rl import rollout as ro
from rewardmap_jax.rl import sampler
from rewardmap_jax.rl.placement import Placement

log = logging.getLogger(__name__)
Image.MAX_IMAGE_PIXELS = None  # real maps are large; sizes are bounded by data.max_image_pixels


class CompletionCache:
    """Completions by uid in a JSONL file: a header line `{"fingerprint": ...}` (what produced
    them: model, checkpoint step, settings), then one `{"uid", "completion"}` line per answer,
    flushed and fsynced per batch. A cache written for another fingerprint is refused; a torn
    last line (a kill mid-write) is ignored."""

    def __init__(self, path: str | Path | None, fingerprint: Mapping[str, Any],
                 write: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.write = write and self.path is not None
        self.done: dict[str, str] = {}
        if self.path is None or not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n") and self.write:  # drop a torn last line for good
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text, encoding="utf-8")
        lines = text.splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header is not None and header.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"completion cache {self.path} was written for {header.get('fingerprint')}, not "
                f"{self.fingerprint}: delete it (or write to another --out/--tag) to start over")
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.done[str(row["uid"])] = str(row["completion"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s: ignoring a torn line (an interrupted write)", self.path)

    def add(self, items: Sequence[tuple[str, str]]) -> None:
        for uid, text in items:
            self.done[uid] = text
        if not self.write or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            for uid, text in items:
                f.write(json.dumps({"uid": uid, "completion": text}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclasses.dataclass
class Generation:
    completions: dict[str, str]  # uid -> completion (cached and new)
    bad_rows: list[dict[str, str]]  # {"where": uid, "reason"}
    stopped: bool  # should_stop() interrupted it


def _figure_source(figure: Any) -> Any:
    return (figure.get("bytes") or figure.get("path")) if isinstance(figure, dict) else figure


def image_size(figure: Any) -> tuple[int, int]:
    """(width, height) from the image header (nothing decoded)."""
    fig = _figure_source(figure)
    if isinstance(fig, Image.Image):
        return fig.size
    with Image.open(io.BytesIO(fig) if isinstance(fig, bytes) else fig) as img:
        return img.size


def figure_key(figure: Any) -> str | int:
    """Identity of a map image: records with equal keys share processed patches. A content
    hash or path (a str, stable across runs), or the id of an in-memory image."""
    fig = _figure_source(figure)
    if isinstance(fig, bytes):
        return hashlib.blake2b(fig, digest_size=16).hexdigest()
    return str(fig) if isinstance(fig, (str, os.PathLike)) else id(fig)


def size_order(records: Sequence[Record], spec: pipeline.ProcessSpec
               ) -> tuple[list[Record], list[dict[str, str]]]:
    """Records sorted by image patch count (then map, then given order: deterministic), and
    the bad rows of those whose image header is unreadable."""
    keyed, bad = [], []
    for i, r in enumerate(records):
        try:
            w, h = image_size(r.figure)
            t, gh, gw = grid_for_size(h, w, spec.image)
            key = figure_key(r.figure)  # ids are not stable across runs: not sorted on
            keyed.append(((t * gh * gw, key if isinstance(key, str) else "", i), r))
        except Exception as e:  # noqa: BLE001 - any unreadable figure is one bad row
            bad.append({"where": r.uid, "reason": f"figure: {type(e).__name__}: {e}"})
    keyed.sort(key=lambda kr: kr[0])
    return [r for _, r in keyed], bad


class Batcher:
    """Turns a chunk of at most `batch_size` records into `(batch, prompts, kept, bad)`: the
    pipeline-format batch (`data.pipeline.collate`, padded to `batch_size` rows with copies
    whose `valid` is 0), its model inputs (`rl.rollout.prepare_prompts`), the records in it and
    the bad rows (`{"where", "reason"}`) left out. All None but `bad` when nothing is left."""

    def __init__(self, config: Any, tokenizer_name: str, model_cfg: Any, batch_size: int):
        self.spec = pipeline.process_spec(config.data, tokenizer_name)
        self.buckets = pipeline.buckets_from_config(config.data)
        self.tok = FastTokenizer(tokenizer_name)
        self.special = special_token_ids(self.tok)
        self.pixel_dtype = np.dtype(self.spec.pixel_dtype)
        self.model_cfg, self.batch_size = model_cfg, batch_size
        self._images: OrderedDict[Any, Any] = OrderedDict()  # last maps' patches (LRU of 2)

    def _image(self, record: Record):
        key = figure_key(record.figure)
        if key not in self._images:
            self._images[key] = pipeline.image_rows(record, self.spec)
            while len(self._images) > 2:
                self._images.popitem(last=False)
        return self._images[key]

    def __call__(self, chunk: Sequence[Record]):
        examples, kept, bad = [], [], []
        for r in chunk:
            try:
                ex = pipeline.encode_example(r, self.spec, self.tok, self.special, self._image(r))
            except Exception as e:  # noqa: BLE001 - one question's failure is one bad row
                bad.append({"where": r.uid, "reason": f"{type(e).__name__}: {e}"})
                continue
            ex.update(task_id=TASK_TYPES.index(r.type), stage=0, element=len(kept), valid=1,
                      record=None)
            examples.append(ex)
            kept.append(r)
        if not examples:
            return None, None, kept, bad
        while len(examples) < self.batch_size:  # fixed batch shape: pad with copies
            examples.append(dict(examples[-1], valid=0))
        try:
            batch = pipeline.collate(examples, self.buckets, self.special.pad, self.pixel_dtype)
        except ValueError as e:
            raise ValueError(f"evaluation batch (eval.batch_size={self.batch_size}): {e}; or "
                             "lower eval.batch_size") from e
        # Per-image vision buffers sized by the batch's largest map (batches hold one size):
        # the layout that data-parallel sampling needs (`rl.placement`).
        patches = bucket_patches(ro.image_windows(batch, self.model_cfg), self.model_cfg.vision)
        return batch, ro.prepare_prompts(batch, self.model_cfg, patches), kept, bad


def generate(model: Any, records: Sequence[Record], config: Any, *,
             cache: CompletionCache | None = None,
             should_stop: Callable[[], bool] | None = None,
             progress: bool = True, desc: str = "evaluate",
             place: Placement | None = None) -> Generation:
    """Greedy completions of every record not already in `cache` (see the module docstring).

    With `place` (the trainer's, any number of processes) the sampler gets global arrays:
    every process prepares the whole batch, supplies its own rows (`place.rows`), and every
    completion is gathered to every process (each then holds the same `Generation`)."""
    cache = cache or CompletionCache(None, {})
    ev = config.eval
    batch_size = int(ev.batch_size)
    name = tokenizer_source(config)
    batcher = Batcher(config, name, model.cfg, batch_size)
    todo = [r for r in records if r.uid not in cache.done]
    ordered, bad = size_order(todo, batcher.spec)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    sp = sampler.params_from_config(config.rl, model.cfg, num_generations=1, temperature=0.0,
                                    max_new_tokens=int(ev.max_new_tokens))
    key = jax.random.key(0)  # greedy: the key is never used for a draw
    policy = sampler.split_policy(model)  # once, not once per batch
    stopped = False
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="q",
               disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(batcher, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            _, prompts, kept, chunk_bad = pending.result()
            pending = pool.submit(batcher, chunks[i + 1]) if i + 1 < len(chunks) else None
            bad += chunk_bad
            if prompts is not None:
                n = len(prompts["prompt_ids"])
                mine = prompts if place is None else ro.take_prompts(prompts, place.rows(n))
                tokens, lengths, _ = ro.local_outputs(ro.sample(policy, mine, sp, key, place, n),
                                                      place, n)
                if place is not None:
                    tokens, lengths = place.gather_rows((tokens, lengths), n)
                texts = ro.decode_completions(batcher.tok, tokens, lengths, sp.stop_ids)
                cache.add([(r.uid, t) for r, t in zip(kept, texts, strict=False)])
            bar.update(len(chunks[i]))
            if should_stop is not None and i + 1 < len(chunks) and should_stop():
                stopped = True
                break
        if pending is not None:
            pending.cancel()
    bar.close()
    return Generation(dict(cache.done), bad, stopped)
