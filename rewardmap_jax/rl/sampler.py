"""Rollout sampler: prefill each prompt once, share its KV cache with G samples, decode in jit.

One jitted program per shape bucket and sampling class (`_rollout`), in two phases:

* prefill (B prompts): encodes the images and the prompts once, writing a preallocated KV cache;
  the G samples of prompt b (rows `b * G + g`) then share it: by default through the model's
  group-shared cache (`model.kv_cache.SharedKVCache`: B*L prompt slots plus B*G*T per-sample
  slots, no copies; the decoder attends over both under one softmax), or with
  `QWEN2_5_VL_REPEAT` by repeating the cache rows G times (B*G*(L+T) slots).
* decode (B*G rows, `rl.decode`): `lax.while_loop`s over key-length segments; finished prompts
  are compacted out between segments, and every loop exits once its rows have stopped. The
  first token is drawn from the prefill logits, so at most T - 1 model steps run. The state is
  created inside the program (nothing to donate, no host round trip between the phases).

Positions: token i of the completion sits at 3-D position `L + rope_delta + i` on all three axes
(rope delta against the padded prompt length L, the transformers 4.x convention; `rope_deltas`
may be omitted and is then derived from the prompt positions: max over valid tokens + 1 - L).

Vision special tokens are masked out of the sampling distribution, so no completion can change
the prompt's image-token count. Sampling values are traced scalars: changing them never
recompiles; the shapes (batch, prompt bucket, patch bucket, T, G), the sampling class (greedy /
plain / top-k-top-p: `sampling.SamplingClass`), the `DecodePlan` and the forbidden ids (fixed by
the model: its vision special tokens) select a compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from flax.core import spmd as flax_spmd

from rewardmap_jax.data.prompts import pick_bucket  # noqa: F401  (re-exported: bucketing API)
from rewardmap_jax.model.config import ModelConfig
from rewardmap_jax.model.kv_cache import KVCache, SharedKVCache
from rewardmap_jax.model.layers import constrain
from rewardmap_jax.model.sharding import logical_to_spec
from rewardmap_jax.rl import decode as decode_lib
from rewardmap_jax.rl import sampling
from rewardmap_jax.rl.placement import check_global

# Trace counters (incremented only when jax traces, i.e. compiles, a function): tests and logs use
# them to check that a run compiles once per shape bucket.
TRACE_COUNTS: Counter[str] = Counter()
# Stop ids are padded to this many slots so the stop set is a traced value, not a compile key.
MAX_STOP_IDS = 8
# The decode program's static structure, an argument of `generate` (re-exported from rl.decode).
DecodePlan = decode_lib.DecodePlan
DEFAULT_PLAN = DecodePlan()
SINGLE_LOOP = decode_lib.SINGLE_LOOP



@dataclasses.dataclass(frozen=True)
class ModelAdapter:
    """How the sampler talks to a model (hashable; passed to jit as static).

    forward: (model, input_ids, positions, attention_mask, vision, cache) -> (last_logits, cache),
      last_logits (B, V) being the logits of the last column only (so a model with a separate
      LM head never projects the whole prompt onto the vocabulary). For decode steps
      `input_ids` is (N, 1) and `attention_mask` (N, 1) all True.
    init_cache: (model, batch, max_len) -> empty KV cache pytree.
    vocab_size: (model) -> V, the logits width.
    batch_axis: which axis of every non-scalar cache leaf is the batch axis.
    share: optional group-shared prefix mode. When set, the prefill cache has only the L prompt
      slots and `share(model, cache, G, T)` turns it into the decode state of B*G rows (without
      copying the prompt part G times). When unset, the prefill cache has L + T slots and its
      rows are repeated G times.
    decode: optional `decode(model, tokens (N,1), positions (3,N,1), state) -> (logits (N,V),
      state)` for one decode step; unset, decode steps call `forward` on the decode state.
    take / put: optional `take(state, units (R,) int32 or None = all, slots) -> sub-state`
      keeping R units (prompts with a `share`d cache, else rows) and the first `slots` slots
      (completion slots of a shared cache, prompt + completion slots otherwise), and
      `put(state, sub, units) -> state` writing it back (`rl.decode`'s compaction and key-length
      segments). Unset: every non-scalar leaf is gathered / scattered along `batch_axis`, slots
      are kept whole.
    """

    forward: Callable[..., tuple[jax.Array, Any]]
    init_cache: Callable[[Any, int, int], Any]
    vocab_size: Callable[[Any], int]
    batch_axis: int = 0
    share: Callable[[Any, Any, int, int], Any] | None = None
    decode: Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, Any]] | None = None
    take: Callable[[Any, jax.Array, int], Any] | None = None
    put: Callable[[Any, Any, jax.Array], Any] | None = None


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-call sampling settings. `max_new_tokens`, `num_generations` and the setting's class
    (`sampling_class`: greedy / plain sampling / sampling with top-k or top-p) select a
    compilation, as does the set of `forbidden_ids` (a constant of the program, checked against
    the vocabulary when it is traced); every other value is traced (changing temperature
    0.7 -> 1.0, top_p 0.9 -> 0.8 or the stop ids never recompiles)."""

    max_new_tokens: int
    num_generations: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    forbidden_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if set(self.stop_ids) & set(self.forbidden_ids):
            raise ValueError(
                f"stop ids {sorted(set(self.stop_ids) & set(self.forbidden_ids))} are also "
                "forbidden: the rollout could never stop on them"
            )

    @property
    def sampling_class(self) -> sampling.SamplingClass:
        return sampling.SamplingClass.of(self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """A left-padded, bucketed prompt batch (host- or device-side arrays).

    input_ids: (B, L) int32, left-padded.
    attention_mask: (B, L) bool, False at pads.
    positions: (3, B, L) int32 M-RoPE positions (`get_rope_index`).
    rope_deltas: (B,) int32, max position + 1 - L (padded length), or None to derive.
    vision: the model's vision input pytree (packed patches, grids, ...) or None.
    """

    input_ids: Any
    attention_mask: Any
    positions: Any
    rope_deltas: Any = None
    vision: Any = None


@struct.dataclass
class Rollout:
    """Sampler output, rows ordered prompt-major (`b * G + g`).

    tokens: (B*G, T) int32, `pad_id` after the stop token (the stop token is kept).
    logp_sample: (B*G, T) fp32 log-probs under the sampling distribution (0 at pads; 0 for greedy).
    logp_policy: (B*G, T) fp32 log-probs under the raw policy (T=1, no truncation; 0 at pads).
    lengths: (B*G,) int32 completion lengths, stop token included.
    finished: (B*G,) bool, True where a stop token was emitted within T tokens.
    steps: () int32 decode steps run (T, or fewer after an early exit).
    row_steps: (B*G,) int32 decode steps each row was computed in: its cost. At most `steps`;
      fewer once its prompt finished and was compacted away (`rl.decode`).
    """

    tokens: jax.Array
    logp_sample: jax.Array
    logp_policy: jax.Array
    lengths: jax.Array
    finished: jax.Array
    steps: jax.Array
    row_steps: jax.Array


def _qwen_forward(model, ids, positions, mask, vision, cache):
    hidden, cache = model.hidden_states(ids, positions, mask, vision, cache)
    return model.logits(hidden[:, -1]), cache


def _qwen_init_cache(model, batch: int, max_len: int):
    return KVCache.init(model.cfg, batch, max_len)


def _qwen_vocab(model) -> int:
    return model.cfg.text.vocab_size


def _qwen_share(model, cache: KVCache, num_generations: int, max_new: int) -> SharedKVCache:
    return SharedKVCache.share(cache, num_generations, max_new)


def _qwen_take(cache: KVCache | SharedKVCache, units: jax.Array, slots: int):
    return cache.take(units, slots)


def _qwen_put(cache: KVCache | SharedKVCache, sub: Any, units: jax.Array):
    return cache.put(sub, units)


# rewardmap_jax.model.qwen2_5_vl.Qwen2_5_VL, prompt cache shared by the G samples of a prompt
# (`SharedKVCache`, decoded by the model's own cached call): the default.
QWEN2_5_VL = ModelAdapter(
    forward=_qwen_forward,
    init_cache=_qwen_init_cache,
    vocab_size=_qwen_vocab,
    share=_qwen_share,
    take=_qwen_take,
    put=_qwen_put,
)
# Same model, G full copies of the prompt cache, decode through the model's own cached call.
QWEN2_5_VL_REPEAT = ModelAdapter(
    forward=_qwen_forward,
    init_cache=_qwen_init_cache,
    vocab_size=_qwen_vocab,
    take=_qwen_take,
    put=_qwen_put,
)


def vision_special_ids(cfg: ModelConfig) -> tuple[int, ...]:
    """Ids of `<|vision_start|>`, `<|vision_end|>`, `<|vision_pad|>`, `<|image_pad|>`,
    `<|video_pad|>` that exist in the vocabulary (tiny test configs may leave some outside)."""
    ids = (cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.vision_token_id,
           cfg.image_token_id, cfg.video_token_id)
    return tuple(sorted({i for i in ids if 0 <= i < cfg.text.vocab_size}))


def params_from_config(rl: Any, cfg: ModelConfig, stop_ids: Sequence[int] | None = None,
                       **overrides: Any) -> SamplingParams:
    """SamplingParams from the `rl` config section and the model config.

    Stops on `stop_ids`, else `rl.stop_ids` when non-empty, else `eos_token_id` (`<|im_end|>`);
    pads with `pad_token_id`; forbids the vision special tokens. `overrides` replace any field
    (e.g. temperature=0 for evaluation).
    """
    if stop_ids is None:
        stop_ids = tuple(rl.get("stop_ids", ())) or (cfg.eos_token_id,)
    kw = dict(
        max_new_tokens=int(rl.max_new_tokens),
        num_generations=int(rl.num_generations),
        temperature=float(rl.temperature),
        top_p=float(rl.top_p),
        top_k=int(rl.top_k),
        stop_ids=tuple(int(i) for i in stop_ids),
        pad_id=cfg.pad_token_id,
        forbidden_ids=vision_special_ids(cfg),
    )
    kw.update(overrides)
    return SamplingParams(**kw)


def rope_deltas_from_positions(positions: Any, attention_mask: Any) -> Any:
    """(3,B,L) int positions, (B,L) bool mask -> (B,) int32 deltas: max valid position + 1 - L.
    numpy in, numpy out (no device work); jax arrays or tracers otherwise."""
    xp = np if isinstance(positions, np.ndarray) and isinstance(attention_mask, np.ndarray) else jnp
    length = attention_mask.shape[-1]
    masked = xp.where(attention_mask[None], positions, np.iinfo(np.int32).min)
    return (xp.max(masked, axis=(0, 2)) + 1 - length).astype(np.int32)


def _repeat_rows(tree: Any, reps: int, axis: int) -> Any:
    """Repeats every non-scalar leaf `reps` times along `axis` (row b -> rows b*reps..)."""
    if reps == 1:
        return tree
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, reps, axis=axis), tree)


