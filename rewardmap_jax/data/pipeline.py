"""The Grain input pipeline: curriculum plan -> records -> processed examples -> bucketed batches.

    pipe = DataPipeline.from_config(config)              # full ConfigDict (c.data, c.curriculum)
    it = pipe.iterator()                                  # grain DatasetIterator
    batch = next(it)                                      # dict of numpy arrays + "records"
    state = it.get_state(); ...; it.set_state(state)      # JSON-able, exact resume

Per host, element j of the local stream is element g of the global plan: each host reads its
`rows` of every global batch of `batch_size` (the trainer passes the rows its devices hold,
`rl.placement.Placement.rows`; by default process p of P reads the p-th contiguous slice). The
global batch of a step is therefore the same for any number of processes.
Processing (record generation or file read, image resize + patchify, chat prompt, tokenization)
runs in Grain worker processes when `data.worker_count > 0`, in the main process when 0.

Batch layout (B = local batch size; L, P_buf, T = chosen buckets):

| key | shape | dtype | meaning |
| --- | --- | --- | --- |
| input_ids | (B, L) | int32 | prompt ids, left-padded with pad (<|endoftext|>) |
| attention_mask | (B, L) | int32 | 1 on prompt tokens |
| pixel_values | (P_buf, 1176) | data.pixel_dtype | patch rows packed in example order, 0 pad |
| patch_segment_ids | (P_buf,) | int32 | example index + 1 for each patch row, 0 for padding |
| image_grid_thw | (B, 3) | int32 | (t, h, w) in patches per example (one image each) |
| patch_offsets | (B,) | int32 | first row of each example's patches in pixel_values |
| num_patches | (B,) | int32 | t*h*w rows per example |
| task_id | (B,) | int32 | index into TASK_TYPES |
| stage | (B,) | int32 | curriculum stage of each example |
| element | (B,) | int64 | global plan element (pass * elements_per_pass + position) |
| valid | (B,) | int32 | 0 on the padding copies of a kept last partial batch, else 1 |
| target_ids, target_mask | (B, T) | int32 | with_targets only: answer + <|im_end|>, right-padded |
| records | list of B Records | - | host side (rewards); `figure` dropped unless it is a path |

Distinct shapes <= len(prompt_buckets) * len(patch_buckets) (* len(answer_buckets)).
Bad rows (unreadable figure, malformed record, prompt too long): `data.on_bad_row="raise"` stops
with a message naming the row; `"skip"` drops it, counts it (`it.get_state()["bad_rows"]`) and
fills the batch with the next element.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from rewardmap_jax.data import prompts
from rewardmap_jax.data.curriculum import PlanCycle, Schedule, schedule_from_config
from rewardmap_jax.data.fast_tokenizer import FastTokenizer
from rewardmap_jax.data.image_processing import (
    ImageProcessorConfig,
    open_figure,
    preprocess,
)
from rewardmap_jax.data.sources import (
    RecordSource,
    mapworld_sources,
    real_sources,
    source_sizes,
)
from rewardmap_jax.data.tokenizer import TINY, special_token_ids, tokenizer_source
from rewardmap_jax.mapworld.records import TASK_TYPES, Record

log = logging.getLogger(__name__)
BAD_ROW_MODES = ("raise", "skip")
_LOCAL_ENDLESS = 2**62  # local stream length of a repeating curriculum


class BadRowError(RuntimeError):
    """A data row that cannot be processed (raised when data.on_bad_row == "raise")."""


@dataclasses.dataclass(frozen=True)
class BadRow:
    """Marker for a skipped row (data.on_bad_row == "skip")."""

    element: int
    message: str


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """Everything a worker needs to turn a record into an example (picklable)."""

    tokenizer: str
    image: ImageProcessorConfig
    system_prompt: str
    truncation: str
    max_prompt_len: int
    max_answer_len: int
    with_targets: bool
    on_bad_row: str
    pixel_dtype: str


class ProcessElement:
    """Local stream index -> processed example dict (or `BadRow`). Runs in Grain workers."""

    def __init__(
        self,
        cycle: PlanCycle,
        sources: Mapping[str, RecordSource],
        spec: ProcessSpec,
        rows: tuple[int, ...],
        start: int = 0,
    ) -> None:
        self.cycle, self.sources, self.spec = cycle, dict(sources), spec
        self.rows, self.start = rows, start
        self._tok = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tok"] = None  # each worker loads its own tokenizer
        return state

    def _tokenizer(self):
        if self._tok is None:
            tok = FastTokenizer(self.spec.tokenizer)
            self._tok = (tok, special_token_ids(tok))
        return self._tok

    def __call__(self, local: int) -> dict[str, Any] | BadRow:
        # Global plan element (passes of a repeating curriculum follow each other): this host's
        # rows of global batch `start + step`.
        step, offset = divmod(int(local), len(self.rows))
        return self.element(
            (self.start + step) * self.cycle.batch_size + self.rows[offset])

    def element(self, element: int) -> dict[str, Any] | BadRow:
        """The processed example of global plan element `element`."""
        task, index, stage, epoch = self.cycle.element(element)
        record: Record | None = None
        try:
            record = self.sources[task][index]
            if not isinstance(record, Record):
                raise TypeError(f"source returned {type(record).__name__}, not a Record")
            return self._process(record, task, stage, element)
        except Exception as e:  # noqa: BLE001 - any failure of one row is reported per row
            uid = record.uid if isinstance(record, Record) else "?"
            message = (
                f"bad data row: element {element} (pass {epoch}, stage {stage}), {task}[{index}] "
                f"of {self.sources[task]!r:.160}, uid {uid}: {type(e).__name__}: {e}"
            )
            if self.spec.on_bad_row == "raise":
                raise BadRowError(f"{message} (set data.on_bad_row='skip' to skip such rows)") \
                    from e
            return BadRow(element, message)

    def _process(self, record: Record, task: str, stage: int, element: int) -> dict[str, Any]:
        tok, special = self._tokenizer()
        out = encode_example(record, self.spec, tok, special)
        out.update({
            "task_id": TASK_TYPES.index(task),
            "stage": stage,
            "element": element,
            "valid": int(self.cycle.is_valid(element)),
            "record": _host_record(record),
        })
        return out


def image_rows(record: Record, spec: ProcessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values, image_grid_thw) of a record's figure under `spec`'s image settings."""
    image = open_figure(record.figure, spec.image.max_image_pixels)
    return preprocess(image, spec.image, dtype=np.dtype(spec.pixel_dtype))


