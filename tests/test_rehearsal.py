"""The reduced rehearsal of the real-preset code path (scripts/rehearsal.py, docs/scaling.md):
`configs/curriculum.py:qwen2_5_vl_3b` from a random multi-shard HF checkpoint with Qwen's
vocabulary size and special-token ids, real-format ReasonMap data with maps of four sizes,
8 fake devices: 2 GRPO steps -> held-out evaluation -> checkpoint -> resumed 3rd step -> export
-> transformers reload (logits equal to the JAX model's). Each phase runs as its own process, as
a user runs it. The script's comparison with an uninterrupted 3-step run is left out here (a
third training process; resumed == uninterrupted is tests/test_resume.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.rehearsal  # `pytest -m 'not rehearsal'` leaves it out (~10 GB peak RSS)
def test_reduced_rehearsal(tmp_path):
    work = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(_REPO / "scripts" / "rehearsal.py"),
                           "--workdir", str(work), "--no-uninterrupted"],
                          capture_output=True, text=True, cwd=_REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((work / "rehearsal.json").read_text())
    assert s["failures"] == []
    assert [p["phase"] for p in s["phases"]] == [
        "prepare", "train", "resume", "export", "reload"]
    # The checkpoint the run loaded: several shards, Qwen's vocabulary.
    assert s["prepare"]["shards"] >= 3 and s["prepare"]["vocab_size"] == 151936
    assert (work / "hf" / "model.safetensors.index.json").is_file()
    assert min(s["distinct_map_sizes"].values()) >= 3
    # GRPO steps 1-2, then the resumed 3rd; checkpoints at 2 and 3; held-out evaluation.
    assert sorted(s["step_metrics"]) == ["1", "2", "3"]
    assert s["resumed_from_step_2"] and {2, 3} <= set(s["checkpoints"])
    assert s["train_summary"]["step"] == 3 and not s["train_summary"]["preempted"]
    assert s["eval"]["final"]["step"] == 3
    assert all(v is not None for v in s["step_metrics"]["3"].values())
    # The export, reloaded by transformers, at Qwen's ids, equal to the JAX model.
    r = s["reload"]
    assert r["vocab_size"] == 151936 and r["image_token_id"] == r["tokenizer_image_pad"] == 151655
    assert r["same_argmax"] and r["logits_max_abs_diff"] < 1e-4 * max(1.0, r["logits_scale"])
    assert (work / "export" / "preprocessor_config.json").is_file()
