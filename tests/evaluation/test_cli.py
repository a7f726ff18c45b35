"""`python -m rewardmap_jax.evaluate`: every real-format record scored, bad rows counted, clear
early errors, a model's own settings, an interrupted evaluation resumed to the same report, and
the Hugging Face cache loop (`--hf_dir org/name --data org/dataset`, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from rewardmap_jax import config_utils
from rewardmap_jax.data.tokenizer import TINY_TOKENIZER_DIR
from rewardmap_jax.evaluation import data as D
from rewardmap_jax.evaluation import models as M
from rewardmap_jax.evaluation import report as R
from rewardmap_jax.evaluation.cli import INTERRUPTED, main
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.model import hf_io
from rewardmap_jax.model.config import get_preset
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.run import checkpoint as ck
from tests.evaluation.sigterm import sigterm_during_first_batch

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
REAL = f"{FIX / 'reasonmap'},{FIX / 'reasonmap_plus'}"


def _write_completions(path: Path, records, wrong=()) -> Path:
    rows = [{"uid": r.uid, "completion": "no idea" if r.uid in wrong else answer_text(r)}
            for r in records]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


def test_cli_scores_every_real_format_record(tmp_path, capsys):
    records = D.real_data(REAL.split(","), "test").records
    assert len(records) == 18  # 4 ReasonMap rows x (short, long) + 10 Plus: nothing capped
    wrong = {records[0].uid}
    path = _write_completions(tmp_path / "refs.jsonl", records, wrong)
    assert main(["--completions", str(path), "--data", REAL, "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scored"] == 18 and printed["plus/acc"] == 1.0
    rep = R.load_report(tmp_path / "refs.json")
    assert sorted(s["uid"] for s in rep["samples"]) == sorted(r.uid for r in records)
    s = rep["summary"]
    assert s["reasonmap/acc_short"]["n"] == 4 and s["reasonmap/acc_long"]["n"] == 4
    assert s["reasonmap/acc_short"]["value"] == 0.75  # the one wrong answer
    assert s["plus/acc"]["n"] == 10
    for mode in ("official", "corrected"):  # real data: both modes
        assert s[f"reasonmap/map_score_long/{mode}"]["n"] == 4
    assert "reward/mean" in s
    # `--data reasonmap` with the two directories is the same evaluation.
    argv = ["--completions", str(path), "--data", "reasonmap", "--reasonmap_dir",
            str(FIX / "reasonmap"), "--reasonmap_plus_dir", str(FIX / "reasonmap_plus"),
            "--out", str(tmp_path / "b"), "--no_reward"]
    assert main(argv) == 0
    assert R.load_report(tmp_path / "b" / "refs.json")["counts"]["scored"] == 18
    # A cap is applied only when asked for: 1 question of each type.
    assert main([*argv, "--questions_per_task", "1", "--out", str(tmp_path / "c")]) == 0
    assert R.load_report(tmp_path / "c" / "refs.json")["counts"]["scored"] == 6


def test_bad_rows_are_counted_and_reported_not_fatal(tmp_path):
    specs = [str(FIX / "bad" / "reasonmap_bad.parquet"), str(FIX / "bad" / "plus_bad.parquet")]
    data = D.real_data(specs, "test")
    assert len(data.records) == 3 and len(data.bad_rows) == 8
    path = _write_completions(tmp_path / "c.jsonl", data.records)
    assert main(["--completions", str(path), "--data", ",".join(specs), "--out",
                 str(tmp_path), "--no_reward"]) == 0
    rep = R.load_report(tmp_path / "c.json")
    assert rep["counts"] == {"questions": 11, "scored": 3, "bad_rows": 8}
    md = (tmp_path / "c.md").read_text()
    assert "reasonmap_bad.parquet row 4: station_2 'Nowhere' is not a station" in md
    assert "plus_bad.parquet row 2: undecodable image" in md


def test_input_errors_stop_before_compute(tmp_path, capsys):
    records = D.mapworld_data("tiny", "test", 1).records
    path = _write_completions(tmp_path / "partial.jsonl", records[:1])
    argv = ["--data", "mapworld:tiny", "--questions_per_task", "1", "--out", str(tmp_path)]
    assert main(["--completions", str(path), *argv]) == 1
    assert "no completion for 5 of 6 questions" in capsys.readouterr().err
    path.write_text('{"uid": "x"}\n')
    assert main(["--completions", str(path), *argv]) == 1
    assert "partial.jsonl:1: expected" in capsys.readouterr().err
    assert main(["--completions", str(path), *argv, "--set", "eval.nope=3"]) == 1
    assert "override 'eval.nope=3'" in capsys.readouterr().err
    assert main(["--completions", str(path), *argv, "--set", "eval.batch_size=abc"]) == 1
    assert "eval.batch_size=abc" in capsys.readouterr().err
    # A run config carrying a key the code no longer reads is refused, with the reason.
    run = tmp_path / "run"
    config_utils.save_config(config_utils.get_config(preset="tiny"), run)
    saved = json.loads((run / "config.json").read_text())
    saved["eval"]["temperature"] = 0.0
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["--workdir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'eval.temperature' (evaluation always decodes greedily" in err
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(SystemExit):  # exactly one source of completions
        main(["--completions", str(path), "--hf_dir", str(tmp_path)])


def _tiny_hf_dir(out: Path, preprocessor: dict | None = None) -> Path:
    model = Qwen2_5_VL(get_preset("tiny"), nnx.Rngs(params=3))
    hf_io.save_hf(model, str(out), source_dir=str(TINY_TOKENIZER_DIR))
    if preprocessor is not None:
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return out


def test_hf_model_uses_its_own_processing_settings(tmp_path):
    hf = _tiny_hf_dir(tmp_path / "hf", {"min_pixels": 1000, "max_pixels": 50_000,
                                        "patch_size": 14, "merge_size": 2})
    config, info = M.eval_config(hf_dir=str(hf), overrides=["eval.batch_size=4"])
    assert info == {"hf": str(hf)}
    assert (config.model.hf_dir, config.data.tokenizer) == (str(hf), str(hf))
    assert (config.data.min_pixels, config.data.max_pixels) == (1000, 50_000)
    assert config.eval.max_new_tokens == 2048  # the official evaluation's limit
    # prompts up to the model's 32,768 positions minus the answer; 4 maps of 255 patches
    assert max(config.data.prompt_buckets) == 24576
    assert config.data.patch_buckets == (256, 512, 1024)
    # Not the tiny preset's training buckets.
    assert config.data.prompt_buckets != config_utils.get_config(preset="tiny").data.prompt_buckets


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A tiny-preset run directory with random params checkpointed at step 3."""
    workdir = tmp_path_factory.mktemp("run")
    config = config_utils.get_config(preset="tiny")
    config_utils.save_config(config, workdir)
    model = Qwen2_5_VL(get_preset("tiny"), nnx.Rngs(params=1))
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        mgr.save(3, {"params": nnx.state(model, nnx.Param), "step": jnp.int32(3)})
    return workdir