def encode_example(record: Record, spec: ProcessSpec, tok: Any, special: Any,
                   image: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """A record's model inputs: `input_ids`, `pixel_values`, `image_grid_thw` (and
    `target_ids` with targets). `image` reuses `image_rows(record, spec)` computed earlier
    (records sharing a map)."""
    pixels, grid = image if image is not None else image_rows(record, spec)
    ids = prompts.encode_prompt(tok, record, grid, special, spec.image.merge_size,
                                spec.system_prompt)
    ids = prompts.fit_prompt(ids, spec.max_prompt_len, special, spec.truncation, record.uid)
    out = {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid}
    if spec.with_targets:
        target = prompts.encode_target(tok, record, special)
        if len(target) > spec.max_answer_len:
            raise ValueError(f"target has {len(target)} tokens, above the largest answer "
                             f"bucket {spec.max_answer_len} (data.answer_buckets)")
        out["target_ids"] = target
    return out


def _host_record(record: Record) -> Record:
    """The record without in-memory image data (kept when the figure is a path)."""
    keep = isinstance(record.figure, (str, os.PathLike)) and len(str(record.figure)) < 4096
    return record if keep else dataclasses.replace(record, figure=None)


@dataclasses.dataclass(frozen=True)
class Buckets:
    prompt: tuple[int, ...]
    patch: tuple[int, ...]
    answer: tuple[int, ...]


def collate(
    examples: Sequence[dict[str, Any]], buckets: Buckets, pad_id: int, pixel_dtype: Any
) -> dict[str, Any]:
    """Stacks processed examples into one bucketed batch (see the module table)."""
    b = len(examples)
    length = prompts.pick_bucket(max(len(e["input_ids"]) for e in examples), buckets.prompt)
    input_ids, attention_mask = prompts.left_pad([e["input_ids"] for e in examples], length,
                                                 pad_id)
    counts = np.array([len(e["pixel_values"]) for e in examples], dtype=np.int32)
    total = int(counts.sum())
    try:
        rows = prompts.pick_bucket(total, buckets.patch)
    except ValueError:
        raise ValueError(
            f"batch has {total} image patch rows, above the largest patch bucket "
            f"{max(buckets.patch)} (data.patch_buckets); raise it or lower data.max_pixels"
        ) from None
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    dim = examples[0]["pixel_values"].shape[1]
    pixel_values = np.zeros((rows, dim), dtype=pixel_dtype)
    segment = np.zeros((rows,), dtype=np.int32)
    for i, e in enumerate(examples):
        pixel_values[offsets[i] : offsets[i] + counts[i]] = e["pixel_values"]
        segment[offsets[i] : offsets[i] + counts[i]] = i + 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "patch_segment_ids": segment,
        "image_grid_thw": np.stack([e["image_grid_thw"] for e in examples]).astype(np.int32),
        "patch_offsets": offsets,
        "num_patches": counts,
        "task_id": np.array([e["task_id"] for e in examples], dtype=np.int32),
        "stage": np.array([e["stage"] for e in examples], dtype=np.int32),
        "element": np.array([e["element"] for e in examples], dtype=np.int64),
        "valid": np.array([e["valid"] for e in examples], dtype=np.int32),
        "records": [e["record"] for e in examples],
    }
    if "target_ids" in examples[0]:
        t_len = prompts.pick_bucket(max(len(e["target_ids"]) for e in examples), buckets.answer)
        batch["target_ids"], batch["target_mask"] = prompts.right_pad(
            [e["target_ids"] for e in examples], t_len, pad_id
        )
    assert len(batch["records"]) == b
    return batch


