"""The sampler's decode program: key-length segments, compaction of finished prompts, row streams.

`decode` runs inside the sampler's jitted rollout program (`sampler._rollout`), after the
prefill. It draws completion token 0 from the prefill logits, then decode steps 1 .. T-1, each
feeding the previous token through the model's cached call and drawing the next one.

Segments. The steps are cut into a few segments ending at T/2^k (`DecodePlan.segment_ends`,
e.g. T = 128: [1, 32), [32, 64), [64, 128)). Step i writes completion slot i - 1, so a segment
ending at e needs only the first e completion slots: each segment's loop runs on a decode state
cut to those slots (`ModelAdapter.take`), and attention reads e slots instead of T (the key
length is bucketed: at most twice the filled length after the first segment).

Compaction. Before each segment after the first, the units with a live row are counted; the
segment runs on the smallest unit bucket (U, U/2, U/4 by default) that holds them, with the live
ones gathered into it, so finished ones cost nothing more (as vLLM's continuous batching frees
the slots of finished sequences). A unit is one prompt and its G samples when the prompt cache
is shared (the G rows read one prefix row), else one row. Each segment is a `lax.switch` over
the buckets (plus "nothing left": skip), each branch a `lax.while_loop` that also exits as soon
as every row of its bucket has stopped; the branch's state is gathered from and scattered back
to the full-size state (`ModelAdapter.take` / `put`) once per segment, never per step (a bucket
of every unit keeps its rows in place and only cuts the slots). The program therefore holds
1 + (segments - 1) * buckets copies of the step, traced once per compilation
(`TRACE_COUNTS["segment"]`); `SINGLE_LOOP` is one loop over the full state. With the rows
split over devices `sampler.generate` turns compaction off (a cross-shard gather all-reduces the
compacted state on every device); the segments stay (cutting slots is shard-local).

Random streams. Row r's uniform for token i is `uniform(fold_in(fold_in(key, r), i))` (r the
row's index in the batch, prompt-major), drawn for all (r, i) before the loop: a row's tokens
depend on the key, its prompt, its row index and the weights only, never on which slot or bucket
it is decoded in, so the compacted and the uncompacted programs return the same tokens.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rewardmap_jax.rl import sampling

# Copies of the decode step traced into rollout programs (one per segment and bucket): program
# size, not compilations (those are `sampler.TRACE_COUNTS["rollout"]`).
TRACE_COUNTS: Counter[str] = Counter()


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """Static structure of the decode program (part of the compile key).

    segments: at most this many key-length segments; their ends are T, T/2, T/4, ... (ascending),
      none shorter than `min_segment` steps. 1 = one loop over the full cache.
    min_segment: the shortest first segment.
    unit_buckets: at most this many compaction buckets U, ceil(U/2), ... (U = units in the
      batch); 1 = no compaction.
    """

    segments: int = 4
    min_segment: int = 32
    unit_buckets: int = 3

    def __post_init__(self) -> None:
        if self.segments < 1 or self.min_segment < 1 or self.unit_buckets < 1:
            raise ValueError(f"DecodePlan fields must be >= 1, got {self}")

    def segment_ends(self, max_new: int) -> tuple[int, ...]:
        """Ascending exclusive ends of the step segments; the last is `max_new`."""
        ends = [max_new]
        while len(ends) < self.segments and ends[-1] // 2 >= self.min_segment:
            ends.append(ends[-1] // 2)
        return tuple(sorted(ends))

    def buckets(self, units: int) -> tuple[int, ...]:
        """Descending unit buckets, the first being `units`."""
        out = [units]
        while len(out) < self.unit_buckets and out[-1] > 1:
            out.append(-(-out[-1] // 2))
        return tuple(out)


# One loop over the full cache, no compaction: the structure before segments existed.
SINGLE_LOOP = DecodePlan(segments=1, unit_buckets=1)


class _State(NamedTuple):
    """The full-size decode state (N rows, T columns); step is the next decode step."""

    cache: Any
    tokens: jax.Array  # (N, T) int32
    logp_s: jax.Array  # (N, T) fp32
    logp_p: jax.Array  # (N, T) fp32
    done: jax.Array  # (N,) bool
    lengths: jax.Array  # (N,) int32
    last: jax.Array  # (N,) int32, the latest token (the next step's input)
    row_steps: jax.Array  # (N,) int32, decode steps the row was computed in
    step: jax.Array  # () int32


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the decode loops need besides their state (built by `sampler._loop`).

    step_fn: (tokens (R,1), positions (3,R,1), cache) -> (logits (R,V) fp32, cache).
    take / put: (cache, units (R,) or None, slots) -> sub-cache / (cache, sub, units) -> cache
      (`sampler.ModelAdapter.take` / `put`).
    unit: rows per unit (G with a shared prompt cache, else 1).
    slots_for: segment end -> the cache slots a segment keeps; full_slots: all of them (a
      segment keeping all units and all slots decodes on the state itself).
    cls: the sampling class; max_new: T; pad_id: the token after a row's stop.
    """

    step_fn: Callable[..., Any]
    take: Callable[..., Any]
    put: Callable[..., Any]
    unit: int
    slots_for: Callable[[int], int]
    full_slots: int
    cls: sampling.SamplingClass
    max_new: int
    pad_id: int


