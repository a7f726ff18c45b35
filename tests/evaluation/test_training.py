"""Evaluation inside training: on the configured data (held-out ReasonMap / Plus files when
`data.source="reasonmap"`, the map world with its marked stations otherwise), never at step 0
when there is no warm start, stopped between batches by SIGTERM and resumed on restart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rewardmap_jax.evaluation import TrainingEvaluator, cli
from rewardmap_jax.evaluation import report as R
from rewardmap_jax.mapworld.generator import get_world, make_record
from rewardmap_jax.rl import trainer
from rewardmap_jax.run.metrics_writer import read_metrics
from tests.evaluation.sigterm import sigterm_during_first_batch
from tests.rl.small_config import get_config

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _fake_rl_step(step):  # the loop around evaluation is under test, not GRPO
    return {"stage": 0, "stage_name": "small"}


def test_real_data_evaluation_in_training_survives_sigterm(tmp_path, monkeypatch):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.data.source = "reasonmap"
    c.data.shard = "none"
    c.data.reasonmap_train_dir = str(FIX / "reasonmap_train")
    c.data.reasonmap_dir = str(FIX / "reasonmap")
    c.data.reasonmap_plus_dir = str(FIX / "reasonmap_plus")
    c.eval.split = "test"
    c.eval.at_sft_end = True  # no warm start (sft.steps 0): must not evaluate at step 0
    c.eval.final = True
    c.eval.questions_per_task = 1  # a cap: one question of each type
    c.eval.batch_size = 2
    c.eval.max_new_tokens = 4
    calls = sigterm_during_first_batch(monkeypatch)  # SIGTERM during the 1st batch
    t = trainer.Trainer(c, tmp_path)
    t.rl_step = _fake_rl_step
    t.train()
    ev = tmp_path / "eval"
    assert len(calls) == 1 and not (ev / "final.json").exists()  # stopped between batches
    assert len((ev / "final.completions.jsonl").read_text().splitlines()) == 1 + 2
    assert not list(ev.glob("warm_start*"))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["preempted"] and summary["reports"] == []

    t = trainer.Trainer(c, tmp_path)  # restart: resumes the final evaluation from its cache
    t.rl_step = _fake_rl_step
    t.train()
    assert len(calls) == 1 + 2
    rep = R.load_report(ev / "final.json")
    assert rep["counts"]["scored"] == 6 and rep["step"] == 1
    assert {s["source"] for s in rep["samples"]} == {"reasonmap", "reasonmap_plus"}
    assert "reasonmap/map_score_short/official" in rep["summary"] or \
        "reasonmap/map_score_long/official" in rep["summary"]
    assert str(FIX / "reasonmap") in rep["data"]["datasets"]
    assert (tmp_path / "gallery" / "eval_final.html").exists()
    assert "| final | 1 | 6 |" in (ev / "summary.md").read_text()
    logged = [r for r in read_metrics(tmp_path) if "eval/accuracy/mean" in r]
    assert [r["step"] for r in logged] == [1]
    assert not list(ev.glob("warm_start*"))


def test_mapworld_evaluation_uses_the_runs_marked_maps(tmp_path):
    c = get_config()  # the tiny preset marks the stations a question names
    assert c.train.highlight_stations
    records = TrainingEvaluator(c, tmp_path).data(1).records
    plain = get_world(c.data.mapworld_world)
    marked = get_world(c.data.mapworld_world, highlight=True)
    rec = next(r for r in records if r.type == "TorF1")
    index = int(rec.uid.split("/")[2])
    same = make_record(marked, c.eval.split, index, "TorF1").figure
    other = make_record(plain, c.eval.split, index, "TorF1").figure
    assert np.array_equal(np.asarray(rec.figure), np.asarray(same))
    assert not np.array_equal(np.asarray(rec.figure), np.asarray(other))
    # The CLI on a run directory reads the same questions (same maps).
    args = argparse.Namespace(data=None, workdir=str(tmp_path), split=None,
                              questions_per_task=1, reasonmap_dir="", reasonmap_plus_dir="")
    cli_records = cli.load_data(args, c).records
    got = next(r for r in cli_records if r.uid == rec.uid)
    assert np.array_equal(np.asarray(got.figure), np.asarray(same))


def test_extended_run_evaluates_its_new_final_step(tmp_path):
    """A finished run resumed with a larger train.rl_steps (found by scripts/rehearsal.py):
    its `final` evaluation at the new last step replaces the earlier one's completion cache
    instead of refusing it."""
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.eval.final = True
    c.eval.questions_per_task = 1
    c.eval.tasks = ("TorF1",)
    c.eval.batch_size = 2
    c.eval.max_new_tokens = 2
    for steps in (1, 2):
        c.train.rl_steps = steps
        t = trainer.Trainer(c, tmp_path)
        t.rl_step = _fake_rl_step
        t.train()
        rep = R.load_report(tmp_path / "eval" / "final.json")
        assert rep["step"] == steps
        header = (tmp_path / "eval" / "final.completions.jsonl").read_text().splitlines()[0]
        assert json.loads(header)["fingerprint"]["step"] == steps
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["step"] == 2 and [r["step"] for r in summary["reports"]] == [2]
