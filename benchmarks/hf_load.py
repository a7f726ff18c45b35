"""Host peak RSS while loading a multi-shard safetensors checkpoint onto a sharded mesh.

    python benchmarks/hf_load.py --text-layers 2 --vision-depth 2 --shard-mb 200

Writes a random checkpoint at the Qwen2.5-VL-3B widths (real vocabulary, hidden 2048, vision
1280) with a few layers, in bf16 (as the hub publishes it), split into several safetensors
shards; then loads it into fp32 params (the presets' master weights) on 8 fake CPU devices with
FSDP over all 8, each way in a fresh subprocess:

* `streamed`: `hf_io.load_hf(..., shardings=...)` (what `model.build.build_model` does): every
  tensor read block by block straight into its shards;
* `one_device_then_shard`: the previous trainer path: the whole model loaded onto one device,
  then `sharding.shard_state` (a second, sharded copy).

On CPU the devices' memory is host memory, so the loaded shards themselves count in RSS; the
figure to read is `peak - baseline` against the loaded params' bytes (`params`): the streamed
load should add about one tensor on top of the params, the previous path a second copy of the
model. Prints one JSON line per mode and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shallow_config(text_layers: int, vision_depth: int, preset: str = "qwen2_5_vl_3b"):
    """The `preset`'s ModelConfig (its widths and vocabulary) cut to `text_layers` decoder
    layers and `vision_depth` vision blocks; full-attention vision blocks every 8th as in the
    real models (7, 15, ...), else the last block."""
    import dataclasses

    from rewardmap_jax.model.config import get_preset

    base = get_preset(preset, param_dtype="float32")
    full = tuple(i for i in range(vision_depth) if i % 8 == 7) or (vision_depth - 1,)
    return base.replace(
        text=dataclasses.replace(base.text, num_hidden_layers=text_layers),
        vision=dataclasses.replace(base.vision, depth=vision_depth, fullatt_block_indexes=full))


def _config(args: argparse.Namespace):
    return shallow_config(args.text_layers, args.vision_depth)


def write_checkpoint(cfg, out: str, shard_mb: int, seed: int = 0) -> dict:
    """A random HF checkpoint of the model `cfg` (a ModelConfig) in `out`: config.json,
    generation_config.json and bf16 safetensors shards of at most `shard_mb` MiB (random init,
    then `hf_io.save_hf`, the export path). Also used by scripts/rehearsal.py."""
    import jax

    from rewardmap_jax.model import hf_io
    from rewardmap_jax.model.qwen2_5_vl import init_model, param_count

    with jax.default_device(jax.devices("cpu")[0]):
        model = init_model(cfg, seed)
    names = hf_io.save_hf(model, out, dtype="bfloat16", max_shard_bytes=shard_mb * MiB)
    size = sum(os.path.getsize(os.path.join(out, n)) for n in names)
    return {"shards": len(names), "checkpoint_bytes": size, "params": param_count(model)}


def make_checkpoint(args: argparse.Namespace, out: str) -> dict:
    """The 3B-width checkpoint with `--text-layers` / `--vision-depth`, `--shard-mb` shards."""
    return write_checkpoint(_config(args), out, args.shard_mb)


def load(mode: str, hf_dir: str, args: argparse.Namespace) -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from flax import nnx

    from configs.curriculum import get_config
    from rewardmap_jax.model import build, hf_io, sharding

    config = get_config("qwen2_5_vl_3b")
    config.model.hf_dir = hf_dir
    mesh = sharding.make_mesh(config.mesh)  # (data 1, fsdp 8, tensor 1)
    cfg = build.model_config(config)
    shardings = build.param_shardings(config, cfg, mesh)
    jax.block_until_ready(jax.numpy.zeros(8))  # backend up before the baseline
    base_rss = _rss_mib()
    base_peak = _peak_mib()
    t0 = time.perf_counter()
    if mode == "streamed":
        model = hf_io.load_hf(hf_dir, cfg, shardings=shardings)
    else:
        one = hf_io.load_hf(hf_dir, cfg)  # every tensor on device 0
        graphdef, state = nnx.split(one)
        model = nnx.merge(graphdef, sharding.shard_state(state, shardings))
        del one, state
    params = nnx.state(model, nnx.Param)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    leaves = jax.tree.leaves(params)
    nbytes = sum(x.nbytes for x in leaves)
    per_device = sharding.per_device_bytes(params)
    return {"mode": mode, "seconds": round(seconds, 1), "params_MiB": round(nbytes / MiB),
            "per_device_MiB": round(per_device / MiB), "baseline_rss_MiB": round(base_rss),
            "baseline_peak_MiB": round(base_peak), "peak_rss_MiB": round(_peak_mib()),
            "final_rss_MiB": round(_rss_mib()),
            "peak_minus_baseline_MiB": round(_peak_mib() - base_rss),
            "sharded": sum(not x.sharding.is_fully_replicated for x in leaves),
            "tensors": len(leaves), "load_avg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--shard-mb", type=int, default=200)
    ap.add_argument("--modes", default="streamed,one_device_then_shard")
    ap.add_argument("--dir", default="", help="reuse/keep the checkpoint here")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(load(*args.worker, args)))
        return
    if args.make:
        print(json.dumps(make_checkpoint(args, args.make)))
        return
    env = dict(os.environ, PYTHONPATH=f"{_REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    common = ["--text-layers", str(args.text_layers), "--vision-depth", str(args.vision_depth),
              "--shard-mb", str(args.shard_mb)]

    def sub(*extra: str) -> dict:
        proc = subprocess.run([sys.executable, __file__, *common, *extra], env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{extra} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp:
        d = args.dir or os.path.join(tmp, "ckpt")
        if not os.path.exists(os.path.join(d, "config.json")):
            info = sub("--make", d)
        else:
            info = {"shards": len([f for f in os.listdir(d) if f.endswith(".safetensors")]),
                    "checkpoint_bytes": sum(os.path.getsize(os.path.join(d, f))
                                            for f in os.listdir(d) if f.endswith(".safetensors"))}
        print(json.dumps(info))
        rows = [sub("--worker", mode, d) for mode in args.modes.split(",")]
    for r in rows:
        print(json.dumps(r))
    ck = info["checkpoint_bytes"] / MiB
    print(f"\ncheckpoint: {info['shards']} bf16 safetensors shards, {ck:,.0f} MiB; loaded as fp32 "
          "on 8 fake CPU devices, FSDP 8")
    print("| load | params MiB (fp32) | peak RSS - baseline MiB | extra over params MiB "
          "| extra / checkpoint | final RSS MiB | s | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        extra = r["peak_minus_baseline_MiB"] - r["params_MiB"]
        print(f"| {r['mode']} | {r['params_MiB']:,} | {r['peak_minus_baseline_MiB']:,} | "
              f"{extra:,} | {extra / ck:.2f} | {r['final_rss_MiB']:,} | {r['seconds']} | "
              f"{r['load_avg']:.1f} |")


if __name__ == "__main__":
    main()
