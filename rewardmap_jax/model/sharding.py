"""Device mesh and logical-axis sharding for NNX state pytrees.

Mesh axes are `("data", "fsdp", "tensor")` (`MESH_AXES`). Parameters carry logical axis names in
their `out_sharding` metadata (one name or None per dim, see model/layers.py); a rule table from
the config (`cfg.mesh.rules`: `(logical, mesh axis | tuple of axes | None)` pairs) maps them to
mesh axes. Rules are applied per dimension with two safety valves, so one table serves every model
size and mesh: a dimension whose size is not divisible by its mesh axes stays replicated, and a
mesh axis already used by an earlier dimension of the same array is not used again.

Optimizer states built by optax over an `nnx.State` hold `nnx.Variable`s with the same metadata,
so `state_shardings` shards Adam moments like their params; plain arrays (step counts) are
replicated. Batches are sharded over `("data", "fsdp")` (the `batch` rule) on their batch dim by
`rl.placement.Placement`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Metadata keys holding logical axis names across flax versions (0.12: out_sharding).
_NAME_KEYS = ("out_sharding", "sharding_names", "sharding")

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]


# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Resolves `(data, fsdp, tensor)` sizes; at most one may be -1 (= the remaining devices)."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes, strict=True))
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {named}: use positive ints, at most one -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {named}: {num_devices} devices not divisible by {fixed}"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {named} needs {math.prod(sizes)} devices, "
            f"have {num_devices}"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes `MESH_AXES` over `devices` (default: all global devices).

    `mesh_cfg` is `cfg.mesh` (keys data, fsdp, tensor) or any mapping with those keys. With the
    default devices, `jax.make_mesh` picks a topology-aware order (ICI/DCN) on TPU/GPU.
    """
    devs = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_cfg, len(devs))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devs).reshape(shape), MESH_AXES, axis_types=auto)


# --------------------------------------------------------------------------------------------
# Logical axes -> PartitionSpec
# --------------------------------------------------------------------------------------------


def rules_from_config(mesh_cfg: Any) -> dict[str, MeshAxes]:
    """`cfg.mesh.rules` (sequence of pairs) as a dict, checking mesh axis names."""
    out: dict[str, MeshAxes] = {}
    for item in mesh_cfg["rules"]:
        if len(item) != 2:
            raise ValueError(f"mesh rule {item!r} must be a (logical, mesh_axes) pair")
        name, axes = item
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for a in (axes if isinstance(axes, tuple) else (axes,)):
            if a is not None and a not in MESH_AXES:
                raise ValueError(f"mesh rule {name!r} -> {axes!r}: unknown mesh axis {a!r}")
        out[name] = axes
    return out


def logical_to_spec(
    names: Sequence[str | None],
    rules: Rules,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    where: str = "",
) -> PartitionSpec:
    """PartitionSpec for an array whose dims have logical `names`.

    With `shape` and `mesh`, a dim not divisible by the product of its mesh axis sizes is
    replicated; a mesh axis is used at most once per array.
    """
    if shape is not None and len(names) != len(shape):
        raise ValueError(f"{where}: logical axes {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(
                f"{where}: no sharding rule for logical axis {name!r}; add it to cfg.mesh.rules "
                f"(known: {sorted(rules)})"
            )
        axes = rules[name]
        axes_t = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        axes_t = tuple(a for a in axes_t if a not in used)
        if mesh is not None:
            axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1)
            if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in axes_t):
                axes_t = ()
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def _logical_names(v: nnx.Variable) -> tuple | None:
    meta = v.get_metadata()
    for k in _NAME_KEYS:
        names = meta.get(k)
        if names and all(n is None or isinstance(n, str) for n in names):
            return tuple(names)
    return None


def path_str(path: tuple) -> str:
    """'/'-joined key path of a pytree leaf (e.g. 'visual/blocks/0/attn/qkv/kernel')."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_specs(
    state: Any,
    rules: Rules,
    mesh: Mesh | None = None,
    path_rules: Iterable[tuple[str, Sequence[str | None]]] = (),
) -> Any:
    """PartitionSpec pytree mirroring `state` (Variables are kept, their value replaced).

    Logical names come from each Variable's metadata, else from the first `path_rules` regex
    (re.search on the '/'-joined path) that matches, else the leaf is replicated. Works on
    concrete and abstract (`jax.ShapeDtypeStruct`) states, params and optimizer states alike.
    """
    compiled = [(re.compile(p), tuple(n)) for p, n in path_rules]

    def leaf(path: tuple, x: Any) -> Any:
        value = x.get_value() if _is_var(x) else x
        shape = getattr(value, "shape", None)
        if shape is None:
            return x.replace(None) if _is_var(x) else None
        where = path_str(path)
        names = _logical_names(x) if _is_var(x) else None
        if names is None:
            names = next((n for p, n in compiled if p.search(where)), None)
        spec = (
            PartitionSpec()
            if names is None
            else logical_to_spec(names, rules, shape, mesh, where=where)
        )
        return x.replace(spec) if _is_var(x) else spec

    return jax.tree_util.tree_map_with_path(leaf, state, is_leaf=_is_var)


def state_shardings(
    state: Any,
    mesh: Mesh,
    rules: Rules,
    path_rules: Iterable[tuple[str, Sequence[str | None]]] = (),
) -> Any:
    """NamedSharding pytree for `state` on `mesh` (usable as jit in/out_shardings, device_put)."""
    specs = state_specs(state, rules, mesh, path_rules)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard_state(state: Any, shardings: Any) -> Any:
    """Places a (host or device) state pytree on the mesh."""
    return jax.device_put(state, shardings)


def create_sharded_model(
    make_model: Callable[[], nnx.Module],
    mesh: Mesh,
    rules: Rules,
    path_rules: Iterable[tuple[str, Sequence[str | None]]] = (),
) -> nnx.Module:
    """Builds `make_model()` directly sharded: each device materialises only its shards.

    `make_model` must be deterministic (it is traced abstractly once, then run under jit).
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules, path_rules)

    @jax.jit
    def init() -> Any:
        return jax.lax.with_sharding_constraint(nnx.split(make_model())[1], shardings)

    return nnx.merge(graphdef, init())


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def with_logical_constraint(
    x: jax.Array, names: Sequence[str | None], mesh: Mesh, rules: Rules
) -> jax.Array:
    """`with_sharding_constraint` on an activation by logical names (inside jit)."""
    spec = logical_to_spec(names, rules, x.shape, mesh, where="activation")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def per_device_bytes(tree: Any, device: jax.Device | None = None) -> int:
    """Bytes of `tree`'s arrays resident on `device` (default: the first local device)."""
    device = device or jax.local_devices()[0]
    total = 0
    for x in jax.tree.leaves(tree):
        for s in x.addressable_shards:
            if s.device == device:
                total += s.data.nbytes
    return total
