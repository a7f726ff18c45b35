"""Large parity on the map world: jitted reward == official transcription on >= 5,000 completions.

Records come from the map-world generator (`small` preset, every question type, all three
planning templates); completions are each record's reference answer, near misses and random
mutations of it.
"""

from __future__ import annotations

import random

import numpy as np

from configs.curriculum import get_config
from rewardmap_jax.evaluation.scoring import score_completions, summarize
from rewardmap_jax.mapworld.generator import generate_records
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.rewards import RewardMapReward
from tests.rewards import official_ref as ref
from tests.rewards.worlds import mutate_plan

N_RECORDS = 600
PER_RECORD = 9
_VQA_WRONG = ["\\boxed{yes}", "\\boxed{no}", "\\boxed{A}", "\\boxed{D}", "\\boxed{2}", "maybe"]


def _completions(rng: random.Random, record) -> list[str]:
    correct = answer_text(record)
    if record.type != "planning":
        out = [correct, correct.replace("\\boxed{", "The answer is ").rstrip("}") + "."]
        out += [rng.choice(_VQA_WRONG) for _ in range(PER_RECORD - 2)]
        return out
    plan = next(iter(record.routes.values()))
    secs = [(s["route_name"], s["departure_stop"], s["arrival_stop"]) for s in plan]
    return [correct] + [mutate_plan(rng, secs, record.metro) for _ in range(PER_RECORD - 1)]


def _data():
    rng = random.Random(1)
    records = generate_records("small", "train", N_RECORDS)
    recs, texts = [], []
    for r in records:
        for t in _completions(rng, r):
            recs.append(r)
            texts.append(t)
    return records, recs, texts


def test_mapworld_parity_and_reference_answers():
    records, recs, texts = _data()
    assert len(texts) >= 5000
    reward = RewardMapReward(get_config().reward)
    got = np.concatenate(
        [
            reward(recs[lo : lo + 1024], texts[lo : lo + 1024])["overall"]
            for lo in range(0, len(texts), 1024)
        ]
    )
    want = np.array([ref.ref_reward(r, t) for r, t in zip(recs, texts, strict=True)])
    bad = np.flatnonzero(~np.isclose(got, want, atol=1e-5))
    assert bad.size == 0, [(recs[i].uid, texts[i][:120], got[i], want[i]) for i in bad[:5]]
    # Non-trivial mix: positive, zero and negative rewards all occur.
    assert (want > 10).sum() > 500 and (want == 0).sum() > 500 and (want < 0).sum() > 50

    # Every reference answer is correct under the metrics, and under the reward for the
    # short and VQA questions. (The official reward reads a long answer's arrival as the rest
    # of the section, so long-template reference answers only pass with arrival_field="line".)
    refs = [answer_text(r) for r in records]
    summary = summarize(score_completions(records, refs))
    for name, fig in summary.items():
        if name.startswith(("plus/acc", "reasonmap/acc")):
            assert fig["value"] == 1.0, name
    cfg = get_config().reward
    cfg.arrival_field = "line"
    out = RewardMapReward(cfg)(records, refs)
    assert np.all(out["accuracy"] == 1.0)
    default = RewardMapReward(get_config().reward)(records, refs)
    long = np.array([r.template.startswith("long") for r in records])
    assert long.any() and np.all(default["accuracy"][~long] == 1.0)
    assert np.all(default["accuracy"][long] == 0.0)
