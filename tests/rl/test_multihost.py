"""Two processes on 127.0.0.1 (gloo collectives) == one process with all the devices: a toy
GRPO step (2 x 2 devices), and the real trainer with images (2 x 4 devices), including the
two-host mixing check, per-host data reading and a 2-process -> 1-process resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
TRAINER_TIMEOUT_S = 1800  # the trainer workers compile the sampler, steps and reward


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, pid: int, port: int, local: int, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "tests.rl.multihost_worker", "--num_processes", str(nproc),
           "--process_id", str(pid), "--port", str(port), "--local_devices", str(local),
           "--steps", "3", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _launch_trainer(nproc: int, pid: int, port: int, local: int, workdir: Path, out: Path,
                    resume_from: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "tests.rl.multihost_trainer_worker", "--num_processes",
           str(nproc), "--process_id", str(pid), "--port", str(port), "--local_devices",
           str(local), "--workdir", str(workdir), "--out", str(out)]
    if resume_from is not None:
        cmd += ["--resume_from", str(resume_from)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen], timeout: int = TIMEOUT_S) -> None:
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{out[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    multi = [_launch(2, i, port, 2, tmp_path / "multi.npz") for i in range(2)]
    single = [_launch(1, 0, port, 4, tmp_path / "single.npz")]
    _wait(multi + single)
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    # the runs actually trained: params moved away from the (shared, seeded) init
    assert float(a["moved"]) > 1e-3
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)


def _params_close(a: Path, b: Path) -> float:
    x, y = np.load(a), np.load(b)
    assert sorted(x.files) == sorted(y.files) and len(x.files) > 10
    return max(float(np.max(np.abs(x[k] - y[k]))) for k in x.files)


@pytest.mark.slow
def test_trainer_two_processes_match_one(tmp_path):
    """The full trainer path with images, 3 steps: 2 processes x 4 devices == 1 process x 8
    devices (params to 1e-5, same metrics); each process read and decoded only its half of
    each global batch; the old host-array path mixes the hosts' rows (the check fails before
    the fix) while the guard refuses it and the placed path is right; the 2-process run resumed
    at step 2 in one process ends with the same params."""
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    procs = [_launch_trainer(2, i, port, 4, multi / "w", multi / "out") for i in range(2)]
    procs.append(_launch_trainer(1, 0, _free_port(), 8, single / "w", single / "out"))
    _wait(procs, TRAINER_TIMEOUT_S)
    assert _params_close(multi / "out" / "params.npz", single / "out" / "params.npz") <= 1e-5
    metrics = [[json.loads(x) for x in (d / "w" / "metrics.jsonl").read_text().splitlines()]
               for d in (multi, single)]
    assert [m["step"] for m in metrics[0]] == [1, 2, 3] == [m["step"] for m in metrics[1]]
    for a, b in zip(*metrics, strict=True):
        for k in ("reward/mean", "adv/adv_std", "adv/zero_var_groups", "loss", "pg_loss", "kl",
                  "entropy", "response_length", "tokens", "logp_diff_mean", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert any(m["adv/adv_std"] > 0 for m in metrics[0])  # the rewards varied within groups
    # Per-host input: each process processed its rows of the 3 global batches and no other
    # process's row. (Grain's read-ahead may also have processed this process's rows of the
    # next planned batches - the stage plans 8 - depending on timing.)
    seen = [json.loads((multi / "out" / f"elements_{i}.json").read_text()) for i in range(2)]
    assert [s["rows"] for s in seen] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for s in seen:
        done = {step * 8 + r for step in range(3) for r in s["rows"]}
        mine = {step * 8 + r for step in range(8) for r in s["rows"]}
        assert done <= set(s["processed"]) <= mine
        assert len(s["processed"]) == len(set(s["processed"]))  # each element once
    one = json.loads((single / "out" / "elements_0.json").read_text())
    assert set(range(24)) <= set(one["processed"]) <= set(range(64))
    mix = [json.loads((multi / "out" / f"mixing_{i}.json").read_text()) for i in range(2)]
    for m in mix:
        assert m["guard"].startswith("grpo_step: input [") and \
            "is an array on this process's devices only" in m["guard"], m["guard"]
        assert m["reward_err"] <= 1e-6 and m["reward_overall_sum"] > 0, m
    # the placed update computes one global loss, the same on both hosts ...
    assert mix[0]["loss_new"] == mix[1]["loss_new"]
    # ... the old path gave each host its own half as the whole batch (the check that fails
    # before the fix): different losses, and params whose shards were updated from different data
    assert mix[0]["loss_old"] != mix[1]["loss_old"], mix
    assert mix[0]["params_old_vs_new"] > 1e-6, mix
    # 2 processes -> 1: resume the 2-process run from its step-2 checkpoint on one process
    resumed = tmp_path / "resumed"
    _wait([_launch_trainer(1, 0, _free_port(), 8, resumed / "w", resumed / "out",
                           resume_from=multi / "w")], TRAINER_TIMEOUT_S)
    assert _params_close(resumed / "out" / "params.npz", multi / "out" / "params.npz") <= 1e-5


def test_initialize_distributed_modes(monkeypatch):
    from rewardmap_jax.run import distributed as dist

    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
              "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    # a lone process with no cluster environment stays single-process
    assert dist.initialize_distributed({"dist_mode": "auto"}) is False
    assert dist.initialize_distributed({"dist_mode": "off"}) is False
    with pytest.raises(ValueError, match="dist_mode"):
        dist.initialize_distributed({"dist_mode": "mpi"})
    with pytest.raises(ValueError, match="coordinator_address"):
        dist.initialize_distributed({"dist_mode": "explicit", "num_processes": 2,
                                     "process_id": 0})
    with pytest.raises(ValueError, match="process_id"):
        dist.initialize_distributed({"dist_mode": "explicit", "coordinator_address": "h:1",
                                     "num_processes": 2, "process_id": 2})
    # "auto" with only JAX_COORDINATOR_ADDRESS: JAX reads no process count/id from the
    # environment; ours come from JAX_NUM_PROCESSES / JAX_PROCESS_ID, else a clear error
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="not JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        dist.initialize_distributed({"dist_mode": "auto"})
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert dist._coordinator_env() == {"coordinator_address": "127.0.0.1:1234",
                                       "num_processes": 2, "process_id": 1}
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match="0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES"):
        dist._coordinator_env()
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # count and id left to JAX's SLURM detection
    assert dist._coordinator_env() == {"coordinator_address": "127.0.0.1:1234"}
    assert dist._cluster_detected()
    assert dist.is_main_process()
