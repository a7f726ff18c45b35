"""export (checkpoint -> HF directory) and evaluate (records + completions -> reports) CLIs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax import config_utils, evaluate, export
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.mapworld.records import TASK_TYPES
from rewardmap_jax.model import build, hf_io
from rewardmap_jax.model.qwen2_5_vl import Qwen2_5_VL
from rewardmap_jax.run import checkpoint as ck


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with the tiny preset's config and params checkpointed at steps 4 and 8."""
    workdir = tmp_path_factory.mktemp("run")
    config = config_utils.get_config(preset="tiny")
    config_utils.save_config(config, workdir)
    model_cfg = build.model_config(config)
    params = {}
    with ck.CheckpointManager(workdir, async_save=False, handle_preemption=False) as mgr:
        for step, seed in ((4, 1), (8, 2)):
            model = Qwen2_5_VL(model_cfg, nnx.Rngs(params=seed))
            params[step] = nnx.state(model, nnx.Param)
            mgr.save(step, {"params": params[step], "step": jnp.int32(step)})
    return workdir, params


def _leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_export_writes_an_hf_directory_with_the_checkpoint_params(tiny_run, tmp_path, capsys):
    workdir, params = tiny_run
    out = tmp_path / "hf"
    assert export.main(["--workdir", str(workdir), "--step", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["safetensors"] == ["model.safetensors"]
    assert json.loads((out / "rewardmap_export.json").read_text())["step"] == 4
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    loaded = hf_io.load_hf(str(out))
    for a, b in zip(_leaves(nnx.state(loaded, nnx.Param)), _leaves(params[4]), strict=True):
        np.testing.assert_array_equal(a, b)
    # Default: the latest checkpoint.
    latest = export.export_checkpoint(workdir, tmp_path / "hf8")
    assert latest["step"] == 8
    loaded8 = hf_io.load_hf(str(tmp_path / "hf8"))
    a, b = _leaves(nnx.state(loaded8, nnx.Param))[0], _leaves(params[8])[0]
    np.testing.assert_array_equal(a, b)


def test_export_errors_are_clear(tiny_run, tmp_path, capsys):
    workdir, _ = tiny_run
    assert export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert export.main(["--workdir", str(workdir), "--step", "5", "--out", str(tmp_path)]) == 1
    assert "available steps: [4, 8]" in capsys.readouterr().err
    # A checkpoint whose params do not fit the configured model.
    bad = tmp_path / "bad"
    config_utils.save_config(config_utils.get_config(preset="tiny"), bad)
    with ck.CheckpointManager(bad, async_save=False, handle_preemption=False) as mgr:
        mgr.save(1, {"params": {"w": jnp.zeros(3)}})
    assert export.main(["--workdir", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "do not match the model the run config describes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _records(per_type: int = 2):
    return evaluate.load_records("mapworld:tiny", split="test", per_type=per_type)


def test_load_records_from_mapworld():
    records = _records()
    assert [r.type for r in records] == [t for t in TASK_TYPES for _ in range(2)]
    assert len({r.uid for r in records}) == len(records)
    with pytest.raises(ValueError, match="--data must be"):
        evaluate.load_records("imagenet", split="test", per_type=1)


def test_evaluate_scores_completions_file(tmp_path, capsys):
    records = _records()
    # First record of each type answered with the reference, the second with junk.
    rows = [
        {"uid": r.uid, "completion": answer_text(r) if i % 2 == 0 else "I am not sure."}
        for i, r in enumerate(records)
    ]
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--completions", str(path), "--data", "mapworld:tiny", "--per_type", "2"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "rep")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["plus/acc"] == 0.5
    report = json.loads((tmp_path / "rep" / "eval_outputs.json").read_text())
    summary = report["summary"]
    assert summary["count/plus/acc"] == 10
    for t in TASK_TYPES[:-1]:
        assert summary[f"plus/acc_{t}"] == 0.5
    planning = [s for s in report["samples"] if s["type"] == "planning"]
    assert [s["acc"] for s in planning] == [1.0, 0.0]
    assert planning[0]["map_score"] > planning[1]["map_score"] == 0.0
    assert report["completions"][1]["completion"] == "I am not sure."
    md = (tmp_path / "rep" / "eval_outputs.md").read_text()
    assert "| plus/acc | 50.00% | 10 |" in md


def test_evaluate_input_errors(tmp_path, capsys):
    records = _records(1)
    path = tmp_path / "partial.jsonl"
    path.write_text(json.dumps({"uid": records[0].uid, "completion": "yes"}) + "\n")
    argv = ["--data", "mapworld:tiny", "--per_type", "1", "--out", str(tmp_path)]
    assert evaluate.main(["--completions", str(path), *argv]) == 1
    assert "no completion for 5 of 6 records" in capsys.readouterr().err
    path.write_text('{"uid": "x"}\n')
    assert evaluate.main(["--completions", str(path), *argv]) == 1
    assert "partial.jsonl:1: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # exactly one source of completions
        evaluate.main(["--completions", str(path), "--hf_dir", str(tmp_path)])


def test_evaluate_generation_needs_the_trainer_hook(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate, "GENERATE_MODULE", "rewardmap_jax.rl.no_such_trainer")
    argv = ["--hf_dir", str(tmp_path), "--data", "mapworld:tiny", "--per_type", "1"]
    assert evaluate.main([*argv, "--out", str(tmp_path)]) == 1
    assert "--completions FILE.jsonl" in capsys.readouterr().err
    assert not list(tmp_path.glob("eval_*"))


def test_exported_directory_loads_in_transformers(tiny_run, tmp_path):
    """The product: `from_pretrained` takes the export with no missing or unexpected keys."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    workdir, params = tiny_run
    out = tmp_path / "hf"
    export.export_checkpoint(workdir, out, step=8)
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(out), output_loading_info=True, dtype=torch.float32
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    lm = params[8]["language_model"]
    hf_lm = model.model.language_model
    np.testing.assert_array_equal(
        hf_lm.embed_tokens.weight.detach().numpy(), np.asarray(lm["embed_tokens"].get_value())
    )
    down = np.asarray(lm["layers"][0]["mlp"]["down_proj"]["kernel"].get_value())
    np.testing.assert_array_equal(hf_lm.layers[0].mlp.down_proj.weight.detach().numpy(), down.T)


def test_evaluate_generates_through_the_trainer_hook(tiny_run, tmp_path, monkeypatch, capsys):
    import importlib.machinery
    import sys
    import types

    calls = []

    def generate_completions(config, sources, *, workdir, hf_dir, step):
        calls.append((config.preset, sorted(sources), workdir, hf_dir, step))
        records = [sources[t][i] for t in sorted(sources) for i in range(len(sources[t]))]
        return records, [answer_text(r) for r in records]

    fake = types.ModuleType("fake_trainer_hook")
    fake.__spec__ = importlib.machinery.ModuleSpec("fake_trainer_hook", None)
    fake.generate_completions = generate_completions
    monkeypatch.setitem(sys.modules, "fake_trainer_hook", fake)
    monkeypatch.setattr(evaluate, "GENERATE_MODULE", "fake_trainer_hook")
    workdir, _ = tiny_run
    out = tmp_path / "rep"
    argv = ["--workdir", str(workdir), "--step", "4", "--per_type", "1", "--out", str(out)]
    assert evaluate.main(argv) == 0
    assert calls == [("tiny", sorted(TASK_TYPES), str(workdir), None, 4)]
    report = json.loads((out / "eval_step_4.json").read_text())
    assert report["summary"]["plus/acc"] == 1.0
    assert [s["acc"] for s in report["samples"]] == [1.0] * len(TASK_TYPES)
    assert json.loads(capsys.readouterr().out)["plus/acc"] == 1.0
