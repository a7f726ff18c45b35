"""SFT-only runs (`train.rl_steps=-1`) and runs that start from another run's params
(`train.init_from`), the two trainer features the ablation study builds on."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from rewardmap_jax.config_utils import ConfigError
from rewardmap_jax.rl import trainer
from rewardmap_jax.run import checkpoint as ck
from tests.rl.small_config import get_config


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft_only")
    c = get_config()
    c.sft.steps = 3
    c.train.rl_steps = -1
    c.checkpoint.every_steps = 1  # checkpoints 1, 2, 3: `init_from_step` picks one
    c.checkpoint.keep = 5
    trainer.run(c, str(workdir))
    return workdir


def test_sft_only_run_stops_after_the_warm_start(sft_run):
    summary = json.loads((sft_run / "train_summary.json").read_text())
    assert (summary["step"], summary["total"], summary["preempted"]) == (3, 3, False)
    rows = [json.loads(x) for x in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows if "phase" in r} == {"sft"}
    assert ck.latest_step(sft_run) == 3


def test_sft_only_needs_sft_steps():
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = -1
    with pytest.raises(ConfigError, match=r"rl_steps=-1 .* needs sft.steps > 0"):
        trainer.Trainer(c, "/nonexistent-never-written")


def test_init_from_starts_rl_from_the_other_runs_params(sft_run, tmp_path):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.train.init_from = str(sft_run)
    t = trainer.Trainer(c, tmp_path)
    fresh = _leaves(t.params)
    with ck.CheckpointManager(tmp_path, async_save=False, handle_preemption=False) as mgr:
        assert t._restore_or_init(mgr) == 0
    with ck.CheckpointManager(sft_run, async_save=False, handle_preemption=False) as mgr:
        _, want = mgr.restore_numpy("params")
    got = _leaves(t.params)
    assert all(np.array_equal(a, b) for a, b in zip(got, jax.tree.leaves(want), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(got, fresh, strict=True))
    # The KL reference is the initial policy, i.e. the loaded params.
    assert all(np.array_equal(a, b) for a, b in
               zip(_leaves(t.ref_params), got, strict=True))


def test_a_run_with_its_own_checkpoint_resumes_it_not_init_from(sft_run, tmp_path):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 2
    c.train.init_from = str(sft_run)
    trainer.run(c, str(tmp_path))
    with ck.CheckpointManager(tmp_path, async_save=False, handle_preemption=False) as mgr:
        _, own = mgr.restore_numpy("params")
    c.train.rl_steps = 3  # one more step: resumes from step 2 of its own run
    t = trainer.Trainer(c, tmp_path)
    with ck.CheckpointManager(tmp_path, async_save=False, handle_preemption=False) as mgr:
        assert t._restore_or_init(mgr) == 2
    assert all(np.array_equal(a, b) for a, b in
               zip(_leaves(t.params), jax.tree.leaves(own), strict=True))


def test_init_from_without_checkpoint_is_a_clear_error(tmp_path):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.train.init_from = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    t = trainer.Trainer(c, tmp_path / "run")
    with ck.CheckpointManager(tmp_path / "run", async_save=False,
                              handle_preemption=False) as mgr:
        with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
            t._restore_or_init(mgr)


def test_init_from_step_picks_that_checkpoint(sft_run, tmp_path):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.train.init_from = str(sft_run)
    c.train.init_from_step = 2
    t = trainer.Trainer(c, tmp_path / "run")
    with ck.CheckpointManager(tmp_path / "run", async_save=False,
                              handle_preemption=False) as mgr:
        assert t._restore_or_init(mgr) == 0
    want, step = ck.load_params(sft_run, t.params, 2)
    latest, _ = ck.load_params(sft_run, t.params)
    assert step == 2
    got = _leaves(t.params)
    assert all(np.array_equal(a, b) for a, b in zip(got, _leaves(want), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(got, _leaves(latest), strict=True))
    c.train.init_from_step = 7  # no such checkpoint: the error names it
    t = trainer.Trainer(c, tmp_path / "other")
    with ck.CheckpointManager(tmp_path / "other", async_save=False,
                              handle_preemption=False) as mgr:
        with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 7"):
            t._restore_or_init(mgr)