class _BucketBatchIterator(grain.DatasetIterator):
    """Collects `batch_size` good examples per batch, counting (and dropping) bad rows."""

    def __init__(
        self, parent: grain.DatasetIterator, batch_size: int, collate_fn, max_consecutive_bad: int,
        layout: dict[str, Any],
    ) -> None:
        super().__init__(parent)
        self._batch_size = batch_size
        self._collate = collate_fn
        self._max_consecutive_bad = max_consecutive_bad
        self._bad_rows = 0
        self._consecutive_bad = 0
        self._layout = layout  # rows, global batch size, first global batch (start)
        self._batches = int(layout["start"])

    def __next__(self) -> dict[str, Any]:
        examples = []
        while len(examples) < self._batch_size:
            ex = next(self._parent)  # StopIteration ends the stream (partial batch dropped)
            if isinstance(ex, BadRow):
                self._bad_rows += 1
                self._consecutive_bad += 1
                log.warning("skipping %s (%d skipped so far)", ex.message, self._bad_rows)
                if self._consecutive_bad > self._max_consecutive_bad:
                    raise BadRowError(
                        f"{self._consecutive_bad} bad rows in a row (data."
                        f"max_consecutive_bad_rows={self._max_consecutive_bad}); the data or "
                        f"the setup is broken. Last: {ex.message}"
                    )
                continue
            self._consecutive_bad = 0
            examples.append(ex)
        self._batches += 1
        return self._collate(examples)

    @property
    def bad_rows(self) -> int:
        return self._bad_rows

    def get_state(self) -> dict[str, Any]:
        """JSON-able: Grain's position plus the topology-free one (`batches`: global batches
        read so far) and the layout (`rows` of each global batch, `start`)."""
        return {"parent": self._parent.get_state(), "bad_rows": self._bad_rows,
                "consecutive_bad_rows": self._consecutive_bad, "batches": self._batches,
                **self._layout}

    def set_state(self, state: dict[str, Any]) -> None:
        if "rows" in state and (list(state["rows"]) != list(self._layout["rows"])
                                or int(state["start"]) != int(self._layout["start"])):
            raise ValueError("data-iterator state of another layout (rows "
                             f"{state['rows']}, start {state['start']}); use "
                             "DataPipeline.restore_iterator")
        self._parent.set_state(state["parent"])
        self._bad_rows = int(state["bad_rows"])
        self._consecutive_bad = int(state.get("consecutive_bad_rows", 0))
        self._batches = int(state.get("batches", self._batches))


class BucketBatchIterDataset(grain.IterDataset):
    def __init__(
        self, parent: grain.IterDataset, batch_size: int, collate_fn, max_consecutive_bad: int,
        layout: dict[str, Any],
    ) -> None:
        super().__init__(parent)
        self._batch_size = batch_size
        self._collate = collate_fn
        self._max_consecutive_bad = max_consecutive_bad
        self._layout = layout

    def __iter__(self) -> _BucketBatchIterator:
        return _BucketBatchIterator(self._parent.__iter__(), self._batch_size, self._collate,
                                    self._max_consecutive_bad, self._layout)


