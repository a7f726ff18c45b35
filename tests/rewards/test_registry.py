"""User rewards from `path/file.py:fn` and the built-in `rewardmap` behind one interface."""

from __future__ import annotations

import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.rewards import make_reward_fn, register
from rewardmap_jax.rewards.registry import normalize_scores, registered
from tests.rewards.worlds import plan_text, planning, vqa

USER_FILE = """
import numpy as np

def length_reward(records, completions):
    n = np.array([len(c) for c in completions], dtype=np.float64)
    return {"overall": n / 10.0, "length": n}

def per_item(records, completions):
    return [{"overall": 1.0 if r.type == "TorF1" else 0.0, "x": 2} for r in records]

def with_config(records, completions, config):
    return {"overall": [float(config.correct)] * len(completions)}

def no_overall(records, completions):
    return {"score": [0.0] * len(completions)}

def wrong_length(records, completions):
    return {"overall": [0.0]}

def compute_score(reward_inputs):
    return [
        {"overall": float(x["response"] == "\\\\boxed{yes}"), "accuracy": x["ground_truth"]}
        for x in reward_inputs
    ]

def not_finite(records, completions):
    return {"overall": [float("nan")] * len(completions)}
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(USER_FILE)
    return str(path)


def _cfg(fn):
    cfg = get_config().reward
    cfg.fn = fn
    return cfg


def test_user_reward_from_file(user_file):
    recs = [vqa("TorF1", 1), vqa("Counting2", 3)]
    out = make_reward_fn(_cfg(f"{user_file}:length_reward"))(recs, ["abcd", "ab"])
    np.testing.assert_allclose(out["overall"], [0.4, 0.2])
    assert out["overall"].dtype == np.float32 and set(out) == {"overall", "length"}
    out = make_reward_fn(_cfg(f"{user_file}:per_item"))(recs, ["", ""])
    np.testing.assert_array_equal(out["overall"], [1.0, 0.0])
    np.testing.assert_array_equal(out["x"], [2.0, 2.0])
    out = make_reward_fn(_cfg(f"{user_file}:with_config"))(recs, ["", ""])
    np.testing.assert_array_equal(out["overall"], [10.0, 10.0])
    # EasyR1 batch style: one argument, a list of input dicts
    out = make_reward_fn(_cfg(f"{user_file}:compute_score"))(recs, ["\\boxed{yes}", "x"])
    np.testing.assert_array_equal(out["overall"], [1.0, 0.0])
    np.testing.assert_array_equal(out["accuracy"], [1.0, 3.0])


@pytest.mark.parametrize(
    "fn, match",
    [
        ("no_overall", "need an 'overall' key"),
        ("wrong_length", "has 1 values for 2 completions"),
        ("not_finite", "non-finite"),
        ("missing_fn", "has no callable 'missing_fn'"),
    ],
)
def test_user_reward_errors(user_file, fn, match):
    with pytest.raises(ValueError, match=match):
        make_reward_fn(_cfg(f"{user_file}:{fn}"))([vqa("TorF1", 1)] * 2, ["", ""])


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="not registered"):
        make_reward_fn(_cfg("no_such_reward"))
    with pytest.raises(ValueError, match="no file"):
        make_reward_fn(_cfg(str(tmp_path / "absent.py") + ":fn"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="importing .* failed: RuntimeError\\('boom'\\)"):
        make_reward_fn(_cfg(f"{broken}:fn"))
    with pytest.raises(ValueError, match="3 score dicts for 2"):
        normalize_scores([{"overall": 1}] * 3, 2, "r")


def test_builtin_is_registered_and_custom_names_register():
    assert "rewardmap" in registered()
    rec = planning("A", "D", 0)
    out = make_reward_fn(_cfg("rewardmap"))([rec], [plan_text([("Line 1", "A", "D")])])
    assert float(out["overall"][0]) == pytest.approx(10.5)

    @register("constant_for_test")
    def _factory(cfg):
        return lambda records, completions: {"overall": np.ones(len(completions))}

    out = make_reward_fn(_cfg("constant_for_test"))([rec], ["x"])
    np.testing.assert_array_equal(out["overall"], [1.0])
    with pytest.raises(ValueError, match="already registered"):
        register("rewardmap")(_factory)
