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


# --- the Discussion: synthetic rows with per-question results ------------------------------------

N_Q = 100  # questions per task


def _hits(k, n=N_Q, start=0):
    return {"index": list(range(start, start + n)), "accuracy": [1] * k + [0] * (n - k),
            "reward_full": [10.0] * k + [0.0] * (n - k)}


def _qrow(arm, seed, planning, counting3=90, torf1=50, start=0):
    """A row whose planning / Counting3 / TorF1 answers get `planning` (etc.) of N_Q questions
    right, with per-question results on indices start .. start + N_Q - 1."""
    per = {"planning": _hits(planning, start=start), "Counting3": _hits(counting3, start=start),
           "TorF1": _hits(torf1, start=start)}
    acc = {t: sum(e["accuracy"]) / N_Q for t, e in per.items()}
    final = {"accuracy": acc, "n": {t: N_Q for t in per},
             "reward_full": {t: 10 * a for t, a in acc.items()}, "per_question": per}
    rl = 0 if arm in ("warm_start", "sft_only") else 200
    sft = {"warm_start": 1500, "sft_only": 200}.get(arm, 0)
    return {"arm": arm, "seed": seed, "final": final, "commit": "abc", "world": "route",
            "steps": {"rl": rl, "sft": sft},
            "curve": [{"step": 100, "accuracy": {"planning": acc["planning"]}},
                      {"step": 200, "accuracy": {"planning": acc["planning"]}}],
            "train_curve": [{"step": 200, "accuracy/planning": acc["planning"],
                             "reward/mean": 10 * acc["planning"]}]}


def _study_rows():
    """Per seed s (noise n = 0, +1, -1, in questions of 100): warm start 20; sparse_rl 20 + n
    but Counting3 40 (warm start 90: a Plus-task loss); plus_tasks 20 - n; detail 40 + n
    (detail - plus_tasks = 20 + 2n: holds); difficulty 40 + n (difficulty - detail = 0:
    not resolved); rewardmap 25 + 2n (rewardmap - difficulty = -15 + n: reversed); sft_only
    30 + n except seed 2, which collapses to 3 (< half of the warm start's 20)."""
    rows = []
    for s, n in enumerate((0, 1, -1)):
        rows += [_qrow("warm_start", s, 20), _qrow("sparse_rl", s, 20 + n, counting3=40),
                 _qrow("plus_tasks", s, 20 - n), _qrow("detail", s, 40 + n),
                 _qrow("difficulty", s, 40 + n), _qrow("rewardmap", s, 25 + 2 * n),
                 _qrow("sft_only", s, 3 if s == 2 else 30 + n)]
    return rows


def _discussion_text(rows):
    from rewardmap_jax.experiments import discussion

    study = ablation.load_study(ROOT / "configs" / "ablation.py")
    return "\n".join(discussion.discussion(rows, discussion.CLAIMS,
                                           [ablation.WARM_START, *study.ARMS]))