def _prefill(adapter, model, ids, positions, mask, vision, num_generations, max_new):
    """Encodes images + prompts once (B rows), then hands the cache to the G samples."""
    batch, length = ids.shape
    shared = adapter.share is not None
    cache = adapter.init_cache(model, batch, length if shared else length + max_new)
    # Left padding puts every prompt's last real token in the last column.
    last, cache = adapter.forward(model, ids, positions, mask, vision, cache)
    last = _repeat_rows(last.astype(jnp.float32), num_generations, 0)
    if shared:
        return last, adapter.share(model, cache, num_generations, max_new)
    return last, _repeat_rows(cache, num_generations, adapter.batch_axis)


def _take_rows(axis: int, state: Any, rows: jax.Array | None, slots: int) -> Any:
    del slots  # generic: slots are kept whole
    if rows is None:
        return state
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows, axis=axis), state)


def _put_rows(axis: int, state: Any, sub: Any, rows: jax.Array | None) -> Any:
    if rows is None:
        return sub

    def put(x, y):
        if x.ndim == 0:
            return y
        idx = (slice(None),) * axis + (rows,)
        return x.at[idx].set(y)

    return jax.tree.map(put, state, sub)


def _loop(adapter: ModelAdapter, model, cls: sampling.SamplingClass, num_generations: int,
          max_new: int, prompt_len: int, pad_id: int) -> decode_lib.Loop:
    """The decode loop's model hooks (`rl.decode.Loop`) for this adapter and model."""
    shared = adapter.share is not None

    def step_fn(tok, pos, cache):
        if adapter.decode is not None:
            out, cache = adapter.decode(model, tok, pos, cache)
        else:
            out, cache = adapter.forward(model, tok, pos, jnp.ones(tok.shape, bool), None, cache)
        return out.astype(jnp.float32), cache

    # A shared cache's unit is a prompt and its G samples (one prefix row), its slots the
    # completion slots; a plain cache's unit is a row, its slots prompt + completion.
    prompt_slots = 0 if shared else prompt_len
    return decode_lib.Loop(
        step_fn=step_fn,
        take=adapter.take or functools.partial(_take_rows, adapter.batch_axis),
        put=adapter.put or functools.partial(_put_rows, adapter.batch_axis),
        unit=num_generations if shared else 1,
        slots_for=lambda end: prompt_slots + end,
        full_slots=prompt_slots + max_new,
        cls=cls, max_new=max_new, pad_id=pad_id)


