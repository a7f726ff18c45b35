"""Rewards of a sharded batch: each process scores its own rows, every process gets all scores.

    scores = score(reward_fn, records, texts, place, n, g)   # {component: (n*g,) float32}

`records` / `texts` are this process's rows (its `place.rows(n)` prompts, G completions each).

* The built-in RewardMap reward (`rewards.registry.RewardMapReward`: host parsing, then the
  jitted device reward) parses each data shard's rows separately (every process parses only its
  own), pads the shards' arrays to common widths agreed by all processes, places them as global
  arrays sharded like the batch, and runs the device reward per shard (`jax.shard_map`): a
  shard's rows index only its own ground-truth tables, so nothing crosses devices.
* Any other reward function (a user's `file.py:fn`) runs on the host over this process's rows.

Either way the (small) score arrays of every row are then gathered to every process
(`Placement.gather_rows`), so group advantages and metrics are computed identically everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from rewardmap_jax.mapworld.records import Record
from rewardmap_jax.rewards import parse as parse_lib
from rewardmap_jax.rewards.tables import PAD_ID
from rewardmap_jax.rl.placement import Placement


def score(reward_fn: Any, records: Sequence[Record], texts: Sequence[str],
          place: Placement | None, n: int, g: int) -> dict[str, np.ndarray]:
    """Reward components of every row of an `n`-prompt batch (G = `g` rows each)."""
    inner = getattr(reward_fn, "inner", None)
    if place is None or not (hasattr(inner, "parse") and hasattr(inner, "device")):
        local = reward_fn(records, texts)
        return local if place is None else place.gather_rows(local, n)
    return place.gather_rows(_device_scores(inner, records, texts, place, n, g), n)


def _shard_slices(place: Placement, n: int, g: int, local_rows: int) -> list[slice]:
    """This process's completion rows cut per data shard (one slice when replicated)."""
    if not place.shards(n):
        return [slice(0, local_rows)]
    per = n // place.dp * g
    return [slice(i, i + per) for i in range(0, local_rows, per)]


def _device_scores(inner: Any, records: Sequence[Record], texts: Sequence[str],
                   place: Placement, n: int, g: int) -> dict[str, np.ndarray]:
    parts = [inner.parse(records[s], texts[s])
             for s in _shard_slices(place, n, g, len(texts))]
    groups = n // place.dp if place.shards(n) else n  # prompts per shard
    dims = place.agree_max({
        "records": max(len(p["type_id"]) for p in parts),
        "lines": max(p["member"].shape[1] for p in parts),
        "stations": max(p["member"].shape[2] for p in parts)})
    # A multiple of the shard's prompts, so the tables place like any per-prompt array.
    r = -(-dims["records"] // groups) * groups
    arrays = {k: np.concatenate([_pad_tables(p, r, dims["lines"], dims["stations"])[k]
                                 for p in parts]) for k in parts[0]}
    dev = place.put(arrays, n)
    if not place.shards(n):
        out = inner.device(dev)
    else:
        spec = PartitionSpec(place.axes)
        out = jax.shard_map(inner.device, mesh=place.mesh, in_specs=(spec,), out_specs=spec)(dev)
    return {k: place.local(v, n) for k, v in out.items()}


def _pad_tables(arrays: dict[str, np.ndarray], records: int, lines: int, stations: int
                ) -> dict[str, np.ndarray]:
    """`parse_batch` arrays with the ground-truth tables padded to `records` rows, `lines` x
    `stations` (pads as `parse_batch` writes them: PAD_ID ids, False flags)."""
    out = dict(arrays)
    for k in parse_lib.TABLE_KEYS:
        x = arrays[k]
        if k == "member":
            widths = ((0, records - x.shape[0]), (0, lines - x.shape[1]),
                      (0, stations - x.shape[2]))
        elif k == "between":
            widths = ((0, records - x.shape[0]), (0, stations - x.shape[1]))
        else:
            widths = ((0, records - x.shape[0]),)
        out[k] = np.pad(x, widths, constant_values=False if x.dtype == bool else PAD_ID)
    return out
