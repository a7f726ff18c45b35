"""Device reward speed: the jitted RewardMap reward on a batch of 1,024 parsed completions.

    python benchmarks/reward.py [--n 1024] [--repeats 20] [--world small]

Prints JSON lines: compile time, steady-state time per call (after `block_until_ready`), and
the end-to-end host interface (parse + device + copy back) per batch, on the default backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import jax  # noqa: E402

from benchmarks.parse import completions  # noqa: E402
from configs.curriculum import get_config  # noqa: E402
from rewardmap_jax.rewards import RewardMapReward  # noqa: E402
from rewardmap_jax.rewards import reward as R  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--world", default="small")
    args = ap.parse_args()
    recs, texts = completions(args.world, args.n, args.group)
    rm = RewardMapReward(get_config().reward)
    arrays = rm.parse(recs, texts)
    dev = jax.device_put(arrays)
    base = {"bench": "reward", "backend": jax.default_backend(), "n": len(texts)}
    shapes = {k: list(v.shape) for k, v in arrays.items() if k in ("member", "det_route")}

    t0 = time.perf_counter()
    jax.block_until_ready(R.compute_rewards(dev, rm.params))
    compile_ms = (time.perf_counter() - t0) * 1e3
    print(json.dumps({**base, "case": "first_call_incl_compile", "ms": round(compile_ms, 1),
                      "shapes": shapes}))  # fmt: skip

    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(R.compute_rewards(dev, rm.params))
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({**base, "case": "device_step", "ms": round(best * 1e3, 3)}))

    best = float("inf")
    for _ in range(max(1, args.repeats // 4)):
        t0 = time.perf_counter()
        rm(recs, texts)
        best = min(best, time.perf_counter() - t0)
    print(
        json.dumps({**base, "case": "host_interface_parse_device_copy", "ms": round(best * 1e3, 2)})
    )
    assert R.TRACE_COUNT["compute_rewards"] == 1, R.TRACE_COUNT


if __name__ == "__main__":
    main()