def _shard(data_cfg: Any, shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is not None and shard_count is not None:
        return shard_index, shard_count
    mode = data_cfg.get("shard", "jax_process")
    if mode == "none":
        return 0, 1
    if mode != "jax_process":
        raise ValueError(f"unknown data.shard {mode!r}; expected jax_process | none")
    import jax

    return jax.process_index(), jax.process_count()


def _rows(data_cfg: Any, batch_size: int, rows: Any, shard_index: int | None,
          shard_count: int | None) -> tuple[int, ...]:
    """This host's rows of each global batch: `rows` when given (data.shard="jax_process"),
    else the shard_index-th of shard_count contiguous slices (data.shard="none": all rows)."""
    if rows is not None and data_cfg.get("shard", "jax_process") == "jax_process" \
            and shard_index is None:
        out = tuple(int(r) for r in rows)
        if not out or len(set(out)) != len(out) or min(out) < 0 or max(out) >= batch_size:
            raise ValueError(f"rows {out} are not distinct rows of a batch of {batch_size}")
        return out
    index, count = _shard(data_cfg, shard_index, shard_count)
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} is not divisible by the {count} data shards "
                         "(hosts)")
    per = batch_size // count
    return tuple(range(index * per, (index + 1) * per))


class DataPipeline:
    """A configured input pipeline; `iterator()` gives a fresh checkpointable iterator."""

    def __init__(
        self,
        data_cfg: Any,
        schedule: Schedule,
        *,
        sources: Mapping[str, RecordSource],
        tokenizer: str = TINY,
        batch_size: int | None = None,
        seed: int = 0,
        repeat: bool = False,
        with_targets: bool = False,
        shard_index: int | None = None,
        shard_count: int | None = None,
        rows: Sequence[int] | None = None,
        drop_remainder: bool = True,
    ) -> None:
        if data_cfg.on_bad_row not in BAD_ROW_MODES:
            raise ValueError(f"data.on_bad_row must be one of {BAD_ROW_MODES}")
        self.batch_size = int(batch_size or data_cfg.batch_size)
        self.rows = _rows(data_cfg, self.batch_size, rows, shard_index, shard_count)
        self.local_batch_size = len(self.rows)
        missing = [t for t in schedule.task_types if t not in sources]
        if missing:
            raise ValueError(f"curriculum needs task types {missing} that no source provides "
                             f"(have {sorted(sources)})")
        self.schedule = schedule
        self.sources = {t: sources[t] for t in schedule.task_types}
        self.cycle = PlanCycle(schedule, source_sizes(self.sources), self.batch_size, seed,
                               repeat, drop_remainder)
        self.buckets = buckets_from_config(data_cfg)
        self.pixel_dtype = np.dtype(_pixel_dtype(data_cfg.pixel_dtype))
        self.spec = process_spec(data_cfg, tokenizer, with_targets)
        self.worker_count = int(data_cfg.worker_count)
        self.read_threads = int(data_cfg.get("read_threads", 1))
        self.prefetch = int(data_cfg.get("prefetch", 2))
        self.max_consecutive_bad = int(data_cfg.get("max_consecutive_bad_rows", 100))
        self.pad_id = special_token_ids(FastTokenizer(tokenizer)).pad

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> DataPipeline:
        """From the full run config: sources from `c.data.source`, schedule from `c.curriculum`,
        tokenizer from `c.data.tokenizer` (or `c.model.hf_dir`, else tiny)."""
        d = config.data
        split = overrides.pop("split", d.split)
        if "sources" not in overrides:
            schedule = overrides.get("schedule") or schedule_from_config(config.curriculum)
            if d.source == "mapworld":
                overrides["sources"] = mapworld_sources(
                    d.mapworld_world, split, int(d.mapworld_questions_per_task),
                    schedule.task_types)
            elif d.source == "reasonmap":
                overrides["sources"] = real_sources(d, split)
            else:
                raise ValueError(f"unknown data.source {d.source!r}; expected mapworld|reasonmap")
        schedule = overrides.pop("schedule", None) or schedule_from_config(config.curriculum)
        tokenizer = tokenizer_source(config)
        overrides.setdefault("tokenizer", tokenizer)
        overrides.setdefault("seed", int(config.seed))
        overrides.setdefault("repeat", bool(config.curriculum.repeat))
        return cls(d, schedule, **overrides)

    @property
    def num_steps(self) -> int | None:
        """Global steps one pass provides (None when the curriculum repeats endlessly)."""
        return self.cycle.num_steps

    @property
    def max_distinct_shapes(self) -> int:
        n = len(self.buckets.prompt) * len(self.buckets.patch)
        return n * (len(self.buckets.answer) if self.spec.with_targets else 1)

    def stage_at(self, step: int) -> int:
        """The curriculum stage in force at global `step` (plan order, before bad-row skips)."""
        return self.cycle.stage_at(step)

    def stage_name_at(self, step: int) -> str:
        return self.cycle.stage_name_at(step)

    def dataset(self, start: int = 0) -> grain.IterDataset:
        """The stream from global batch `start` on."""
        local_elements = (
            _LOCAL_ENDLESS if self.cycle.repeat
            else (self.cycle.first.num_elements // self.batch_size - start)
            * self.local_batch_size
        )
        process = ProcessElement(self.cycle, self.sources, self.spec, self.rows, start)
        ds = grain.MapDataset.range(local_elements).map(process)
        if self.worker_count > 0:
            _ensure_absl_flags_parsed()
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.worker_count,
                per_worker_buffer_size=self.prefetch * self.local_batch_size))
        else:
            ds = ds.to_iter_dataset(grain.ReadOptions(
                num_threads=self.read_threads,
                prefetch_buffer_size=self.prefetch * self.local_batch_size
                if self.read_threads else 0))

        def collate_fn(examples):
            return collate(examples, self.buckets, self.pad_id, self.pixel_dtype)

        layout = {"rows": list(self.rows), "batch_size": self.batch_size, "start": start}
        return BucketBatchIterDataset(ds, self.local_batch_size, collate_fn,
                                      self.max_consecutive_bad, layout)

    def iterator(self, start: int = 0) -> grain.DatasetIterator:
        """A fresh iterator from global batch `start`; `get_state()`/`set_state()` resume
        exactly."""
        return iter(self.dataset(start))

    def restore_iterator(self, state: dict[str, Any]) -> grain.DatasetIterator:
        """An iterator resumed from a saved `get_state()`, possibly of another topology.

        Same rows of each global batch (same processes and mesh): Grain's exact position.
        Other rows (resumed on another number of processes or another mesh): a fresh stream from
        the next global batch, `state["batches"]`, which every host had reached (they read in
        lockstep) - unless rows were skipped as bad, which shifts each host's stream on its own.
        """
        same = list(state.get("rows", self.rows)) == list(self.rows) and int(
            state.get("batch_size", self.batch_size)) == self.batch_size
        if same:
            it = self.iterator(int(state.get("start", 0)))
            it.set_state(state)
            return it
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise ValueError(f"the checkpoint's data state has global batch size "
                             f"{state['batch_size']}, this run {self.batch_size}")
        if int(state.get("bad_rows", 0)):
            raise ValueError(
                f"cannot resume on another topology: {state['bad_rows']} bad rows were skipped "
                "(data.on_bad_row='skip'), so the hosts' positions differ; resume with the "
                "checkpoint's processes and mesh")
        return self.iterator(int(state["batches"]))