def test_interrupted_evaluation_resumes_to_the_same_report(tiny_workdir, tmp_path, monkeypatch):
    # 6 short-prompt questions (one prompt bucket: one compilation) in 3 batches of 2.
    argv = ["--workdir", str(tiny_workdir), "--data", "mapworld:tiny", "--questions_per_task",
            "2", "--set", "eval.tasks=('TorF1', 'TorF2', 'Counting3')", "--set",
            "eval.batch_size=2", "--set", "eval.max_new_tokens=6", "--no_progress"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    calls = sigterm_during_first_batch(monkeypatch)  # SIGTERM during the 1st batch
    part = tmp_path / "part"
    assert main([*argv, "--out", str(part)]) == INTERRUPTED
    cached = (part / "cli_step3.completions.jsonl").read_text().splitlines()
    assert len(cached) == 1 + 2 and len(calls) == 1  # header + the first batch, then stopped
    assert not (part / "cli_step3.json").exists()
    assert main([*argv, "--out", str(part)]) == 0
    assert len(calls) == 1 + 2  # resumed: only the 4 remaining questions were generated
    a = R.load_report(tmp_path / "full" / "cli_step3.json")
    b = R.load_report(part / "cli_step3.json")
    assert a["counts"]["scored"] == 6
    for key in ("summary", "samples", "counts", "model", "step"):
        assert a[key] == b[key], key
    # A cache written for another checkpoint is refused, not mixed in.
    fp = json.loads(cached[0])
    fp["fingerprint"]["model"]["step"] = 99
    (part / "cli_step3.completions.jsonl").write_text(json.dumps(fp) + "\n")
    assert main([*argv, "--out", str(part)]) == 1


def _hub_snapshot(cache: Path, kind: str, repo: str, content: Path) -> Path:
    """The huggingface_hub cache layout: <kind>s--org--name/snapshots/<rev>/..., refs/main."""
    base = cache / f"{kind}s--{repo.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(content, base / "snapshots" / rev)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    return base / "snapshots" / rev


def test_hub_repo_ids_through_the_offline_cache(tmp_path):
    cache = tmp_path / "hub"
    snap = _hub_snapshot(cache, "model", "org/tiny-vl", _tiny_hf_dir(tmp_path / "hf"))
    _hub_snapshot(cache, "dataset", "org/reasonmap-mini", FIX / "reasonmap")
    _hub_snapshot(cache, "dataset", "org/plus-mini", FIX / "reasonmap_plus")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rewardmap_jax.evaluate", "--hf_dir", "org/tiny-vl",
           "--data", "org/reasonmap-mini,org/plus-mini", "--questions_per_task", "1",
           "--set", "model.compute_dtype=float32", "--set", "eval.batch_size=6",
           "--set", "eval.max_new_tokens=4", "--out", str(out), "--no_progress"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = R.load_report(out / "tiny-vl.json")
    assert rep["counts"] == {"questions": 6, "scored": 6, "bad_rows": 0}
    assert rep["model"] == {"hf": "org/tiny-vl", "path": str(snap)}
    assert "org/reasonmap-mini (reasonmap), org/plus-mini (reasonmap_plus)" in \
        rep["data"]["datasets"]
    # A repo the cache lacks fails clearly, offline, before any weights are read.
    cmd[cmd.index("org/tiny-vl")] = "org/missing"
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "cannot get the Hugging Face model 'org/missing'" in run.stderr
