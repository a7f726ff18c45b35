"""Trainer runs: config errors before compute, a failing run closes its checkpoints, and the
evaluate CLI on a trained workdir."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap_jax import config_utils
from rewardmap_jax.config_utils import ConfigError
from rewardmap_jax.mapworld.records import TASK_TYPES
from rewardmap_jax.rl import trainer
from rewardmap_jax.run import checkpoint as ck
from tests.rl.small_config import get_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key,value,match", [
    ("sft.warmup_steps", 2, r"sft.warmup_steps \(2\) must be < sft.steps \(2\)"),
    ("rl.grad_accum", 3, r"rl.grad_accum \(3\) must divide"),
    ("sft.grad_accum", 3, r"sft.grad_accum \(3\) must divide sft.batch_size \(4\)"),
    ("eval.batch_size", 200, r"eval.batch_size \(200\) x at least 16 patch rows"),
    ("eval.tasks", ("TorF9",), r"eval.tasks has unknown task types \['TorF9'\]"),
    ("rl.sequence_layout", "packed", r"rl.sequence_layout='packed' is not one of"),
    ("rl.overlong_buffer", 7, r"rl.overlong_buffer \(7\) must be in \[0, rl.max_new_tokens = 6\]"),
])
def test_config_errors_name_keys(key, value, match):
    c = get_config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=match):
        trainer.check_config(c)


def test_low_precision_params_are_refused_unless_allowed():
    c = get_config()
    c.model.param_dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"model.param_dtype=bfloat16 .* "
                       r"optim.allow_low_precision_params=True"):
        trainer.check_config(c)
    c.optim.allow_low_precision_params = True
    trainer.check_config(c)
    # The real presets keep fp32 master weights and compute in bf16.
    from configs.curriculum import get_config as preset

    for name in ("qwen2_5_vl_3b", "qwen2_5_vl_7b"):
        m = preset(name).model
        assert (m.param_dtype, m.compute_dtype) == ("float32", "bfloat16")


def test_rl_warmup_error_and_consistent_config():
    c = get_config()
    trainer.check_config(c)  # the small config itself is consistent
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 4  # 4 steps x 1 mini-batch x 1 epoch = 4 updates
    with pytest.raises(ConfigError, match=r"optim.warmup_steps \(4\) must be < .* = 4"):
        trainer.check_config(c)
    c.optim.warmup_steps = 3
    trainer.check_config(c)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A run (async saves) whose 2nd GRPO step raises: returns (workdir, error, log text)."""
    workdir = tmp_path_factory.mktemp("failed")
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 3
    c.checkpoint.async_save = True
    config_utils.save_config(c, workdir)  # as main does: the evaluate CLI reads it
    t = trainer.Trainer(c, workdir)
    real = t.rl_step

    def flaky(step):
        if step == 1:
            raise RuntimeError("boom in the update")
        return real(step)

    t.rl_step = flaky
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    trainer.log.addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match="boom") as err:
            t.train()
    finally:
        trainer.log.removeHandler(handler)
    return workdir, err.value, seen


def test_failed_run_leaves_a_complete_checkpoint(failed_run):
    workdir, _, seen = failed_run
    assert [m for m in seen if "failed" in m] == [
        "training failed after step 1: RuntimeError: boom in the update"]
    ckdir = ck.checkpoint_dir(workdir)
    assert sorted(os.listdir(ckdir)) == ["1"]  # the step-1 save finished; no temporary dir
    assert ck.latest_step(workdir) == 1
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        step, params = mgr.restore_numpy("params")
    assert step == 1 and params


def test_evaluate_cli_on_trained_workdir(failed_run):
    workdir, _, _ = failed_run
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "rewardmap_jax.evaluate", "--workdir", str(workdir),
         "--questions_per_task", "2", "--data", "mapworld:tiny", "--no_progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["scored"] == 2 * len(TASK_TYPES)
    report = json.loads((workdir / "eval" / "cli_step1.json").read_text())
    uids = [x["uid"] for x in report["samples"]]
    assert len(uids) == len(set(uids)) == 2 * len(TASK_TYPES)  # every question once
    assert (workdir / "eval" / "cli_step1.md").read_text().strip()