def row_uniforms(key: jax.Array, rows: int, steps: int) -> jax.Array:
    """(rows, steps) fp32 in [0, 1): entry (r, i) = uniform(fold_in(fold_in(key, r), i))."""

    def row(r):
        rk = jax.random.fold_in(key, r)
        return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rk, i)))(
            jnp.arange(steps, dtype=jnp.uint32))

    return jax.vmap(row)(jnp.arange(rows, dtype=jnp.uint32))


def _record(loop: Loop, knobs, stop_ids, forbidden, logits, u, done, lengths):
    """Draws a token per row, pads finished rows; returns tokens, logps, done, lengths."""
    temperature, top_k, top_p = knobs
    tok, lp_s, lp_p = sampling.draw(u, logits, temperature, top_k, top_p, forbidden, loop.cls)
    tok = jnp.where(done, loop.pad_id, tok)
    lp_s, lp_p = jnp.where(done, 0.0, lp_s), jnp.where(done, 0.0, lp_p)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    return tok, lp_s, lp_p, done, lengths


def _select(st: _State, unit: int, units: int, total_units: int) -> jax.Array | None:
    """(units,) int32 units for a bucket of `units`: the live ones first (in order), then
    finished ones to fill it; None when the bucket holds every unit (rows stay in place)."""
    if units == total_units:
        return None
    alive = ~jnp.all(st.done.reshape(total_units, unit), axis=-1)
    rank = jnp.where(alive, jnp.cumsum(alive) - 1,
                     jnp.sum(alive) + jnp.cumsum(~alive) - 1).astype(jnp.int32)
    order = jnp.zeros((total_units,), jnp.int32).at[rank].set(
        jnp.arange(total_units, dtype=jnp.int32))
    return order[:units]


