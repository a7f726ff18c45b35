"""docs/reproduction.md is generated from the committed metric rows, identically, and its
numbers and verdicts follow from the rows (synthetic rows with known differences)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rewardmap_jax.experiments import ablation, tables

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_reproduction.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_reproduction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(arm, seed, planning, torf1=0.5):
    final = {"accuracy": {"planning": planning, "TorF1": torf1},
             "reward_full": {"planning": 10 * planning, "TorF1": 10 * torf1},
             "planning": {"transfers": {"0": {"n": 10, "accuracy": planning,
                                              "reward_full": 10 * planning},
                                        "1": {"n": 10, "accuracy": planning / 2,
                                              "reward_full": 5 * planning}},
                          "difficulty": {"easy": {"n": 20, "accuracy": planning,
                                                  "reward_full": 10 * planning}}}}
    return {"arm": arm, "seed": seed, "final": final, "commit": "abc", "train_s": 60.0,
            "load_start": 1.0, "curve": [{"step": 50, "accuracy": {"planning": planning}}],
            "train_curve": [{"step": 10, "accuracy/planning": planning}]}


def test_checked_in_doc_matches_the_committed_metrics():
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_regeneration_is_byte_identical(tmp_path):
    args = ["--doc", str(tmp_path / "a.md"), "--figure", str(tmp_path / "a.png")]
    for _ in range(2):
        assert _script().main(args) == 0
        first = (tmp_path / "a.md").read_bytes()
    assert (tmp_path / "a.png").stat().st_size > 10_000
    assert first == (ROOT / "docs" / "reproduction.md").read_bytes()


def test_numbers_and_verdicts_follow_the_rows():
    mod = _script()
    study = ablation.load_study(ROOT / "configs" / "ablation.py")
    rows = [_row("warm_start", 0, 0.1)]
    for s, noise in enumerate((0.0, 0.01, -0.01)):
        rows += [_row("sparse_rl", s, 0.20 + noise), _row("plus_tasks", s, 0.20 - noise),
                 _row("detail", s, 0.30 + noise), _row("difficulty", s, 0.30 + noise),
                 _row("rewardmap", s, 0.10 + noise), _row("sft_only", s, 0.25)]
    text = mod.render(rows, study)
    assert "| `detail` | 3 | 0.300 ± 0.006 |" in text
    claims = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
              if line.startswith("| The ") or line.startswith("| Perception")}
    assert claims["The detail reward helps planning over correctness alone"].endswith(
        "**holds** |")
    assert claims["The difficulty-aware weight adds to the detail reward"].endswith(
        "not resolved (|t| < 4.303) |")
    assert claims["The perception-to-planning curriculum adds to the reward"].endswith(
        "**reversed** |")
    stat = tables.paired(rows, "detail", "plus_tasks", "planning/accuracy")
    assert stat[0] == pytest.approx(0.1) and stat[2] == 3
    assert math.isnan(tables.mean_se([0.3])[1])


def test_verdicts_use_students_t_for_few_seeds():
    mod = _script()
    # t = 5 resolves with 3 seeds (critical 4.30) but not with 2 (12.7); 30 seeds use ~2.04.
    assert mod.verdict((0.05, 0.01, 3)) == "**holds**"
    assert mod.verdict((0.05, 0.01, 2)) == "not resolved (|t| < 12.706)"
    assert mod.verdict((-0.05, 0.01, 4)) == "**reversed**"
    assert mod.t_crit(31) == 2.042 and mod.t_crit(100) == 1.96 and mod.t_crit(14) == 2.228
    assert mod.verdict((0.05, 0.01, 1)) == "not measured"
