"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM) and restarted ends bit-identical
to an uninterrupted run: same params, same data order, same logged metrics.

Each run is a real `python -m rewardmap_jax.main` subprocess on `tests/rl/small_config.py`
(2 SFT steps, then 4 GRPO steps; a checkpoint every step). The kill lands after the checkpoint of
step 3 (the first GRPO step) exists, so the resumed run crosses the SFT -> RL switch state
(reference params, RL optimizer) through a checkpoint. A persistent compilation cache shared by
the subprocesses keeps the later runs from recompiling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rewardmap_jax.run import checkpoint as ck
from rewardmap_jax.run.metrics_writer import read_metrics

REPO = Path(__file__).resolve().parents[1]
TOTAL = 6
KILL_AFTER = 3
# Keys that legitimately differ between runs (wall clock, throughput, compile counters).
VOLATILE = ("time", "step_time", "tokens_per_s", "compiles")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "rewardmap_jax.main", "--config",
            str(REPO / "tests" / "rl" / "small_config.py"), "--workdir", str(workdir)]


def _run(workdir: Path, env) -> None:
    out = subprocess.run(_cmd(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def _steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _interrupted_run(workdir: Path, env, sig: int) -> int:
    """Starts a run, sends `sig` once the step-3 checkpoint is complete; returns the latest
    complete checkpoint step after the process is gone."""
    log_path = workdir.parent / f"{workdir.name}.log"
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")  # a file, not a pipe: nobody reads the child's chatty stderr
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 900
        while not any(s >= KILL_AFTER for s in _steps(workdir)):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "run never reached the kill step"
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, log_path.read_text()[-3000:]  # saved and exited cleanly
    else:
        assert proc.returncode == -signal.SIGKILL
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        latest = mgr.latest_step()
    assert latest is not None and KILL_AFTER <= latest < TOTAL, latest
    return latest


def _final_params(workdir: Path):
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        step, params = mgr.restore_numpy("params")
    assert step == TOTAL
    return params


def _metrics(workdir: Path) -> dict[int, dict]:
    rows = read_metrics(workdir)
    return {r["step"]: {k: v for k, v in r.items()
                        if k not in VOLATILE and not k.startswith("time/")} for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _run(workdir, env)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_resume_is_bit_identical(tmp_path, env, reference, sig):
    workdir = tmp_path / "run"
    _interrupted_run(workdir, env, sig)
    _run(workdir, env)  # resumes from the latest checkpoint
    want, got = _final_params(reference), _final_params(workdir)
    leaves_w, tree_w = jax.tree.flatten(want)
    leaves_g, tree_g = jax.tree.flatten(got)
    assert tree_w == tree_g
    for a, b in zip(leaves_w, leaves_g, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical, not approximately equal
    m_want, m_got = _metrics(reference), _metrics(workdir)
    assert sorted(m_want) == list(range(1, TOTAL + 1))
    assert m_got == m_want  # same data order (rewards, accuracy, stages), losses, grad norms
    # The GRPO steps really trained on sampled rewards (not a vacuous comparison).
    assert any("reward/mean" in m_want[s] for s in range(3, TOTAL + 1))
