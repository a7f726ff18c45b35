"""Multi-host setup and per-host batch assembly.

Every process runs the same program (SPMD). `initialize_distributed` must run before any other
JAX call touches devices. Each host loads only its own rows of the global batch (the data
pipeline's `rows`), which `rl.placement.Placement` stitches into global arrays sharded over the
mesh's batch axes. Only process 0 logs (`is_main_process`); every process takes part in
collectives and checkpointing.

Config (`cfg.mesh`): `dist_mode` "auto" (initialize when a cluster environment is detected:
SLURM with several tasks, Open MPI, a TPU pod, or JAX_COORDINATOR_ADDRESS), "off", or "explicit"
(use `coordinator_address`, `num_processes`, `process_id`); `cpu_collectives` for CPU runs
("gloo").

"auto" with JAX_COORDINATOR_ADDRESS: JAX itself reads only the address from the environment, so
the process count and id come from JAX_NUM_PROCESSES / JAX_PROCESS_ID (what `launch/local.sh`
sets), else from a detected cluster (SLURM, Open MPI, TPU); with neither, a clear error names the
missing variables instead of JAX's failure deep inside `initialize`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

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
    if mode == "auto" and os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = _coordinator_env()
    elif mode == "explicit":
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


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _coordinator_env() -> dict[str, Any]:
    """initialize() arguments for a JAX_COORDINATOR_ADDRESS launch: the address, plus the process
    count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID, or left to a detected cluster."""
    addr = os.environ["JAX_COORDINATOR_ADDRESS"]
    n, pid = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    if n is not None and pid is not None:
        if n <= 0 or not 0 <= pid < n:
            raise ValueError(f"JAX_NUM_PROCESSES={n}, JAX_PROCESS_ID={pid}: need "
                             "0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES")
        return {"coordinator_address": addr, "num_processes": n, "process_id": pid}
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or any(
            os.environ.get(k) for k in _CLUSTER_ENV if k != "JAX_COORDINATOR_ADDRESS"):
        return {"coordinator_address": addr}  # count and id from the cluster environment
    raise ValueError(
        f"JAX_COORDINATOR_ADDRESS={addr} is set but not JAX_NUM_PROCESSES and JAX_PROCESS_ID, "
        "and no cluster environment (SLURM, Open MPI, TPU) provides them: set both (as "
        "launch/local.sh does), or unset JAX_COORDINATOR_ADDRESS for a single-process run")


def is_main_process() -> bool:
    """True on process 0 only: the one that writes logs, metrics and progress bars."""
    return jax.process_index() == 0


def to_host(tree: Any) -> Any:
    """Fully gathered numpy copy of a (possibly multi-host sharded) pytree, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)
