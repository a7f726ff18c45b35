"""export (checkpoint -> HF directory); the evaluate CLI is tested in tests/evaluation/."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardmap_jax import config_utils, evaluate, export
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


def test_export_and_evaluate_with_relative_paths(tiny_run, monkeypatch, capsys):
    """`export --workdir RUN --out DIR` and `evaluate --workdir RUN --out DIR` with paths
    relative to the current directory (Orbax refuses relative paths; the CLIs resolve them)."""
    workdir, params = tiny_run
    monkeypatch.chdir(workdir.parent)
    run = workdir.name
    assert export.main(["--workdir", run, "--step", "4", "--out", "exported/rel"]) == 0, (
        capsys.readouterr().err
    )
    summary = json.loads(capsys.readouterr().out)
    out = workdir.parent / "exported" / "rel"
    assert summary["workdir"] == str(workdir) and summary["out"] == str(out)
    loaded = hf_io.load_hf(str(out))
    a, b = _leaves(nnx.state(loaded, nnx.Param))[0], _leaves(params[4])[0]
    np.testing.assert_array_equal(a, b)
    # The image processor of the run: its pixel limits, the tower's patch and merge sizes.
    pre = json.loads((out / export.PREPROCESSOR_CONFIG).read_text())
    config = config_utils.load_config(workdir)
    assert (pre["min_pixels"], pre["max_pixels"]) == (config.data.min_pixels,
                                                      config.data.max_pixels)
    assert pre["size"] == {"shortest_edge": pre["min_pixels"], "longest_edge": pre["max_pixels"]}
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (14, 2, 2)

    argv = ["--workdir", run, "--step", "4", "--questions_per_task", "1", "--out", "reports",
            "--no_progress"]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    assert (workdir.parent / "reports" / "cli_step4.json").exists()
