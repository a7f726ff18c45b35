"""Config keys: a key the code does not read is refused before anything runs, with the reason
when it is one the code used to have."""

from __future__ import annotations

import ml_collections as mlc
import pytest

from rewardmap_jax import config_utils
from rewardmap_jax.config_utils import ConfigError


@pytest.mark.parametrize("preset", ["tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_presets_have_only_known_keys(preset):
    config_utils.validate_config(config_utils.get_config(preset=preset))


@pytest.mark.parametrize(("section", "key", "reason"), [
    ("eval", "temperature", "evaluation always decodes greedily; the key was never read"),
    ("rl", "prompt_buckets", "prompts are bucketed by data.prompt_buckets"),
    ("eval", "max_questions", "use eval.questions_per_task"),
    ("data", "nope", "the config has no such key"),
])
def test_dead_and_unknown_keys_are_refused(section, key, reason):
    d = config_utils.get_config(preset="tiny").to_dict()
    d[section][key] = 1
    with pytest.raises(ConfigError, match=f"unknown config key '{section}.{key}' \\({reason}"):
        config_utils.validate_config(mlc.ConfigDict(d))
