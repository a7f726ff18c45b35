"""benchmarks/accelerator.py runs end to end on CPU (`--tiny`) without ml_collections or grain
(the device machine has neither), and its restated official values match the presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs.curriculum import get_config
from rewardmap_jax.rl import grpo

REPO = Path(__file__).resolve().parents[1]
# Runs the script with ml_collections and grain made unimportable.
_BLOCKED_RUN = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ml_collections", "grain"):
            raise ImportError("not on the device machine: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["accelerator.py", "--tiny", "--out", sys.argv[1]]
runpy.run_path("benchmarks/accelerator.py", run_name="__main__")
"""


def test_official_values_match_the_3b_preset():
    sys.path.insert(0, str(REPO))
    from benchmarks.accelerator import OFFICIAL

    c = get_config("qwen2_5_vl_3b")
    for k, v in OFFICIAL["optim"].items():
        assert c.optim[k] == v, k
    assert grpo.GRPOLossConfig(**OFFICIAL["loss"]) == grpo.GRPOLossConfig.from_config(c.rl)
    for k, v in OFFICIAL["model"].items():
        assert c.model[k] == v, k
    assert c.rl.logprob_chunk == OFFICIAL["logprob_chunk"]
    assert c.rl.sequence_layout == OFFICIAL["sequence_layout"]


@pytest.mark.slow
def test_tiny_run_without_ml_collections_or_grain(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "accelerator.json").read_text())
    assert res["errors"] == {}
    for phase in ("prefill", "decode", "logprobs", "update", "grpo_step"):
        assert res[phase]["tokens_per_s"] > 0, phase
    assert set(res["compile_s"]) == {"prefill", "rollout", "logprobs", "update"}
    lp = res["logits_bf16_vs_fp32_cpu"]
    assert lp["argmax_agree"] > 0.9 and 0 < lp["max_abs_diff"] < 0.1 and lp["mean_kl"] < 1e-3
    row = (tmp_path / "accelerator.md").read_text().splitlines()
    assert row[0].startswith("| device |") and row[2].startswith("| cpu |")
