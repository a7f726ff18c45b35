"""A run that cannot work fails before any weight is loaded, with every problem named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardmap_jax.config_utils import ConfigError
from rewardmap_jax.model.config import tiny, to_hf_config
from rewardmap_jax.rl import inputs, trainer
from tests.rl.small_config import get_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def no_weights(monkeypatch):
    """`build_model` (weights) must never be reached: it raises if it is."""
    def refuse(*_a, **_k):
        raise AssertionError("the model was built before the run's inputs were checked")

    monkeypatch.setattr(trainer, "build_model", refuse)


def test_every_problem_is_named_before_weights(tmp_path, no_weights):
    c = get_config()
    c.reward.mode = "sparse"  # not a mode
    c.data.source = "reasonmap"
    c.data.reasonmap_train_dir = str(tmp_path / "nowhere")
    c.eval.final = True
    with pytest.raises(ConfigError) as e:
        trainer.Trainer(c, tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith("this run cannot start (nothing was loaded)")
    assert "reward.mode must be 'difficulty_aware' or 'baseline', got 'sparse'" in msg
    assert "GRPO data" in msg and "nowhere" in msg
    assert "held-out data" in msg  # no reasonmap_dir / reasonmap_plus_dir to evaluate on
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tokenizer_that_disagrees_with_the_model(tmp_path, no_weights):
    """The tiny tokenizer beside a model config with Qwen's real vision ids (a weights
    directory paired with the wrong tokenizer): image placeholders would never be filled."""
    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = to_hf_config(tiny())
    cfg.update(image_token_id=151655, video_token_id=151656)
    (hf / "config.json").write_text(json.dumps(cfg))
    c = get_config()
    c.model.hf_dir = str(hf)
    c.data.tokenizer = "tiny"
    with pytest.raises(ConfigError) as e:
        trainer.Trainer(c, tmp_path / "run")
    assert "image_pad is id 1036, the model config says 151655" in str(e.value)
    assert "video_pad is id 1037, the model config says 151656" in str(e.value)
    c.data.tokenizer = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"tokenizer .*missing.* does not exist"):
        trainer.Trainer(c, tmp_path / "run")


def test_a_valid_config_reaches_the_weights(tmp_path, no_weights):
    c = get_config()
    c.data.source = "reasonmap"
    c.data.reasonmap_train_dir = str(FIXTURES / "reasonmap_train")
    c.curriculum.preset = "official"
    c.curriculum.stages = ()
    c.sft.steps = 0
    got = inputs.prepare_inputs(c, tmp_path)
    assert got.rl_data.num_steps and got.sft_data is None
    with pytest.raises(AssertionError, match="model was built before"):  # checks passed
        trainer.Trainer(c, tmp_path / "run")