def _segment(loop: Loop, begin: int, end: int, units: int, total_units: int,
             consts) -> Callable[[_State], _State]:
    """The branch running steps [state.step, end) on `units` units (static)."""
    start, uniforms, knobs, stop_ids, forbidden = consts
    cols = end - begin

    def run(st: _State) -> _State:
        TRACE_COUNTS["segment"] += 1
        sel = _select(st, loop.unit, units, total_units)
        if sel is None:
            pick = lambda x: x  # noqa: E731
            place = lambda x, y: x.at[:, begin:end].set(y) if x.ndim == 2 else y  # noqa: E731
        else:
            rows = (sel[:, None] * loop.unit + jnp.arange(loop.unit, dtype=jnp.int32)).ravel()
            pick = lambda x: x[rows]  # noqa: E731
            place = lambda x, y: (x.at[rows, begin:end].set(y) if x.ndim == 2  # noqa: E731
                                  else x.at[rows].set(y))
        slots = loop.slots_for(end)
        in_place = sel is None and slots == loop.full_slots
        cache = st.cache if in_place else loop.take(st.cache, sel, slots)
        pos0 = pick(start) - 1
        n = pos0.shape[0]
        u_seg = None if uniforms is None else pick(uniforms)[:, begin:end]

        def body(c):
            i, cache, tok, done, lengths, work, bt, bs, bp = c
            pos = jnp.broadcast_to((pos0 + i)[None, :, None], (3, n, 1))
            logits, cache = loop.step_fn(tok[:, None], pos, cache)
            u = None if u_seg is None else lax.dynamic_index_in_dim(u_seg, i - begin, 1, False)
            tok, lp_s, lp_p, done, lengths = _record(loop, knobs, stop_ids, forbidden, logits, u,
                                                     done, lengths)
            col = i - begin
            return (i + 1, cache, tok, done, lengths, work + 1, bt.at[:, col].set(tok),
                    bs.at[:, col].set(lp_s), bp.at[:, col].set(lp_p))

        def cond(c):
            return (c[0] < end) & ~jnp.all(c[3])

        carry = (st.step, cache, pick(st.last), pick(st.done), pick(st.lengths),
                 pick(st.row_steps), jnp.full((n, cols), loop.pad_id, jnp.int32),
                 jnp.zeros((n, cols), jnp.float32), jnp.zeros((n, cols), jnp.float32))
        i, cache, tok, done, lengths, work, bt, bs, bp = lax.while_loop(cond, body, carry)
        if not in_place:
            cache = loop.put(st.cache, cache, sel)
        return _State(cache, place(st.tokens, bt), place(st.logp_s, bs), place(st.logp_p, bp),
                      place(st.done, done), place(st.lengths, lengths), place(st.last, tok),
                      place(st.row_steps, work), i)

    return run


def decode(loop: Loop, plan: DecodePlan, cache: Any, logits: jax.Array, start: jax.Array,
           key: jax.Array, knobs, stop_ids: jax.Array,
           forbidden: jax.Array) -> tuple[jax.Array, ...]:
    """Decode over N rows from the prefill's (N, V) logits and decode state.

    start (N,) int32 is the position of completion token 0. Returns tokens, logp_sample,
    logp_policy (N, T), lengths (N,), finished (N,), steps (), row_steps (N,) (see
    `sampler.Rollout`).
    """
    rows, t = logits.shape[0], loop.max_new
    uniforms = None if loop.cls.greedy else row_uniforms(key, rows, t)
    zeros = jnp.zeros((rows,), bool)
    tok, lp_s, lp_p, done, lengths = _record(
        loop, knobs, stop_ids, forbidden, logits, None if uniforms is None else uniforms[:, 0],
        zeros, jnp.zeros((rows,), jnp.int32))
    col0 = lambda x, fill: jnp.full((rows, t), fill, x.dtype).at[:, 0].set(x)  # noqa: E731
    st = _State(cache, col0(tok, loop.pad_id), col0(lp_s, 0.0), col0(lp_p, 0.0), done, lengths,
                tok, jnp.zeros((rows,), jnp.int32), jnp.int32(1))
    total = rows // loop.unit
    consts = (start, uniforms, knobs, stop_ids, forbidden)
    begin = 1
    for k, end in enumerate(plan.segment_ends(t)):
        if end <= begin:
            continue
        buckets = plan.buckets(total) if k else (total,)
        branches = [_segment(loop, begin, end, b, total, consts)
                    for b in reversed(buckets)]  # ascending
        if len(branches) == 1:
            st = lax.cond(jnp.all(st.done), lambda s: s, branches[0], st)
        else:
            alive = jnp.sum(~jnp.all(st.done.reshape(total, loop.unit), axis=-1))
            fits = jnp.asarray(sorted(buckets), jnp.int32)
            index = jnp.where(alive == 0, 0, 1 + jnp.sum(fits < alive))
            st = lax.switch(index, [lambda s: s, *branches], st)
        begin = end
    return st.tokens, st.logp_s, st.logp_p, st.lengths, st.done, st.step, st.row_steps
