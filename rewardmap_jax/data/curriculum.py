"""Curriculum schedules and the deterministic element plan they expand to.

A `Schedule` is a list of `Stage`s. A stage lists task types with mixture weights and a length:
`steps > 0` draws that many global batches, each example's task sampled from the weights (blended
linearly with the neighbouring stage over `overlap` steps around a boundary: soft mixing), or
`steps == ONE_PASS` uses every record of the stage's task types exactly once, shuffled together
within the stage (the official RewardMap order, rewardmap.md §5; weights only select the types).

`build_plan` expands a schedule into an element plan: for global element g (global batch
g // batch_size) the task type, the record index inside that task's source and the stage. It is a
pure function of (schedule, source sizes, batch size, seed), so every host and every Grain worker
computes the same plan, and a data iterator is checkpointed by one integer per host.
Weighted stages draw record indices as successive shuffled epochs of each task's source.
Elements are batched in plan order; as in the official code a batch may straddle a one-pass stage
boundary, and the last partial global batch of the plan is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rewardmap_jax.mapworld.records import PLUS_TYPES, TASK_TYPES

ONE_PASS = -1
PRESETS = ("official", "coarse", "fine_grained", "shuffled", "soft")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage: task type -> mixture weight, and a length in global steps."""

    name: str
    weights: Mapping[str, float]
    steps: int = ONE_PASS

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError(f"stage {self.name!r} lists no task types")
        for task, w in self.weights.items():
            if task not in TASK_TYPES:
                raise ValueError(f"stage {self.name!r}: unknown task type {task!r}")
            if not w > 0:
                raise ValueError(f"stage {self.name!r}: weight of {task} must be > 0, got {w}")
        if self.steps != ONE_PASS and self.steps <= 0:
            raise ValueError(f"stage {self.name!r}: steps must be > 0 or {ONE_PASS} (one pass)")

    @property
    def one_pass(self) -> bool:
        return self.steps == ONE_PASS

    def probs(self) -> np.ndarray:
        """Normalised weights over TASK_TYPES, shape (6,) float64."""
        p = np.array([float(self.weights.get(t, 0.0)) for t in TASK_TYPES])
        return p / p.sum()


@dataclasses.dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]
    overlap: int = 0  # steps of linear weight blending centred on each boundary

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("curriculum has no stages")
        if self.overlap < 0:
            raise ValueError("curriculum overlap must be >= 0")
        if self.overlap and any(s.one_pass for s in self.stages):
            raise ValueError("soft mixing (overlap > 0) needs stages with a fixed number of steps")

    @property
    def task_types(self) -> tuple[str, ...]:
        used = {t for s in self.stages for t in s.weights}
        return tuple(t for t in TASK_TYPES if t in used)


def _one_pass(names_and_types: Sequence[tuple[str, Sequence[str]]]) -> tuple[Stage, ...]:
    return tuple(Stage(name, {t: 1.0 for t in types}) for name, types in names_and_types)


def preset_schedule(name: str, stage_steps: int = 100, overlap: int = 0) -> Schedule:
    """Named schedules. `stage_steps`/`overlap` only apply to the weighted `soft` preset."""
    if name == "official":  # [RW:rl_dataset.py]: TorF -> Counting2/3 -> Counting1 -> planning
        return Schedule(_one_pass([
            ("torf", ("TorF1", "TorF2")),
            ("global_local_count", ("Counting2", "Counting3")),
            ("mcq_count", ("Counting1",)),
            ("planning", ("planning",)),
        ]))
    if name == "coarse":  # all Plus types shuffled together, then planning
        return Schedule(_one_pass([("plus", PLUS_TYPES), ("planning", ("planning",))]))
    if name == "fine_grained":
        return Schedule(_one_pass([(t.lower(), (t,)) for t in
                                   ("TorF1", "TorF2", "Counting3", "Counting2", "Counting1",
                                    "planning")]))
    if name == "shuffled":  # no curriculum: everything once, one shuffle
        return Schedule(_one_pass([("all", TASK_TYPES)]))
    if name == "soft":  # the official order as weighted stages, blended at the boundaries
        order = [("torf", ("TorF1", "TorF2")), ("global_local_count", ("Counting2", "Counting3")),
                 ("mcq_count", ("Counting1",)), ("planning", ("planning",))]
        return Schedule(
            tuple(Stage(n, {t: 1.0 for t in ts}, stage_steps) for n, ts in order),
            overlap=overlap,
        )
    raise ValueError(f"unknown curriculum preset {name!r}; choose one of {PRESETS}")


