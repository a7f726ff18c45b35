"""Checkpoint round trips, keep-last-K, sharded restore, SIGTERM and interrupted saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rewardmap_jax.run import checkpoint as ck

REPO = Path(__file__).resolve().parents[2]


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    # Values that a lossy or float-converting round trip would change.
    w[0, :3] = [np.nan, -0.0, np.inf]
    params = {
        "w": jnp.asarray(w),
        "emb": jnp.asarray(rng.standard_normal((5, 3)), dtype=jnp.bfloat16),
        "layers": [{"scale": jnp.full((3,), 1.5 + seed)}, {"scale": jnp.arange(3.0)}],
    }
    opt_state = optax.adamw(1e-3).init(params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.int32(7 + seed),
        "rng": jax.random.fold_in(jax.random.key(1), seed),
    }


def _bits(x) -> bytes:
    x = jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return np.asarray(x).tobytes()


def _assert_bit_identical(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert _bits(x) == _bits(y)


def test_round_trip_is_bit_identical(tmp_path):
    state = _state()
    data_state = {"next_index": 123, "worker": [1, 2], "stage": "counting"}
    with ck.CheckpointManager(tmp_path, every_steps=10, keep=2, async_save=True) as mgr:
        assert mgr.restore(ck.abstract_like(state)) is None  # fresh run
        assert mgr.save(10, state, data_state=data_state, metadata={"stage": 2, "lr": 1e-6})
        assert not mgr.save(10, state)  # the same step is never overwritten
    restored = ck.restore_latest(tmp_path, ck.abstract_like(state))
    assert restored.step == 10
    _assert_bit_identical(restored.state, state)
    assert isinstance(restored.state["opt_state"][0], optax.ScaleByAdamState)
    assert restored.data_state == data_state
    assert restored.metadata == {"stage": 2, "lr": 1e-6}


def test_partial_restore_and_numpy_restore(tmp_path):
    state = _state()
    with ck.CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(3, state)
        only = mgr.restore({"params": ck.abstract_like(state["params"])})
        assert set(only.state) == {"params"} and only.data_state is None
        _assert_bit_identical(only.state["params"], state["params"])
        step, host = mgr.restore_numpy("params")
        assert step == 3
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
        _assert_bit_identical(jax.tree.map(jnp.asarray, host), state["params"])
        with pytest.raises(KeyError, match="no item"):
            mgr.restore({"ema": ck.abstract_like(state["params"])})
        with pytest.raises(FileNotFoundError, match="available steps: \\[3\\]"):
            mgr.restore(ck.abstract_like(state), step=4)


def test_bad_state_names_are_rejected(tmp_path):
    with ck.CheckpointManager(tmp_path, async_save=False, handle_preemption=False) as mgr:
        with pytest.raises(ValueError, match="reserved"):
            mgr.save(1, {"data": jnp.zeros(2)})
        with pytest.raises(TypeError, match="mapping"):
            mgr.save(1, jnp.zeros(2))
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ck.CheckpointManager(tmp_path, keep=0)


def test_grain_iterator_state_resumes_the_stream(tmp_path):
    import grain

    ds = grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset()
    it = iter(ds)
    for _ in range(5):
        next(it)
    with ck.CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(5, {"step": jnp.int32(5)}, data_state=it.get_state())
        with pytest.raises(TypeError, match="JSON-serialisable"):
            mgr.save(6, {"step": jnp.int32(6)}, data_state={"bad": object()})
    expected = [next(it).tolist() for _ in range(3)]
    restored = ck.restore_latest(tmp_path, {"step": jax.ShapeDtypeStruct((), jnp.int32)})
    resumed = iter(ds)
    resumed.set_state(restored.data_state)
    assert [next(resumed).tolist() for _ in range(3)] == expected


def test_every_n_and_keep_last_k(tmp_path):
    saved = []
    with ck.CheckpointManager(tmp_path, every_steps=3, keep=2, async_save=True) as mgr:
        for step in range(1, 12):
            if mgr.should_save(step):
                mgr.save(step, {"x": jnp.full((2,), step)})
                saved.append(step)
        mgr.wait()
        assert saved == [3, 6, 9]
        assert mgr.all_steps() == [6, 9]
    on_disk = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert on_disk == [6, 9]
    assert ck.latest_step(tmp_path) == 9
    assert ck.latest_step(tmp_path / "nothing_here") is None
    restored = ck.restore_latest(tmp_path, {"x": jax.ShapeDtypeStruct((2,), jnp.int32)})
    assert restored.step == 9 and restored.state["x"].tolist() == [9, 9]


def test_restore_into_other_shardings(tmp_path):
    devices = np.array(jax.devices())
    assert devices.size == 8, "conftest sets 8 fake CPU devices"
    save_mesh = Mesh(devices.reshape(8), ("data",))
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    saved = {"params": {"w": jax.device_put(x, NamedSharding(save_mesh, P("data", None)))}}
    with ck.CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, saved)
    load_mesh = Mesh(devices.reshape(2, 4), ("fsdp", "tensor"))
    target = NamedSharding(load_mesh, P(None, "fsdp"))
    abstract = {"params": {"w": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target)}}
    restored = ck.restore_latest(tmp_path, abstract)
    w = restored.state["params"]["w"]
    assert w.sharding == target
    assert w.addressable_shards[0].data.shape == (8, 3)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(x))


def _run_script(body: str, workdir: Path, **popen) -> subprocess.Popen:
    script = textwrap.dedent(
        """
        import os, sys, time
        import jax, jax.numpy as jnp
        from rewardmap_jax.run import checkpoint as ck
        workdir = sys.argv[1]
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.slow
def test_sigterm_saves_then_exits_cleanly(tmp_path):
    proc = _run_script(
        """
        mgr = ck.CheckpointManager(workdir, every_steps=1000, keep=3, async_save=True)
        state = {"w": jnp.zeros((3,))}
        for step in range(1, 100_000):
            state = {"w": state["w"] + 1}
            if step == 5:
                print("READY", flush=True)
            if mgr.should_save(step):
                mgr.save(step, state, data_state={"step": step})
            if mgr.preempted:
                print("PREEMPTED", step, flush=True)
                mgr.close()
                sys.exit(0)
            time.sleep(0.01)
        sys.exit(3)
        """,
        tmp_path,
    )
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    step = int(out.split()[-1])
    assert step >= 5
    restored = ck.restore_latest(tmp_path, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert restored.step == step
    assert restored.state["w"].tolist() == [float(step)] * 3
    assert restored.data_state == {"step": step}


@pytest.mark.slow
def test_save_killed_mid_write_is_never_restored(tmp_path):
    # Step 20's files are all written, then the process dies before the atomic commit (rename).
    proc = _run_script(
        """
        from orbax.checkpoint._src.path import atomicity
        real_finalize = atomicity.AtomicRenameTemporaryPath.finalize
        async def dying_finalize(self):
            if self.get_final().name == "20":
                os._exit(17)
            await real_finalize(self)
        atomicity.AtomicRenameTemporaryPath.finalize = dying_finalize
        mgr = ck.CheckpointManager(workdir, every_steps=10, async_save=True)
        for step in (10, 20):
            mgr.save(step, {"w": jnp.full((3,), float(step))}, data_state={"step": step})
            mgr.wait()
        sys.exit(0)
        """,
        tmp_path,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 17, err
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "10" in names and "20" not in names
    assert any(n.startswith("20.orbax-checkpoint-tmp") for n in names), names
    assert ck.latest_step(tmp_path) == 10
    restored = ck.restore_latest(tmp_path, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert restored.step == 10 and restored.state["w"].tolist() == [10.0] * 3
    # The resumed run writes step 20 again, over the debris of the dead one.
    with ck.CheckpointManager(tmp_path, every_steps=10, async_save=False) as mgr:
        assert mgr.save(20, {"w": jnp.full((3,), 20.0)})
        assert mgr.all_steps() == [10, 20]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert not any("tmp" in n for n in names), names


_TWO_PROCESS_SCRIPT = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                           int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from rewardmap_jax.run import checkpoint as ck
workdir = sys.argv[1]
full = np.arange(24, dtype=np.float32).reshape(8, 3)
sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
x = jax.make_array_from_callback(full.shape, sh, lambda idx: full[idx])
pid = jax.process_index()
with ck.CheckpointManager(workdir, every_steps=0, async_save=True) as mgr:
    if pid == 1:
        mgr.request_preemption()  # SIGTERM reached one host only
    agreed = mgr.should_save(3)   # every host must save at the same step
    preempted = mgr.preempted
    mgr.save(3, {"params": {"w": x}}, data_state={"proc": pid}, metadata={"n": 2})
with ck.CheckpointManager(workdir) as mgr:
    r = mgr.restore({"params": {"w": jax.ShapeDtypeStruct(full.shape, full.dtype, sharding=sh)}})
w = r.state["params"]["w"]
ok = all(np.array_equal(np.asarray(s.data), full[s.index]) for s in w.addressable_shards)
print(json.dumps({"pid": pid, "agreed": agreed, "preempted": preempted, "step": r.step,
                  "data": r.data_state, "meta": r.metadata, "ok": ok}), flush=True)
"""


@pytest.mark.slow
def test_two_processes_save_and_restore_their_shards_and_data_state(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), DEVICES_PER_PROCESS="2")
    out = subprocess.run(
        [str(REPO / "launch" / "local.sh"), "2", sys.executable, "-c", _TWO_PROCESS_SCRIPT,
         str(tmp_path)],  # fmt: skip
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = sorted(
        (json.loads(line.split("] ", 1)[1]) for line in out.stdout.splitlines() if "{" in line),
        key=lambda r: r["pid"],
    )
    assert [r["pid"] for r in results] == [0, 1]
    for r in results:
        assert r["agreed"] and r["preempted"] and r["ok"]
        assert r["step"] == 3 and r["data"] == {"proc": r["pid"]} and r["meta"] == {"n": 2}
    data_dir = tmp_path / "checkpoints" / "3" / "data"
    assert sorted(p.name for p in data_dir.glob("process_*")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