def buckets_from_config(data_cfg: Any) -> Buckets:
    return Buckets(tuple(data_cfg.prompt_buckets), tuple(data_cfg.patch_buckets),
                   tuple(data_cfg.answer_buckets))


def process_spec(data_cfg: Any, tokenizer: str, with_targets: bool = False) -> ProcessSpec:
    """The per-record processing settings of the `data` config section."""
    buckets = buckets_from_config(data_cfg)
    pixel_dtype = np.dtype(_pixel_dtype(data_cfg.pixel_dtype))
    return ProcessSpec(
        tokenizer=tokenizer,
        image=ImageProcessorConfig(
            min_pixels=int(data_cfg.min_pixels), max_pixels=int(data_cfg.max_pixels),
            max_image_pixels=int(data_cfg.max_image_pixels)),
        system_prompt=data_cfg.system_prompt,
        truncation=data_cfg.truncation,
        max_prompt_len=max(buckets.prompt),
        max_answer_len=max(buckets.answer),
        with_targets=with_targets,
        on_bad_row=data_cfg.on_bad_row,
        pixel_dtype=pixel_dtype.name if pixel_dtype.kind == "f" else "float32",
    )


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _pixel_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    if name not in ("float32", "float16"):
        raise ValueError(f"unknown data.pixel_dtype {name!r}")
    return name
