"""Per-device memory of the trainer's jitted programs: batch sharded over the data axes or not.

    python benchmarks/data_parallel.py [--prompts 16] [--generations 4]

On 8 fake CPU devices, the tiny model, one map-world batch of `--prompts` prompts x G samples
(the trainer's own `_prompts` path: per-image vision buffers, agreed buckets), XLA's compiled
memory analysis (temp = activation temporaries, arg = inputs resident per device) of

* `update`: the GRPO step (`rl.steps.make_grpo_step`);
* `logprobs`: the reference / old log-prob pass (`rl.steps.make_logprob_fn`);
* `rollout`: the sampler's prefill + decode program (`rl.sampler._rollout`),

for three layouts of the same 8 devices: the batch replicated on a data=8 mesh (what the trainer
did before batches were placed: every device computes the whole batch), the batch sharded over
data=8, and mesh (data=2, fsdp=2, tensor=2) with the batch over data x fsdp = 4. Compiled memory
analysis does not depend on the machine's load; no wall times are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/
jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.curriculum import get_config  # noqa: E402
from rewardmap_jax.rl import rollout as ro  # noqa: E402
from rewardmap_jax.rl import sampler, steps, trainer  # noqa: E402
from rewardmap_jax.rl.placement import Placement  # noqa: E402

MiB = 2**20


class _Stop(Exception):
    pass


def _config(prompts: int, g: int, mesh_shape):
    c = get_config("tiny")
    c.sft.steps = 0
    c.train.rl_steps = 4
    c.rl.max_new_tokens = 6
    c.rl.dynamic_sampling = False
    c.data.mapworld_questions_per_task = 32
    c.data.batch_size = c.rl.mini_batch_size = prompts
    c.rl.num_generations = g
    c.curriculum.stages = ({"name": "small", "steps": 4,
                            "weights": {"TorF1": 1.0, "TorF2": 1.0, "Counting3": 1.0}},)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_shape
    return c


def measure(prompts: int, g: int, mesh_shape, replicate: bool) -> dict[str, dict[str, float]]:
    c = _config(prompts, g, mesh_shape)
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer.Trainer(c, tmp)
    rules = dict(t.place.rules, batch=None) if replicate else t.place.rules
    place = Placement(t.mesh, rules)
    batch, prompts_np = t._prompts(next(t.rl_data.iterator()))
    n, tl = prompts, int(c.rl.max_new_tokens)
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 200, (n * g, tl)).astype(np.int32)
    extra = dict(advantages=rng.normal(size=n * g).astype(np.float32),
                 old_logps=np.full((n * g, tl), -3.0, np.float32),
                 ref_logps=np.full((n * g, tl), -3.0, np.float32))
    dev = ro.seq_batch(prompts_np, comp, np.ones(comp.shape, bool), place, n, **extra)
    t._init_phase("rl")
    out = {}
    step = steps.make_grpo_step(t.graphdef, t.tx, t.loss_cfg, g, placement=place)
    out["update"] = step.lower(t.params, t._init_opt_state(), dev).compile().memory_analysis()
    logp = steps.make_logprob_fn(t.graphdef, g, placement=place)
    out["logprobs"] = logp.lower(t.params, dev).compile().memory_analysis()
    real = sampler._rollout

    def spy(*args):
        out["rollout"] = real.lower(*args).compile().memory_analysis()
        raise _Stop

    sampler._rollout = spy
    try:
        ro.sample(nnx.merge(t.graphdef, t.params), prompts_np, t.sp, jax.random.key(0), place, n)
    except _Stop:
        pass
    finally:
        sampler._rollout = real
    return {k: {"temp": m.temp_size_in_bytes / MiB, "arg": m.argument_size_in_bytes / MiB}
            for k, m in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4)
    args = ap.parse_args()
    layouts = (("replicated batch, mesh (8, 1, 1)", (8, 1, 1), True),
               ("batch over data=8, mesh (8, 1, 1)", (8, 1, 1), False),
               ("batch over data x fsdp = 4, mesh (2, 2, 2)", (2, 2, 2), False))
    rows = {name: measure(args.prompts, args.generations, shape, rep)
            for name, shape, rep in layouts}
    print(f"{args.prompts} prompts x G={args.generations}, tiny model, 8 CPU devices; MiB per "
          "device (XLA compiled memory analysis)")
    print("| layout | update temp | update args | log-probs temp | rollout temp | rollout args |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['update']['temp']:.1f} | {r['update']['arg']:.1f} | "
              f"{r['logprobs']['temp']:.1f} | {r['rollout']['temp']:.1f} | "
              f"{r['rollout']['arg']:.1f} |")
    base = rows[layouts[0][0]]
    for name, r in list(rows.items())[1:]:
        print(f"{name}: temporaries / replicated = update "
              f"{r['update']['temp'] / base['update']['temp']:.3f}, log-probs "
              f"{r['logprobs']['temp'] / base['logprobs']['temp']:.3f}, rollout "
              f"{r['rollout']['temp'] / base['rollout']['temp']:.3f}")
    print(f"load average {os.getloadavg()} (memory analysis does not depend on it)")


if __name__ == "__main__":
    main()
