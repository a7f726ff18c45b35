"""One process of the multi-host GRPO test (launched by test_multihost.py).

    python -m tests.rl.multihost_worker --num_processes 2 --process_id 0 --port 12345 \
        --local_devices 2 --steps 3 --out /tmp/params.npz

Builds a (data=1, fsdp=2, tensor=2) mesh over all processes' devices, runs `--steps` GRPO steps
of the toy model with each process feeding only its own rows, and process 0 writes the
gathered params to `--out`.
"""

from __future__ import annotations

import argparse

import jax


def join(args) -> None:
    """Joins the process group with generous coordination timeouts: on a loaded 2-core machine
    a process busy compiling can miss JAX's default 100 s heartbeat deadline (which aborts the
    run). `initialize_distributed` then sees the group already joined."""
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes,
                                   args.process_id, heartbeat_timeout_seconds=1800,
                                   initialization_timeout=1800)


def set_mesh(m, args, shape):
    """`cfg.mesh` with `shape` (data, fsdp, tensor) and this worker's process group (gloo on
    127.0.0.1:`args.port`; a lone process runs without one)."""
    m.data, m.fsdp, m.tensor = shape
    if args.num_processes > 1:
        m.dist_mode = "explicit"
        m.coordinator_address = f"127.0.0.1:{args.port}"
        m.num_processes, m.process_id = args.num_processes, args.process_id
    else:
        m.dist_mode = "off"
    return m


def process_parser() -> argparse.ArgumentParser:
    """The flags every multi-host worker takes: its place in the process group."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--local_devices", type=int, required=True)
    return ap


def main() -> None:
    ap = process_parser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_default_matmul_precision", "highest")

    import numpy as np
    from flax import nnx

    from configs.curriculum import get_config
    from rewardmap_jax.model import sharding as sh
    from rewardmap_jax.rl import grpo, optim
    from rewardmap_jax.rl.placement import Placement
    from rewardmap_jax.run import distributed as dist
    from tests.rl.toy_model import ToyLM
    from tests.rl.toy_step import make_batch, make_step

    cfg = get_config()
    m = set_mesh(cfg.mesh, args, (1, 2, 2))
    join(args)
    dist.initialize_distributed(m)
    assert jax.process_count() == args.num_processes and jax.device_count() == 4

    rules = sh.rules_from_config(m)
    mesh = sh.make_mesh(m)
    place = Placement(mesh, rules)
    cfg.optim.lr = 1e-2
    tx = optim.make_optimizer(cfg.optim)
    loss_cfg = grpo.GRPOLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.01, entropy_coef=1e-3)
    model = sh.create_sharded_model(lambda: ToyLM(), mesh, rules)
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)
    init = dist.to_host(nnx.to_pure_dict(params))
    step = make_step(graphdef, tx, loss_cfg)
    for i in range(args.steps):
        full = make_batch(i)
        n = full["ids"].shape[0]
        batch = place.put({k: v[place.rows(n)] for k, v in full.items()}, n)
        params, opt_state, loss, _ = step(params, opt_state, batch)
    host = dist.to_host(nnx.to_pure_dict(params))
    moved = max(float(np.max(np.abs(a - b)))
                for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(init), strict=True))
    if dist.is_main_process():
        flat = {"/".join(map(str, k)): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(host)[0]}
        flat["loss"] = np.asarray(float(loss))
        flat["moved"] = np.asarray(moved)
        np.savez(args.out, **flat)


if __name__ == "__main__":
    main()
