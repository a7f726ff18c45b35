"""Host rows <-> global arrays: the one place where batches enter (and leave) the mesh.

Every array a jitted function of training or evaluation receives (sampler, log-prob passes,
updates, reward) is a global `jax.Array` sharded on its batch dimension over the data-parallel
mesh axes (the `batch` rule of `cfg.mesh.rules`, default `("data", "fsdp")`), assembled from
each process's own rows with `jax.make_array_from_process_local_data`:

    place = Placement(mesh, rules)
    rows = place.rows(B)                         # global rows this process reads and decodes
    dev = place.put(local_tree, B)               # local rows -> global arrays (batch dim 0)
    dev = place.put(prompts, B, PROMPT_BATCH_DIMS)   # positions (3, B, L): batch dim 1
    mine = place.local(out.tokens)               # this process's rows of a global array
    full = place.gather_rows(local_scores, B)    # every row, on every process (small arrays)

A batch of `n` rows is sharded when `n` is divisible by the data-parallel size `dp`, else
replicated (each process then reads all `n` rows: correct, but every device does all the work;
the trainer refuses that for its update batches). The rows of a process are the union of the
slices its devices hold, so any mesh layout works (a process's rows need not be contiguous,
and processes whose devices hold the same shards read the same rows).

Group rule: a prompt's G completions are rows `b*G .. b*G+G-1` of an `n*G`-row array sharded
exactly like its `n` prompts, so the whole group lives on the shard that holds the prompt.

Guard: in a multi-process run a host-local value (numpy, or an array on local devices only)
handed to a jitted step would be taken as the whole global batch, silently mixing the hosts'
rows; `check_global` refuses it, naming the function.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rewardmap_jax.model.layers import activation_sharding
from rewardmap_jax.model.sharding import BATCH_AXES

log = logging.getLogger(__name__)
# Batch dim of keys whose batch axis is not the first (M-RoPE positions are (3, B, L)).
PROMPT_BATCH_DIMS = {"positions": 1}


class HostLocalInputError(ValueError):
    """A host-local array would enter a jitted step of a multi-process run as a global one."""


def _batch_axes(rules: Mapping[str, Any] | None) -> tuple[str, ...]:
    axes = (rules or {}).get("batch", BATCH_AXES)
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


class Placement:
    """Batch layout on `mesh` (rows over the `batch` rule's axes) and the host transfers.

    Every method takes `n`, the number of *groups* (prompts) of the batch, which decides the
    layout: a leaf whose batch dim holds `k` rows per group (k = 1 for prompt arrays, G for
    completion rows) is sharded exactly like the `n` prompts, so groups never straddle shards.
    """

    def __init__(self, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> None:
        self.mesh = mesh
        self.rules = dict(rules or {})
        self.axes = tuple(a for a in _batch_axes(rules) if mesh.shape[a] > 1)
        self.dp = math.prod(mesh.shape[a] for a in self.axes)
        self._rows: dict[int, np.ndarray] = {}

    # -- layout ---------------------------------------------------------------------------------

    def warn_unsharded(self, sizes: Mapping[str, int]) -> None:
        """Logs each named prompt count that the data-parallel size does not divide: such a
        batch runs replicated (correct, but every device computes all of it)."""
        for key, n in sizes.items():
            if self.dp > 1 and not self.shards(n):
                log.warning("%s = %d is not divisible by the data-parallel size %d (mesh axes "
                            "%s): that batch runs replicated on every device", key, n, self.dp,
                            self.axes)

    def shards(self, n: int) -> bool:
        """Whether a batch of `n` groups is split over the data-parallel axes (else replicated)."""
        return self.dp > 1 and n % self.dp == 0

    def spec(self, n: int, ndim: int, batch_dim: int = 0) -> PartitionSpec:
        spec: list[Any] = [None] * ndim
        if self.shards(n):
            spec[batch_dim] = self.axes[0] if len(self.axes) == 1 else self.axes
        return PartitionSpec(*spec)

    def sharding(self, n: int, ndim: int, batch_dim: int = 0) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(n, ndim, batch_dim))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def rows(self, n: int) -> np.ndarray:
        """Sorted global indices of the groups of an `n`-group batch held by this process's
        devices: the rows this process must read, decode and supply."""
        if n not in self._rows:
            index = self.sharding(n, 1).addressable_devices_indices_map((n,))
            self._rows[n] = np.array(
                sorted({i for s in index.values() for i in range(*s[0].indices(n))}), np.int64)
        return self._rows[n]

    def shardings(self, tree: Any, n: int, batch_dims: Mapping[str, int] | None = None) -> Any:
        """NamedSharding per leaf of a batch pytree of `n` groups (jit in/out_shardings)."""
        dims = batch_dims or {}
        return _map_with_key(lambda key, x: self.sharding(n, np.ndim(x), dims.get(key, 0)), tree)

    # -- host -> device -------------------------------------------------------------------------

    def put(self, tree: Any, n: int, batch_dims: Mapping[str, int] | None = None) -> Any:
        """Global arrays of an `n`-group batch from this process's groups (`rows(n)`, in order).

        Leaves are host arrays whose batch dim holds k rows per local group (k >= 1, e.g. G
        completions each); top-level keys listed in `batch_dims` have their batch on that dim
        (default 0). The global batch dim is k * n.
        """
        dims = batch_dims or {}
        local = len(self.rows(n))

        def one(key: str, x: Any) -> jax.Array:
            x = np.asarray(x)
            d = dims.get(key, 0)
            if x.ndim <= d or x.shape[d] % local:
                raise ValueError(f"placing {key or 'batch'!r} {x.shape}: dim {d} must hold a "
                                 f"multiple of this process's {local} groups (of {n})")
            shape = x.shape[:d] + (x.shape[d] // local * n,) + x.shape[d + 1:]
            return jax.make_array_from_process_local_data(self.sharding(n, x.ndim, d), x, shape)

        return _map_with_key(one, tree)

    # -- device -> host -------------------------------------------------------------------------

    def local(self, x: jax.Array, n: int, batch_dim: int = 0) -> np.ndarray:
        """This process's rows (its groups `rows(n)`, in order) of a global array, as numpy."""
        want = self.sharding(n, x.ndim, batch_dim)
        if not x.sharding.is_equivalent_to(want, x.ndim):
            x = jax.jit(lambda a: a, out_shardings=want)(x)
        blocks: dict[int, Any] = {}
        for s in x.addressable_shards:
            blocks.setdefault(s.index[batch_dim].start or 0, s.data)
        return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)], axis=batch_dim)

    def gather_rows(self, tree: Any, n: int) -> Any:
        """Every row of an `n`-group batch on every process, from this process's rows of each
        leaf (k rows per local group, batch dim 0): small host arrays such as scores."""
        rows = self.rows(n)
        if len(rows) == n:
            return jax.tree.map(np.asarray, tree)
        from jax.experimental import multihost_utils

        all_rows, leaves = multihost_utils.process_allgather(
            (rows, jax.tree.map(np.asarray, tree)))
        all_rows = np.asarray(all_rows).reshape(-1)

        def scatter(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            k = x.shape[1] // len(rows)
            out = np.empty((n * k, *x.shape[2:]), x.dtype)
            out[(all_rows[:, None] * k + np.arange(k)).reshape(-1)] = x.reshape(
                -1, *x.shape[2:])
            return out

        return jax.tree.map(scatter, leaves)

    def agree_max(self, values: Mapping[str, int]) -> dict[str, int]:
        """Each value's maximum over all processes (a collective: call in lockstep); how the
        processes agree on bucket shapes that their own rows alone would choose differently."""
        keys = sorted(values)
        mine = np.array([int(values[k]) for k in keys], np.int64)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            mine = np.asarray(multihost_utils.process_allgather(mine)).max(axis=0)
        return {k: int(v) for k, v in zip(keys, mine, strict=True)}

    # -- jit boundary ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Activation sharding rules in force (trace and call jitted steps inside it)."""
        with activation_sharding(self.mesh, self.rules):
            yield


def check_global(tree: Any, where: str) -> None:
    """In a multi-process run, every leaf of `tree` must be a global `jax.Array` (one that
    spans other processes' devices); raises `HostLocalInputError` naming `where` otherwise."""
    if jax.process_count() == 1:
        return
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            continue
        what = (f"a {type(x).__name__}" if not isinstance(x, jax.Array)
                else "an array on this process's devices only")
        raise HostLocalInputError(
            f"{where}: input {jax.tree_util.keystr(path) or '(root)'} is {what}; in a "
            f"{jax.process_count()}-process run it would be taken as the whole global batch and "
            "the hosts' rows mixed. Build batch inputs with rl.placement.Placement.put (each "
            "process's own rows -> jax.make_array_from_process_local_data).")


def _map_with_key(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """`jax.tree.map` that passes each leaf's top-level dict key ('' below non-dicts)."""
    if isinstance(tree, dict):
        return {k: jax.tree.map(lambda x, k=k: fn(k, x), v) for k, v in tree.items()}
    return jax.tree.map(lambda x: fn("", x), tree)
