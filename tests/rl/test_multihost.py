"""Two processes on 127.0.0.1 (gloo, 2 CPU devices each) == one process with 4 devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


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


def _wait(procs: list[subprocess.Popen]) -> None:
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
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
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert dist._cluster_detected()
    assert dist.is_main_process()
