"""One process of the multi-host trainer test (launched by test_multihost.py).

    python -m tests.rl.multihost_trainer_worker --num_processes 2 --process_id 0 --port 12345 \
        --local_devices 4 --workdir /tmp/w --out /tmp/out [--resume_from /tmp/w2]

Runs the real trainer (tiny model, map-world images, 3 GRPO steps, mesh data=2 x fsdp=2 x
tensor=2 over all processes' devices) and writes to `--out`:

* `elements_<pid>.json`: the global plan elements this process's pipeline processed (read,
  rendered, resized, tokenized) during training, and its rows of each global batch;
* `params.npz` (process 0): the final params, gathered;
* `mixing_<pid>.json` (2 processes): the two-host mixing check on the trainer's log-prob step -
  the guard's error on host-local inputs, the old path (host arrays into jit with FSDP-sharded
  params) against each host's own rows, and the placed path against them.

`--resume_from DIR`: copy DIR's run (2 processes), drop its last checkpoint, and resume it here.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax


def _config(args):
    from tests.rl.multihost_worker import set_mesh
    from tests.rl.small_config import get_config

    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 3
    c.data.batch_size = 8
    c.rl.mini_batch_size = 8
    c.curriculum.stages = ({"name": "small", "steps": 8,
                            "weights": {"TorF1": 1.0, "TorF2": 1.0, "Counting3": 1.0}},)
    c.checkpoint.keep = 5
    set_mesh(c.mesh, args, (2, 2, 2))
    return c


def _mixing_check(t, out: Path) -> None:
    """The trainer's log-prob step on each host's own rows: placed vs host-local inputs."""
    import numpy as np
    from jax.experimental import multihost_utils

    from rewardmap_jax.rl import rollout as ro
    from rewardmap_jax.rl import steps
    from rewardmap_jax.rl.placement import HostLocalInputError

    n, g = t.rl_data.batch_size, t.g
    batch, prompts = t._prompts(next(t.rl_data.iterator()))
    rows = t.place.rows(n)
    # completions: a function of the global row (the hosts hold different rows)
    comp = np.stack([np.random.default_rng(int(r)).integers(5, 200, 6)
                     for r in rows for _ in range(g)]).astype(np.int32)
    mask = np.ones(comp.shape, bool)
    # Reference: each host's own rows, on one local device, with the params on the host.
    host_params = jax.tree.map(np.asarray, multihost_utils.process_allgather(
        t.params, tiled=True))
    local_fn = steps.make_logprob_fn(t.graphdef, g, chunk=int(t.config.rl.logprob_chunk))
    dev0 = jax.local_devices()[0]
    want = np.asarray(local_fn(jax.device_put(host_params, dev0), jax.device_put(
        ro.seq_batch(prompts, comp, mask), dev0)))
    report = {"process": jax.process_index()}
    # 1. The guard: host-local arrays into the trainer's step fail at once, naming it.
    try:
        t.logp_fn(t.params, ro.seq_batch(prompts, comp, mask))
        report["guard"] = None
    except HostLocalInputError as e:
        report["guard"] = str(e)
    # 2. The old path (ce80e12): host arrays into jit next to FSDP-sharded params.
    old = local_fn(t.params, ro.seq_batch(prompts, comp, mask))
    old = np.asarray(old.addressable_data(0))
    report["old_max_err"] = float(np.max(np.abs(old - want)))
    # 3. The placed path: global arrays from each host's rows.
    new = t.place.local(t.logp_fn(t.params, ro.seq_batch(prompts, comp, mask, t.place, n)), n)
    report["new_max_err"] = float(np.max(np.abs(new - want)))
    report["rows"] = [int(r) for r in rows]
    (out / f"mixing_{jax.process_index()}.json").write_text(json.dumps(report))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--local_devices", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume_from", default="")
    args = ap.parse_args()

    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_default_matmul_precision", "highest")

    import numpy as np
    from flax import nnx

    from rewardmap_jax.data import pipeline
    from rewardmap_jax.rl import trainer
    from rewardmap_jax.run import distributed as dist

    c = _config(args)
    dist.initialize_distributed(c.mesh)
    assert jax.process_count() == args.num_processes and jax.device_count() == 8
    out, workdir = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume_from:
        shutil.copytree(args.resume_from, workdir)
        shutil.rmtree(workdir / "checkpoints" / "3")

    processed: list[int] = []
    real = pipeline.ProcessElement.element

    def spy(self, element):
        processed.append(int(element))
        return real(self, element)

    pipeline.ProcessElement.element = spy
    t = trainer.Trainer(c, workdir)
    t.train()
    pipeline.ProcessElement.element = real
    (out / f"elements_{jax.process_index()}.json").write_text(json.dumps(
        {"processed": processed, "rows": [int(r) for r in t.rl_data.rows]}))
    host = dist.to_host(nnx.to_pure_dict(t.params))
    if jax.process_index() == 0:
        flat = {"/".join(map(str, k)): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(host)[0]}
        np.savez(out / "params.npz", **flat)
    if args.num_processes > 1:
        _mixing_check(t, out)


if __name__ == "__main__":
    main()