def schedule_from_config(cfg: Any) -> Schedule:
    """From a `c.curriculum` ConfigDict: `preset`, or explicit `stages` (list of dicts with
    `name`, `weights` {task: weight}, `steps` (-1 = one pass)), plus `overlap`/`stage_steps`."""
    stages = cfg.get("stages") or ()
    if stages:
        return Schedule(
            tuple(Stage(str(s["name"]), dict(s["weights"]), int(s.get("steps", ONE_PASS)))
                  for s in stages),
            overlap=int(cfg.get("overlap", 0)),
        )
    return preset_schedule(
        cfg.preset, stage_steps=int(cfg.get("stage_steps", 100)),
        overlap=int(cfg.get("overlap", 0)),
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """Element plan: arrays of length `num_elements` (= num_steps * batch_size).

    task: int8 index into TASK_TYPES; index: int64 record index in that task's source;
    stage: int16 stage index. `stage_start[k]` is the first global step whose first element
    belongs to stage k.
    """

    schedule: Schedule
    batch_size: int
    task: np.ndarray
    index: np.ndarray
    stage: np.ndarray
    stage_start: tuple[int, ...]
    valid: np.ndarray | None = None  # bool; False on padding copies (drop_remainder=False)

    @property
    def num_steps(self) -> int:
        return len(self.task) // self.batch_size

    @property
    def num_elements(self) -> int:
        return len(self.task)

    def stage_at(self, step: int) -> int:
        """Index of the stage in force at global `step` (that of the step's first element)."""
        return int(self.stage[(step % self.num_steps) * self.batch_size])

    def stage_name_at(self, step: int) -> str:
        return self.schedule.stages[self.stage_at(step)].name

    def weights_at(self, step: int) -> dict[str, float]:
        """Intended task mixture at `step` (for one-pass stages: the stage's data proportions)."""
        lo = (step % self.num_steps) * self.batch_size
        stage = self.schedule.stages[self.stage_at(step)]
        if stage.one_pass:
            counts = np.bincount(self.task[self.stage == self.stage[lo]], minlength=len(TASK_TYPES))
            p = counts / counts.sum()
        elif not self.schedule.overlap:
            p = stage.probs()
        else:
            p = _blended_probs(self.schedule, _step_starts(self.schedule), step % self.num_steps)
        return {t: float(p[i]) for i, t in enumerate(TASK_TYPES) if p[i] > 0}

    def global_element(self, local: int, shard_index: int = 0, shard_count: int = 1) -> int:
        """Global plan element of a host's `local` element: each global batch is cut into
        `shard_count` contiguous slices, host `shard_index` reads its slice of every batch."""
        b_local = self.batch_size // shard_count
        step, offset = divmod(local, b_local)
        return step * self.batch_size + shard_index * b_local + offset


def _step_starts(schedule: Schedule) -> list[int]:
    starts, s = [], 0
    for st in schedule.stages:
        starts.append(s)
        s += st.steps
    return starts


def _blended_probs(schedule: Schedule, starts: Sequence[int], step: int) -> np.ndarray:
    """Weighted-stage mixture at `step`, linearly blended within overlap/2 of a boundary."""
    k = max(i for i, s in enumerate(starts) if s <= step) if step >= 0 else 0
    p = schedule.stages[k].probs()
    half = schedule.overlap / 2
    if not half:
        return p
    if k + 1 < len(starts) and step >= starts[k + 1] - half:  # ramp into the next stage
        a = (step - (starts[k + 1] - half)) / schedule.overlap
        return (1 - a) * p + a * schedule.stages[k + 1].probs()
    if k > 0 and step < starts[k] + half:  # still ramping out of the previous stage
        a = (step - (starts[k] - half)) / schedule.overlap
        return (1 - a) * schedule.stages[k - 1].probs() + a * p
    return p


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def build_plan(
    schedule: Schedule,
    source_sizes: Mapping[str, int],
    batch_size: int,
    seed: int = 0,
    drop_remainder: bool = True,
) -> Plan:
    """Expands `schedule` over sources with `source_sizes[task]` records (see module doc).

    `drop_remainder=False` (evaluation) keeps the last partial batch, filled up with copies of
    its last element that `Plan.valid` marks False.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    for t in schedule.task_types:
        if source_sizes.get(t, 0) <= 0:
            raise ValueError(f"curriculum uses task type {t!r} but its source is empty or missing")
    tasks, indices, stages = [], [], []
    drawn = dict.fromkeys(TASK_TYPES, 0)  # weighted draws so far per task (epoch counters)
    starts = _step_starts(schedule) if not any(s.one_pass for s in schedule.stages) else None
    for k, st in enumerate(schedule.stages):
        if st.one_pass:
            t_ids = np.concatenate([np.full(source_sizes[t], TASK_TYPES.index(t), np.int8)
                                    for t in TASK_TYPES if t in st.weights])
            idx = np.concatenate([np.arange(source_sizes[t], dtype=np.int64)
                                  for t in TASK_TYPES if t in st.weights])
            order = _rng(seed, 1, k).permutation(len(t_ids))
            t_ids, idx = t_ids[order], idx[order]
        else:
            n = st.steps * batch_size
            steps = (starts[k] if starts else 0) + np.arange(n) // batch_size
            if starts is None:  # mixed with one-pass stages: no blending, fixed weights
                cdf = np.broadcast_to(np.cumsum(st.probs()), (n, len(TASK_TYPES)))
            else:
                probs = np.stack([_blended_probs(schedule, starts, int(s))
                                  for s in range(starts[k], starts[k] + st.steps)])
                cdf = np.cumsum(probs, axis=1)[steps - starts[k]]
            u = _rng(seed, 2, k).random(n)
            t_ids = np.minimum((u[:, None] >= cdf).sum(axis=1), len(TASK_TYPES) - 1)
            t_ids = t_ids.astype(np.int8)
            idx = np.empty(n, dtype=np.int64)
            for ti, t in enumerate(TASK_TYPES):
                where = np.flatnonzero(t_ids == ti)
                if not len(where):
                    continue
                draw = drawn[t] + np.arange(len(where))
                idx[where] = _epoch_indices(seed, ti, source_sizes[t], draw)
                drawn[t] += len(where)
        tasks.append(t_ids)
        indices.append(idx)
        stages.append(np.full(len(t_ids), k, dtype=np.int16))
    task, index, stage = (np.concatenate(a) for a in (tasks, indices, stages))
    valid = np.ones(len(task), dtype=bool)
    short = -len(task) % batch_size
    if not drop_remainder and short:
        task, index, stage = (np.concatenate([a, np.repeat(a[-1:], short)])
                              for a in (task, index, stage))
        valid = np.concatenate([valid, np.zeros(short, dtype=bool)])
    usable = len(task) // batch_size * batch_size
    if usable == 0:
        raise ValueError(f"the curriculum has {len(task)} examples, fewer than one batch "
                         f"({batch_size})")
    task, index, stage, valid = task[:usable], index[:usable], stage[:usable], valid[:usable]
    first = stage[::batch_size]
    stage_start = tuple(int(np.argmax(first >= k)) if (first >= k).any() else len(first)
                        for k in range(len(schedule.stages)))
    return Plan(schedule, batch_size, task, index, stage, stage_start, valid)


def _epoch_indices(seed: int, task_id: int, size: int, draw: np.ndarray) -> np.ndarray:
    """Record index of the `draw`-th weighted draw of a task: successive shuffled epochs."""
    out = np.empty(len(draw), dtype=np.int64)
    epochs = draw // size
    for e in np.unique(epochs):
        perm = _rng(seed, 3, task_id, int(e)).permutation(size)
        sel = epochs == e
        out[sel] = perm[draw[sel] % size]
    return out


class PlanCycle:
    """Random access over a plan repeated forever (`repeat=True`; pass e uses seed + e, so each
    pass reshuffles) or exactly once. Thread/process safe to share: plans are rebuilt on demand."""

    def __init__(
        self,
        schedule: Schedule,
        source_sizes: Mapping[str, int],
        batch_size: int,
        seed: int = 0,
        repeat: bool = False,
        drop_remainder: bool = True,
    ) -> None:
        if repeat and not drop_remainder:
            raise ValueError("a repeating curriculum cannot keep partial batches")
        self.schedule = schedule
        self.source_sizes = dict(source_sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.repeat = repeat
        self.first = build_plan(schedule, source_sizes, batch_size, seed, drop_remainder)
        self._cache: dict[int, Plan] = {0: self.first}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {0: self.first}
        return state

    @property
    def steps_per_pass(self) -> int:
        return self.first.num_steps

    @property
    def num_steps(self) -> int | None:
        """Global steps in the stream (None = endless)."""
        return None if self.repeat else self.first.num_steps

    def plan(self, epoch: int) -> Plan:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache = {0: self.first}
            self._cache[epoch] = build_plan(
                self.schedule, self.source_sizes, self.batch_size, self.seed + epoch
            )
        return self._cache[epoch]

    def element(self, g: int) -> tuple[str, int, int, int]:
        """(task type, record index, stage, pass) of global element `g`."""
        epoch, i = divmod(g, self.first.num_elements)
        if epoch and not self.repeat:
            raise IndexError(f"element {g} is past the end of the curriculum")
        p = self.plan(epoch)
        return TASK_TYPES[int(p.task[i])], int(p.index[i]), int(p.stage[i]), epoch

    def is_valid(self, g: int) -> bool:
        """False for the padding copies that fill a kept partial last batch."""
        valid = self.first.valid
        return True if valid is None else bool(valid[g % self.first.num_elements])

    def stage_at(self, step: int) -> int:
        return self.first.stage_at(step % self.first.num_steps)

    def stage_name_at(self, step: int) -> str:
        return self.schedule.stages[self.stage_at(step)].name
