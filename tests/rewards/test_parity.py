"""Parity: the jitted reward equals the per-completion transcription of the official rules.

>= 5,000 generated completions: correct plans, near misses and random mutations of correct plans
on random networks (names with "Station", Univ./Tech/Road rewrites, dashes, annotations, Chinese
suffixes), plus VQA answers in every extraction path.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from configs.curriculum import get_config
from rewardmap_jax.rewards import RewardMapReward
from tests.rewards import official_ref as ref
from tests.rewards.worlds import mutate_plan, random_planning_record, random_vqa

N_PLANNING_RECORDS = 700
COMPLETIONS_PER_RECORD = 6
N_VQA = 1100


def _generated(seed: int = 0):
    rng = random.Random(seed)
    records, texts = [], []
    for i in range(N_PLANNING_RECORDS):
        rec, plan = random_planning_record(rng, i)
        for _ in range(COMPLETIONS_PER_RECORD):
            records.append(rec)
            texts.append(mutate_plan(rng, plan, rec.metro))
    for i in range(N_VQA):
        rec, text = random_vqa(rng, i)
        records.append(rec)
        texts.append(text)
    return records, texts


def test_jitted_reward_matches_official_transcription():
    records, texts = _generated()
    assert len(texts) >= 5000
    reward = RewardMapReward(get_config().reward)
    got = {k: [] for k in ("overall", "accuracy", "detail")}
    chunk = 1024
    for lo in range(0, len(texts), chunk):
        out = reward(records[lo : lo + chunk], texts[lo : lo + chunk])
        for k in got:
            got[k].append(out[k])
    got = {k: np.concatenate(v) for k, v in got.items()}

    want_overall, want_acc, want_detail = [], [], []
    for rec, text in zip(records, texts, strict=True):
        want_overall.append(ref.ref_reward(rec, text))
        metro = ref.ref_metro(rec.metro)
        if rec.type == "planning":
            acc = ref.ref_acc_planning(text, metro, rec.station_1, rec.station_2)
            det = ref.ref_detail_planning(
                text, metro, rec.station_1, rec.station_2, rec.question_transfer_count
            )
        else:
            acc = ref.ref_acc_vqa(rec.type, ref.ref_vqa_answer(text), rec.answer)
            det = 0.0
        want_acc.append(float(acc))
        want_detail.append(det)

    bad = np.flatnonzero(~np.isclose(got["overall"], want_overall, atol=1e-5))
    assert bad.size == 0, [(texts[i], got["overall"][i], want_overall[i]) for i in bad[:5]]
    np.testing.assert_array_equal(got["accuracy"], want_acc)
    np.testing.assert_allclose(got["detail"], want_detail, atol=1e-6)
    # The generated set must exercise every branch, or the parity proves little.
    plan = np.array([r.type == "planning" for r in records])
    acc = np.asarray(want_acc)
    det = np.asarray(want_detail)
    assert 0.15 < acc[plan].mean() < 0.85
    assert 0.15 < acc[~plan].mean() < 0.85
    assert (det[plan] < 0).sum() > 100 and (det[plan] > 0).sum() > 100 and (det == 10).sum() > 0


def test_counting1_detail_and_metric_accuracy_parity():
    rng = random.Random(3)
    records, texts = [], []
    # Counting1 stop lists on random networks: right, repeated, wrong and unknown stops
    for i in range(300):
        rec, plan = random_planning_record(rng, i)
        line, a, b = plan[0]
        stations = [s.replace(" (Transfer Station)", "") for s in rec.metro[line]]
        lo, hi = sorted((stations.index(a), stations.index(b)))
        inner = stations[lo + 1 : hi]
        picks = rng.sample(inner, rng.randint(0, len(inner)))  # right stops
        picks += rng.sample(picks, min(len(picks), rng.randint(0, 1)))  # a repeat
        picks += rng.sample(stations, rng.randint(0, 1)) + ["Nowhere"] * rng.randint(0, 1)
        rng.shuffle(picks)
        c1 = dataclasses.replace(rec, type="Counting1", answer=rng.randint(0, 3))
        c1.station_1, c1.station_2 = a, b
        records.append(c1)
        texts.append(f"Stops: [{', '.join(picks)}]\n\\boxed{{{rng.choice('ABCD')}}}")
    cfg = get_config().reward
    cfg.counting1_detail = True
    got = RewardMapReward(cfg)(records, texts)["detail"]
    assert (got > 0).sum() > 30 and (got < 0).sum() > 30
    for r, t, g in zip(records, texts, got, strict=True):
        want = ref.ref_detail_counting1(
            ref.ref_extract_stops(t), ref.ref_metro(r.metro), r.station_1, r.station_2
        )
        assert g == (0.0 if want is None else want), (t, g, want)

    # ReasonMap metric accuracy (short template) on the generated plans
    from rewardmap_jax.rewards.metrics import score_planning

    recs, plans = _generated(seed=5)
    n = 0
    for r, t in zip(recs, plans, strict=True):
        if r.type != "planning":
            continue
        want = ref.ref_metric_acc_short(t, ref.ref_metro(r.metro), r.station_1, r.station_2)
        assert score_planning(r, t)["acc"] == float(want), t
        n += 1
    assert n >= 4000
