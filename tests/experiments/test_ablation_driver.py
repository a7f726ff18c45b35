"""The ablation driver's plan and resumption, with the training subprocess and the collection
replaced by fakes (the real runs are what `--scale quick` exercises)."""

from __future__ import annotations

import json

import pytest

from rewardmap_jax.experiments import ablation, collect


@pytest.fixture
def fake_runs(monkeypatch):
    """Each "run" writes a finished train_summary.json; the calls are recorded."""
    calls = []

    def train(cmd, path, progress=None):
        calls.append(cmd)
        if "FAIL" in path.name:
            raise RuntimeError("boom")
        path.mkdir(parents=True, exist_ok=True)
        (path / "train_summary.json").write_text(json.dumps({"step": 5, "total": 5}))
        return {"wall_s": 1.0, "load_start": 0.1, "load_end": 0.1}

    def summarize(path):
        return {"final": {"accuracy": {"planning": 0.5}, "reward_full": {"planning": 1.0}},
                "curve": [], "train_curve": [], "train_s": 1.0}

    monkeypatch.setattr(ablation, "train", train)
    monkeypatch.setattr(collect, "summarize_run", summarize)
    return calls


def test_plan_warm_starts_first_then_arms_from_them(fake_runs, tmp_path):
    results = tmp_path / "r.jsonl"
    args = ["--seeds", "2", "--scale", "quick", "--arms", "sparse_rl,sft_only",
            "--workdir", str(tmp_path / "w"), "--results", str(results)]
    assert ablation.main(args) == 0
    presets = [c[c.index("--config") + 1].split(":")[-1] for c in fake_runs]
    assert presets == ["warm_start@quick"] * 2 + ["sparse_rl@quick", "sft_only@quick"] * 2
    inits = [next((a for a in c if a.startswith("--config.train.init_from=")), None)
             for c in fake_runs]
    assert inits[:2] == [None, None]
    assert inits[4].endswith("warm_start/seed1") and "--config.seed=1" in fake_runs[4]
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("warm_start", 0), ("warm_start", 1), ("sparse_rl", 0), ("sparse_rl", 1),
        ("sft_only", 0), ("sft_only", 1)]
    assert {r["scale"] for r in rows} == {"quick"}
    # A second call finds everything done and trains nothing.
    fake_runs.clear()
    assert ablation.main(args) == 0
    assert fake_runs == []


def test_a_finished_run_without_a_row_is_collected_not_retrained(fake_runs, tmp_path):
    work = tmp_path / "w"
    done = ablation.run_dir(work, "warm_start", 0)
    done.mkdir(parents=True)
    (done / "train_summary.json").write_text(json.dumps({"step": 5, "total": 5}))
    unfinished = ablation.run_dir(work, "sparse_rl", 0)
    unfinished.mkdir(parents=True)
    (unfinished / "train_summary.json").write_text(json.dumps({"step": 3, "total": 5}))
    ablation.main(["--seeds", "1", "--scale", "quick", "--arms", "sparse_rl", "--workdir",
                   str(work), "--results", str(tmp_path / "r.jsonl")])
    assert [c[c.index("--workdir") + 1] for c in fake_runs] == [str(unfinished)]


def test_committed_rows_count_as_done_in_a_fresh_checkout(fake_runs, tmp_path):
    """The study runs in pieces: rows collected elsewhere (the committed results file) are not
    re-run in a new workdir; a warm start is re-run only for a seed with an arm still to run."""
    results = tmp_path / "r.jsonl"
    args = ["--seeds", "2", "--scale", "quick", "--arms", "sparse_rl,sft_only",
            "--results", str(results)]
    assert ablation.main([*args, "--workdir", str(tmp_path / "first")]) == 0
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    # Drop seed 1's sft_only row: the only arm left to run.
    kept = [r for r in rows if (r["arm"], r["seed"]) != ("sft_only", 1)]
    results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    fake_runs.clear()
    fresh = tmp_path / "fresh"  # none of the first workdir's checkpoints
    assert ablation.main([*args, "--workdir", str(fresh)]) == 0
    ran = [(c[c.index("--config") + 1].split(":")[-1], c[c.index("--workdir") + 1])
           for c in fake_runs]
    assert ran == [("warm_start@quick", str(ablation.run_dir(fresh, "warm_start", 1))),
                   ("sft_only@quick", str(ablation.run_dir(fresh, "sft_only", 1)))]
    assert len(results.read_text().splitlines()) == len(rows)


def test_bad_arguments_fail_before_any_run(fake_runs, tmp_path):
    for bad in (["--arms", "nope"], ["--scale", "huge"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            ablation.main([*bad, "--workdir", str(tmp_path)])
    assert fake_runs == []


def test_another_world_is_an_override_of_every_run_and_its_own_results(fake_runs, tmp_path):
    results = tmp_path / "r.jsonl"
    args = ["--seeds", "1", "--scale", "quick", "--arms", "sparse_rl", "--world", "route_grid",
            "--workdir", str(tmp_path / "w"), "--results", str(results)]
    assert ablation.main(args) == 0
    assert len(fake_runs) == 2
    assert all("--config.data.mapworld_world=route_grid" in c for c in fake_runs)
    # Default paths of a study on another world carry its name.
    assert ablation.results_path("full", "route_grid").name == "ablation_route_grid.jsonl"
    assert ablation.results_path("quick").name == "ablation_quick.jsonl"
    # The study's own world adds no override.
    fake_runs.clear()
    own = ["--seeds", "1", "--scale", "quick", "--arms", "sparse_rl", "--workdir",
           str(tmp_path / "own"), "--results", str(tmp_path / "own.jsonl")]
    assert ablation.main(own) == 0
    assert not any(a.startswith("--config.data.mapworld_world") for c in fake_runs for a in c)


def test_rows_of_another_world_are_refused_before_any_run(fake_runs, tmp_path):
    results = tmp_path / "r.jsonl"
    row = {"arm": "warm_start", "seed": 0, "world": "route", "final": {}}
    results.write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit, match="map world route, this study runs on 'route_grid'"):
        ablation.main(["--seeds", "1", "--scale", "quick", "--world", "route_grid",
                       "--workdir", str(tmp_path / "w"), "--results", str(results)])
    with pytest.raises(ValueError, match="unknown map-world preset 'nope'"):
        ablation.main(["--seeds", "1", "--scale", "quick", "--world", "nope",
                       "--workdir", str(tmp_path / "w"), "--results", str(results)])
    assert fake_runs == []
