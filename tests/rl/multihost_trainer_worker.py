"""One process of the multi-host trainer test (launched by test_multihost.py).

    python -m tests.rl.multihost_trainer_worker --num_processes 2 --process_id 0 --port 12345 \
        --local_devices 4 --workdir /tmp/w --out /tmp/out [--resume_from /tmp/w2]

Runs the real trainer (tiny model, map-world images, 3 GRPO steps, mesh data=2 x fsdp=2 x
tensor=2 over all processes' devices) and writes to `--out`:

* `elements_<pid>.json`: the global plan elements this process's pipeline processed (read,
  rendered, resized, tokenized) during training, and its rows of each global batch;
* `params.npz` (process 0): the final params, gathered;
* `mixing_<pid>.json` (2 processes): the two-host mixing check on the trainer's GRPO update -
  the guard's error on host-local inputs, the loss and params of the old path (host arrays
  into a plain jit next to FSDP-sharded params) and of the placed path; and the device reward
  per data shard against the host reward of each host's rows.

`--resume_from DIR`: copy DIR's run (2 processes), drop its last checkpoint, and resume it here.
"""

from __future__ import annotations

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
    # Rewards that vary within groups (non-zero advantages) from the first step; the built-in
    # device reward is checked on its own in `_mixing_check`.
    c.reward.fn = f"{Path(__file__).parent / 'bandit_reward.py'}:prefer_space"
    set_mesh(c.mesh, args, (2, 2, 2))
    return c


def _mixing_check(t, out: Path) -> None:
    """One GRPO update on each host's own rows through the trainer's step: host-local inputs
    (refused by the guard; the ce80e12 path, a plain jit, runs them) vs placed global arrays;
    and the device reward per data shard vs the host reward."""
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from rewardmap_jax.mapworld.questions import answer_text
    from rewardmap_jax.rewards.registry import make_reward_fn
    from rewardmap_jax.rl import rollout as ro
    from rewardmap_jax.rl import scoring, steps
    from rewardmap_jax.rl.placement import HostLocalInputError

    n, g = t.rl_data.batch_size, t.g
    batch, prompts = t._prompts(next(t.rl_data.iterator()))
    rows = t.place.rows(n)
    # completions and advantages: a function of the global row (the hosts hold different rows)
    rngs = [np.random.default_rng(int(r)) for r in rows for _ in range(g)]
    comp = np.stack([r.integers(5, 200, 6) for r in rngs]).astype(np.int32)
    extra = dict(advantages=np.array([r.normal() for r in rngs], np.float32),
                 old_logps=np.full(comp.shape, -3.0, np.float32),
                 ref_logps=np.full(comp.shape, -3.0, np.float32))
    mask = np.ones(comp.shape, bool)
    placed = steps.make_grpo_step(t.graphdef, t.tx, t.loss_cfg, g, placement=t.place)
    report: dict = {"process": jax.process_index(), "rows": [int(r) for r in rows]}
    # 1. The guard: host-local arrays into the trainer's step fail at once, naming it.
    try:
        placed(t.params, t.opt_state, ro.seq_batch(prompts, comp, mask, **extra))
        report["guard"] = None
    except HostLocalInputError as e:
        report["guard"] = str(e)
    # 2. The placed path: one global batch of both hosts' rows.
    p_new, _, m_new = placed(t.params, t.opt_state,
                             ro.seq_batch(prompts, comp, mask, t.place, n, **extra))
    # 3. The old path (ce80e12): host arrays into a plain jit next to FSDP-sharded params.
    old = steps.make_grpo_step(t.graphdef, t.tx, t.loss_cfg, g)
    p_old, _, m_old = old(t.params, t.opt_state, ro.seq_batch(prompts, comp, mask, **extra))
    report["loss_new"] = float(np.asarray(m_new["loss"].addressable_data(0)))
    report["loss_old"] = float(np.asarray(m_old["loss"].addressable_data(0)))
    a, b = (multihost_utils.process_allgather(nnx.to_pure_dict(p), tiled=True)
            for p in (p_new, p_old))
    report["params_old_vs_new"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                                      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                      strict=True))
    # 4. The device reward per data shard (shard_map) == the host reward of each host's rows.
    recs = [r for r in batch["records"] for _ in range(g)]
    texts = [answer_text(r) if i % 3 else "no" for i, r in enumerate(recs)]
    reward_fn = make_reward_fn(t.config.reward.to_dict() | {"fn": "rewardmap"})
    mine = reward_fn(recs, texts)
    every = scoring.score(reward_fn, recs, texts, t.place, n, g)
    own = (rows[:, None] * g + np.arange(g)).reshape(-1)
    report["reward_err"] = max(float(np.max(np.abs(every[k][own] - mine[k]))) for k in mine)
    report["reward_overall_sum"] = float(every["overall"].sum())
    (out / f"mixing_{jax.process_index()}.json").write_text(json.dumps(report))


def main() -> None:
    from tests.rl.multihost_worker import process_parser

    ap = process_parser()
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
    from tests.rl.multihost_worker import join

    c = _config(args)
    join(args)
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
