"""Multi-host setup and per-host batch assembly.

Every process runs the same program (SPMD). `initialize_distributed` must run before any other
JAX call touches devices. Each host loads only its own rows of the global batch (Grain
`ShardByJaxProcess`, or `process_rows`) and `global_batch` stitches them into global arrays
sharded over the mesh's batch axes. Only process 0 logs (`is_main_process`); every process takes
part in collectives and checkpointing.

Config (`cfg.mesh`): `dist_mode` "auto" (initialize when a cluster environment is detected:
SLURM with several tasks, Open MPI, a TPU pod, or JAX_COORDINATOR_ADDRESS), "off", or "explicit"
(use `coordinator_address`, `num_processes`, `process_id`); `cpu_collectives` for CPU runs
("gloo").
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from rewardmap_jax.model.sharding import BATCH_AXES, batch_spec

_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _cluster_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        return True
    return any(os.environ.get(k) for k in _CLUSTER_ENV if k != "TPU_WORKER_HOSTNAMES")


def initialize_distributed(mesh_cfg: Any) -> bool:
    """Calls `jax.distributed.initialize` as `cfg.mesh` asks; returns True if it did.

    Keys (all optional): dist_mode ("auto" | "off" | "explicit"), coordinator_address
    ("host:port"), num_processes, process_id, local_device_ids (tuple or empty),
    cpu_collectives ("gloo" | "mpi" | "" to leave JAX's default).
    """
    get = mesh_cfg.get if hasattr(mesh_cfg, "get") else lambda k, d=None: d
    mode = get("dist_mode", "auto")
    if mode not in ("auto", "off", "explicit"):
        raise ValueError(f"mesh.dist_mode must be auto | off | explicit, got {mode!r}")
    if mode == "off" or (mode == "auto" and not _cluster_detected()):
        return False
    if jax.distributed.is_initialized():
        return True
    coll = get("cpu_collectives", "gloo")
    if coll:
        jax.config.update("jax_cpu_collectives_implementation", coll)
    kwargs: dict[str, Any] = {}
    if mode == "explicit":
        addr = get("coordinator_address", "")
        n, pid = int(get("num_processes", 0)), int(get("process_id", -1))
        if not addr or n <= 0 or not 0 <= pid < n:
            raise ValueError(
                "mesh.dist_mode='explicit' needs coordinator_address ('host:port'), "
                f"num_processes > 0 and 0 <= process_id < num_processes; got {addr!r}, {n}, {pid}"
            )
        kwargs = {"coordinator_address": addr, "num_processes": n, "process_id": pid}
        ids = get("local_device_ids", ())
        if ids:
            kwargs["local_device_ids"] = list(ids)
    jax.distributed.initialize(**kwargs)
    return True


def is_main_process() -> bool:
    """True on process 0 only: the one that writes logs, metrics and progress bars."""
    return jax.process_index() == 0


def process_rows(global_rows: int) -> slice:
    """This process's contiguous rows of a global batch (equal split, in process order)."""
    n = jax.process_count()
    if global_rows % n:
        raise ValueError(f"global batch {global_rows} not divisible by {n} processes")
    per = global_rows // n
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(local: Any, mesh: Mesh, rules: Any = None) -> Any:
    """Global arrays sharded over the batch axes from each process's local rows.

    Args:
      local: pytree of host arrays `(B_local, ...)`, this process's rows (in process order,
        e.g. `full[process_rows(B)]`).
      mesh: the global mesh; its batch axes' devices must be laid out so that each process's
        devices hold a contiguous block of rows (true for `make_mesh` meshes).
    Returns:
      pytree of `jax.Array` `(B_local * process_count, ...)`.
    """
    n_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)

    def one(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        if global_shape[0] % n_shards:
            raise ValueError(
                f"global batch {global_shape[0]} not divisible by data*fsdp = {n_shards}"
            )
        sharding = NamedSharding(mesh, batch_spec(x.ndim, rules))
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local)


def to_host(tree: Any) -> Any:
    """Fully gathered numpy copy of a (possibly multi-host sharded) pytree, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)