@functools.partial(jax.jit, static_argnums=(0, 1, 11, 12, 13, 14, 15, 16))
def _rollout(adapter, graphdef, state, ids, positions, mask, deltas, vision, key, knobs,
             stop_ids, num_generations, max_new, pad_id, cls, plan, forbidden_ids):
    """Prefill + decode as one program: no host round trip, the loop state never leaves it."""
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, state)
    # Built while tracing (the vocabulary is the model's, known here): a constant of the program.
    forbidden = sampling.forbidden_mask(adapter.vocab_size(model), forbidden_ids)
    logits, cache = _prefill(adapter, model, ids, positions, mask, vision, num_generations,
                             max_new)
    start = jnp.repeat(deltas + ids.shape[1], num_generations)
    loop = _loop(adapter, model, cls, num_generations, max_new, ids.shape[1], pad_id)
    out = decode_lib.decode(loop, plan, cache, logits, start, key, knobs, stop_ids, forbidden)
    # Under activation sharding the B*G output rows stay on their prompts' shards.
    return tuple(x if x.ndim == 0 else constrain(x, ("batch",) + (None,) * (x.ndim - 1))
                 for x in out)


# The policy as `generate` takes it: a module, or the (graphdef, state) pair of `nnx.split`.
Policy = nnx.Module | tuple[nnx.GraphDef, nnx.State]


