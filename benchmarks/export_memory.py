"""Peak host memory of `python -m rewardmap_jax.export` on several processes vs one-host gather.

    python benchmarks/export_memory.py --processes 2 --layers 16        # ~226 MB model
    python benchmarks/export_memory.py --processes 4 --layers 48 --hidden 1024

Launches N local processes (gloo, `--devices` CPU devices each) as one JAX job. They build a
Qwen2.5-VL-shaped model of the given size sharded (FSDP) over all devices, save it as a run
checkpoint (Orbax, every process), then each measures its RSS high-water mark (/proc VmHWM after
`clear_refs`) over:

* `stream`: `rewardmap_jax.export.export_checkpoint` - restore sharded over every device, write
  one tensor at a time (process 0 writes);
* `gather` (one more process, afterwards): the previous method, every parameter restored onto
  one device of one host, as a reference.

Prints one JSON line per process (`delta` = high-water mark - RSS before, MiB) and checks that
the written safetensors equal the checkpoint. `tests/test_export_multihost.py` runs it small.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20
_REPO = Path(__file__).resolve().parents[1]


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _rss("VmRSS")


def _model_config(args):
    from rewardmap_jax.model.config import tiny

    t = tiny()
    heads = args.hidden // 64
    text = dataclasses.replace(
        t.text, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, vocab_size=args.vocab, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4), mrope_section=(8, 12, 12))
    vision = dataclasses.replace(t.vision, out_hidden_size=args.hidden)
    return dataclasses.replace(t, text=text, vision=vision, tie_word_embeddings=False)


def worker(args) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    from rewardmap_jax.run import distributed

    if args.processes > 1:
        distributed.initialize_distributed({
            "dist_mode": "explicit", "coordinator_address": f"127.0.0.1:{args.port}",
            "num_processes": args.processes, "process_id": args.process_id})
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from configs.curriculum import get_config
    from rewardmap_jax import config_utils, export
    from rewardmap_jax.model import hf_io, sharding
    from rewardmap_jax.model.config import to_hf_config
    from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
    from rewardmap_jax.run import checkpoint as ck

    work = Path(args.dir)
    hf_dir, workdir, out = work / "hf_config", work / "run", work / "exported"
    cfg = _model_config(args)
    config = get_config()
    config.model.hf_dir = str(hf_dir)
    if jax.process_index() == 0:
        hf_dir.mkdir(parents=True, exist_ok=True)
        (hf_dir / "config.json").write_text(json.dumps(to_hf_config(cfg)))
        config_utils.save_config(config, workdir)
    multihost_utils.sync_global_devices("config written")
    mesh = export._export_mesh(config)
    model = sharding.create_sharded_model(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0)), mesh,
                                          sharding.rules_from_config(config.mesh))
    params = nnx.state(model, nnx.Param)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        mgr.save(1, {"params": params}, wait=True)
    del model, params
    multihost_utils.sync_global_devices("checkpoint written")

    before = _reset_peak()
    t0 = time.perf_counter()
    real = export.restore_params
    stages = {}

    def restore(*a, **k):  # the high-water mark of the restore alone
        out = real(*a, **k)
        stages["restore_mib"] = (_rss("VmHWM") - before) / MiB
        return out

    export.restore_params = restore
    summary = export.export_checkpoint(workdir, out, dtype="float32")
    seconds = time.perf_counter() - t0
    row = {"method": "stream", "process": jax.process_index(), "processes": jax.process_count(),
           "model_mib": total / MiB, "delta_mib": (_rss("VmHWM") - before) / MiB, **stages,
           "seconds": seconds, "files": summary["safetensors"], "load": os.getloadavg()[0]}
    multihost_utils.sync_global_devices("exported")
    # The written files equal the checkpoint (read back on the host, after measuring; the
    # checkpoint manager is collective, so every process opens it).
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        _, saved = mgr.restore_numpy("params")
    if jax.process_index() == 0:
        from safetensors.numpy import load_file

        flat = {}
        for path, v in jax.tree_util.tree_flatten_with_path(saved)[0]:
            keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
            flat[tuple(keys[:-1] if keys[-1] == "value" else keys)] = v
        written = {}
        for f in summary["safetensors"]:
            written.update(load_file(out / f))
        mapping = hf_io.hf_param_map(cfg)
        assert sorted(written) == sorted(mapping), "keys differ"
        for key, (path, kind) in mapping.items():
            want = hf_io._to_torch_layout(np.asarray(flat[tuple(str(p) for p in path)]), kind,
                                          cfg)
            np.testing.assert_array_equal(written[key], want, err_msg=key)
        row["verified"] = True
    print(json.dumps(row), flush=True)
    multihost_utils.sync_global_devices("done")


def gather_worker(args) -> None:
    """One process: the previous method's peak on the checkpoint the stream workers wrote."""
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    work = Path(args.dir)
    before = _reset_peak()
    total = export_gather(work / "run", jax.devices()[0])
    print(json.dumps({"method": "gather", "process": 0, "processes": 1, "model_mib": total / MiB,
                      "delta_mib": (_rss("VmHWM") - before) / MiB,
                      "load": os.getloadavg()[0]}), flush=True)


def export_gather(workdir: Path, device) -> int:
    """The previous export's restore: every parameter onto one device, then to the host."""
    import jax
    from flax import nnx

    from rewardmap_jax import config_utils
    from rewardmap_jax.model.build import model_config
    from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
    from rewardmap_jax.run import checkpoint as ck

    config = config_utils.load_config(workdir)
    cfg = model_config(config)
    state = nnx.state(nnx.eval_shape(lambda: Qwen2_5_VL(cfg, nnx.Rngs(params=0))), nnx.Param)
    one = jax.sharding.SingleDeviceSharding(device)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                            state)
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        restored = mgr.restore({"params": abstract}, data_state=False)
    host = jax.device_get(restored.state["params"])
    return sum(x.nbytes for x in jax.tree.leaves(host))


def launch(args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, str(Path(__file__).resolve()), "--port", str(port),
            "--processes", str(args.processes), "--devices", str(args.devices), "--dir",
            args.dir, "--layers", str(args.layers), "--hidden", str(args.hidden), "--vocab",
            str(args.vocab)]
    rows = _run([base + ["--worker", "--process_id", str(i)] for i in range(args.processes)],
                args.timeout)
    if args.gather:
        rows += _run([base + ["--gather_worker"]], args.timeout)
    return rows


def _run(cmds: list[list[str]], timeout: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = str(_REPO)
    procs = [subprocess.Popen(c, env=env, cwd=_REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    rows = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode:
                raise RuntimeError(f"export worker failed ({p.returncode}):\n{err[-4000:]}")
            rows += [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dir", default="")
    ap.add_argument("--gather", action="store_true", help="also measure the one-host gather")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--gather_worker", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--process_id", type=int, default=0)
    args = ap.parse_args()
    if args.worker or args.gather_worker:
        (worker if args.worker else gather_worker)(args)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args.dir = args.dir or tmp
        for row in launch(args):
            print(json.dumps(row))
    print(f"load average {os.getloadavg()}"
          + ("  (LOADED machine: > 1.5 on 2 cores)" if os.getloadavg()[0] > 1.5 else ""))


if __name__ == "__main__":
    main()