def _group(text, title):
    """The bullets listed under **title** (n): in the Discussion."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"**{title}** ("))
    out = []
    for x in lines[start + 2:]:
        if not x.startswith("* "):
            break
        out.append(x)
    return out


def test_discussion_groups_the_claims_by_their_verdict():
    text = _discussion_text(_study_rows())
    hold = _group(text, "Hold")
    reversed_ = _group(text, "Reversed")
    unresolved = _group(text, "Not resolved")
    assert any("*The detail reward helps planning over correctness alone*" in x for x in hold)
    assert "+0.200 ± 0.012" in next(x for x in hold if "detail reward" in x)
    assert "3 of 3 seeds point the paper's way" in next(x for x in hold if "detail reward" in x)
    assert any("*The perception-to-planning curriculum adds to the reward*" in x
               for x in reversed_)
    curriculum = next(x for x in reversed_ if "curriculum" in x)
    assert "-0.150 ± 0.006" in curriculum and "0 of 3 seeds point the paper's way (3 against)" \
        in curriculum
    assert any("*The difficulty-aware weight adds to the detail reward*" in x and "no lean" in x
               for x in unresolved)
    assert not any("difficulty-aware" in x for x in hold + reversed_)
    # The same claim flips group when the data flip: rewardmap far above difficulty now.
    flipped = [_qrow(r["arm"], r["seed"], 60 + r["seed"]) if r["arm"] == "rewardmap" else r
               for r in _study_rows()]
    text = _discussion_text(flipped)
    assert any("curriculum adds" in x for x in _group(text, "Hold"))
    assert not any("curriculum adds" in x for x in _group(text, "Reversed"))


def test_discussion_names_the_collapsed_run_and_keeps_the_verdict():
    from rewardmap_jax.experiments import run_checks

    rows = _study_rows()
    found = run_checks.collapsed_runs(rows)
    assert [(c.arm, c.seed) for c in found] == [("sft_only", 2)]
    assert found[0].value == pytest.approx(0.03) and found[0].warm == pytest.approx(0.2)
    text = _discussion_text(rows)
    assert "* `sft_only` seed 2 collapsed: planning accuracy 0.030 against its warm start's" \
        " 0.200" in text
    assert "**Sensitivity note, not a replacement for the verdicts above**" in text
    sens = text[text.index("**Sensitivity note"):text.index("### Question-level")]
    # Only the claim that involves sft_only is recomputed, over the 2 seeds left.
    assert "RL beats supervised training" in sens and "over 2 seeds" in sens
    assert "detail reward" not in sens
    # Without a collapse, no run is named and no sensitivity note is written.
    healthy = [r for r in rows if not (r["arm"] == "sft_only" and r["seed"] == 2)]
    text = _discussion_text(healthy + [_qrow("sft_only", 2, 29)])
    assert "collapsed:" not in text and "Sensitivity note" not in text
    assert "* No run meets the rule" in text


def test_discussion_detects_plus_task_loss():
    from rewardmap_jax.experiments import run_checks

    rows = _study_rows()
    losses = run_checks.plus_losses(rows, ["warm_start", "sparse_rl", "plus_tasks", "rewardmap"])
    assert [(c.arm, c.task) for c in losses] == [("sparse_rl", "Counting3")]
    assert losses[0].stat[0] == pytest.approx(-0.5) and losses[0].runs_lost == 3
    text = _discussion_text(rows)
    assert "* `sparse_rl` (GRPO, 200 steps) loses Counting3 -0.500" in text
    assert "more than 0.05 below its own seed's warm start" in text
    # A drop within the threshold is not a loss.
    mild = [_qrow("sparse_rl", r["seed"], 20, counting3=88) if r["arm"] == "sparse_rl" else r
            for r in rows]
    assert run_checks.plus_losses(mild, ["warm_start", "sparse_rl"]) == []


def test_discussion_rl_against_warm_start_and_sft():
    text = _discussion_text(_study_rows())
    rl = text[text.index("### RL, supervised"):text.index("### Retention")]
    assert "| `detail` | GRPO, 200 steps | +0.200 ± 0.006 |" in rl
    assert "| `sft_only` | SFT, 200 steps |" in rl
    assert "Of the 5 RL arms, 3 end above the warm start in the seed mean" in rl
    assert "resolved gains: `detail`, `difficulty` and `rewardmap`" in rl


def test_question_pairing_uses_only_shared_uids():
    # Seed 0: arm a asked questions 0-99, arm b 50-149 (shared: 50-99); a is right on all of
    # its, b on none. Seed 1: both asked 0-99, a right on its first 60, b on its first 40.
    rows = [_qrow("a", 0, N_Q), _qrow("b", 0, 0, start=50), _qrow("a", 1, 60), _qrow("b", 1, 40)]
    q = tables.question_paired(rows, "a", "b", "planning/accuracy")
    assert q.n_seeds == 2 and q.n_pairs == 50 + 100 and q.unshared == 100
    assert q.n_questions == 100
    # Per question, the mean over the seeds that pair it: 0-39 (seed 1 only) 0; 40-49 (seed 1
    # only) 1; 50-59 (both seeds: 1 and 1) 1; 60-99 (both: 1 and 0) 0.5.
    per_question = [0.0] * 40 + [1.0] * 10 + [1.0] * 10 + [0.5] * 40
    assert q.mean == pytest.approx(sum(per_question) / 100)
    assert q.only_arm == 50 + 20 and q.only_base == 0
    assert tables.question_paired(rows, "a", "missing", "planning/accuracy") is None
    assert tables.question_paired(rows, "a", "b", "planning/accuracy@transfers=1") is None
    from rewardmap_jax.experiments import run_checks

    check = run_checks.question_check(rows)
    assert "not all asked the same held-out questions" in check and "planning seed 0" in check
    assert "Checked from the rows: every arm of a seed was asked the same" in \
        run_checks.question_check(_study_rows())


def test_discussion_degrades_without_rows():
    from rewardmap_jax.experiments import discussion

    mod = _script()
    study = ablation.load_study(ROOT / "configs" / "ablation.py")
    quick = [_qrow(a, 0, 0) for a in ("warm_start", "sparse_rl", "rewardmap")]
    text = mod.render([], study, quick)
    assert "Nothing is measured yet" in text and "3 runs (`--scale quick`)" in text
    # A partial study: one seed of two arms; claims not measured, nothing raises.
    text = _discussion_text([_qrow("warm_start", 0, 20), _qrow("sparse_rl", 0, 22)])
    assert "**Not measured** (8):" in text and "no `sft_only` rows" in text
    # Rows without per-question results, step counts or curves.
    bare = []
    for r in _study_rows():
        r = dict(r, final={k: v for k, v in r["final"].items() if k != "per_question"})
        for key in ("steps", "curve", "train_curve", "world"):
            r.pop(key)
        bare.append(r)
    text = _discussion_text(bare)
    assert "The rows keep no per-question results" in text
    assert discussion.discussion([])[0] == "## Discussion"


def test_discussion_reads_planning_against_its_chance_level():
    from rewardmap_jax.experiments import discussion

    study = ablation.load_study(ROOT / "configs" / "ablation.py")
    arms = [ablation.WARM_START, *study.ARMS]
    # Seeds' planning (of 100): warm start 20, 20, 20; sparse_rl 20, 21, 19; plus_tasks 20, 19,
    # 21; detail / difficulty 40 +- 1; rewardmap 25, 27, 23; sft_only 30, 31, 3. Chance .20:
    # a seed *at* chance is not above it.
    text = "\n".join(discussion.discussion(_study_rows(), discussion.CLAIMS, arms,
                                           chance={"planning/accuracy": 0.2}))
    assert ("* planning accuracy: chance 0.200; every seed above it: `detail`, `difficulty`,"
            " `rewardmap`; seeds above it: `warm_start` (0 of 3), `sparse_rl` (1 of 3),"
            " `plus_tasks` (1 of 3), `sft_only` (2 of 3).") in text
    assert "### Against chance" not in _discussion_text(_study_rows())  # chance unknown