def split_policy(model: Policy) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of a policy: a module is split, a pair is returned as it is.

    Splitting walks the whole module graph in Python (~2 ms for the tiny model's 56 arrays, more
    for deeper ones): a caller that holds its weights split (the trainer) or samples many
    batches with the same weights (evaluation) passes the pair and pays it never or once."""
    if isinstance(model, nnx.Module):
        return nnx.split(model)
    if (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nnx.GraphDef)
            and isinstance(model[1], nnx.State)):
        return model
    raise TypeError("the policy must be an nnx.Module or the (graphdef, state) pair of "
                    f"nnx.split, got {type(model).__name__}")


def generate(
    model: Policy,
    adapter: ModelAdapter,
    prompts: PromptBatch,
    params: SamplingParams,
    key: jax.Array,
    plan: DecodePlan = DEFAULT_PLAN,
) -> Rollout:
    """Samples `params.num_generations` completions per prompt.

    Args:
      model: the policy: a Flax NNX module (split on every call, so its latest weights are
        used), or the `(graphdef, state)` pair of `nnx.split` (`split_policy`), which skips the
        split. Its arrays may be sharded: nothing here places data on devices.
      adapter: the model contract (see `ModelAdapter`).
      prompts: a left-padded bucketed `PromptBatch` of B prompts: host arrays (one process),
        or global arrays sharded on their batch dim (`rl.placement.Placement.put`), which a
        multi-process run requires (a host-local input fails here, `check_global`).
      params: sampling settings.
      key: PRNG key; the same key, prompts and weights reproduce the same rollout, whatever the
        `plan` (row r's draws depend on the key, r and the step only: `rl.decode`).
      plan: the decode program's static structure (segments, compaction buckets). With the
        rows split over devices (data parallelism) compaction is off (`unit_buckets` 1).
    Returns:
      A `Rollout` with B * num_generations rows (laid out like the prompts under the activation
      sharding rules, `rl.placement.Placement.context`).
    """
    check_global({f.name: getattr(prompts, f.name) for f in dataclasses.fields(prompts)},
                 "sampler.generate")
    # Nothing here waits for the device (a host sync per call would stall a caller that
    # dispatches ahead): host prompts are checked and their deltas derived in numpy.
    ids = _on_device(prompts.input_ids, jnp.int32)
    mask = _on_device(prompts.attention_mask, bool)
    pos = _on_device(prompts.positions, jnp.int32)
    _check_prompts(ids, mask, pos)
    derived = _host_deltas(prompts)
    if prompts.rope_deltas is None:
        deltas = rope_deltas_from_positions(pos, mask) if derived is None else derived
    else:
        _check_deltas(prompts.rope_deltas, derived)
        deltas = prompts.rope_deltas
    deltas = _on_device(deltas, jnp.int32).reshape(-1)
    graphdef, state = split_policy(model)
    g, t = params.num_generations, params.max_new_tokens
    # Host scalars (numpy): traced by the jit without a device dispatch each.
    knobs = (np.float32(params.temperature), np.int32(params.top_k), np.float32(params.top_p))
    # A fixed-size stop array (-1 never matches) keeps the stop set out of the compile key.
    if len(params.stop_ids) > MAX_STOP_IDS:
        raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {len(params.stop_ids)}")
    stop = np.full((MAX_STOP_IDS,), -1, np.int32)
    stop[: len(params.stop_ids)] = params.stop_ids
    if plan.unit_buckets > 1 and _rows_split(ids):
        # Compaction gathers live prompts from every shard: under data parallelism XLA turns
        # that into an all-reduce of the whole compacted decode state on every device. Rows stay
        # on their shards instead (segments only); shard-local compaction is not built.
        plan = dataclasses.replace(plan, unit_buckets=1)
    out = _rollout(adapter, graphdef, state, ids, pos, mask, deltas, prompts.vision, key, knobs,
                   stop, g, t, params.pad_id, params.sampling_class, plan,
                   tuple(sorted(set(params.forbidden_ids))))
    return Rollout(*out)


def _rows_split(ids: jax.Array) -> bool:
    """Whether the prompt rows are split over devices: a batch-sharded input, or activation
    sharding rules (`Placement.context`) that shard the `batch` axis of these B rows."""
    # Traced (`generate` inside an outer jit, as `benchmarks/real_shapes.py` compiles it) the
    # input's sharding is not known here; the activation rules below still are.
    if not isinstance(ids, jax.core.Tracer) and (
            ids.sharding.shard_shape(ids.shape)[0] < ids.shape[0]):
        return True
    rules, mesh = flax_spmd.get_logical_axis_rules(), jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return False
    return logical_to_spec(("batch",), dict(rules), ids.shape[:1], mesh)[0] is not None


def _on_device(x: Any, dtype: Any) -> jax.Array:
    """A global array as it is (only cast); a host array (single process) to the device."""
    if isinstance(x, jax.Array):
        return x if x.dtype == dtype else x.astype(dtype)
    return jnp.asarray(x, dtype)


def _host_deltas(prompts: PromptBatch) -> np.ndarray | None:
    """The deltas of host-side prompts, derived in numpy; None for device-side prompts."""
    if not (isinstance(prompts.positions, np.ndarray)
            and isinstance(prompts.attention_mask, np.ndarray)):
        return None
    return rope_deltas_from_positions(prompts.positions.astype(np.int32),
                                      prompts.attention_mask.astype(bool))


def _check_deltas(given: Any, derived: np.ndarray | None) -> None:
    """Host-side deltas and prompts only (no device sync): given deltas must match the positions,
    else the prompts were re-padded after `get_rope_index` and decoding would continue at wrong
    positions."""
    if derived is None or not isinstance(given, np.ndarray):
        return
    given = given.reshape(-1)
    if given.shape != derived.shape or np.any(given != derived):
        raise ValueError(
            f"rope_deltas {given.tolist()} do not match the prompt positions (max valid position "
            f"+ 1 - L = {derived.tolist()}); were the prompts re-padded after get_rope_index? "
            "Pass rope_deltas=None to derive them."
        )


def _check_prompts(ids: jax.Array, mask: jax.Array, pos: jax.Array) -> None:
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"input_ids {ids.shape} and attention_mask {mask.shape} must both be (B, L)"
        )
    if pos.shape != (3, *ids.shape):
        raise ValueError(f"positions {pos.shape} must be (3, B, L) = (3, {ids.shape[0]}, "
                         f"{ids.shape[1]})")


# ---------------------------------------------------------------------------------------------
# Host-side bucketing
# ---------------------------------------------------------------------------------------------


def left_pad(
    ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pads (B, l) ids/mask and (3, B, l) positions to `length` columns (pads: id `pad_id`,
    mask False, position 0); returns numpy arrays (ids int32, mask bool, positions int32)."""
    b, cur = ids.shape
    if cur > length:
        raise ValueError(f"prompt length {cur} is longer than the bucket {length}")
    extra = length - cur
    ids_p = np.concatenate([np.full((b, extra), pad_id, np.int32), ids.astype(np.int32)], 1)
    mask_p = np.concatenate([np.zeros((b, extra), bool), mask.astype(bool)], 1)
    pos_p = np.concatenate([np.zeros((3, b, extra), np.int32), positions.astype(np.int32)], 2)
    return ids_p, mask_p, pos_p
