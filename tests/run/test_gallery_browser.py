"""Gallery pages opened in headless Chromium: every question's map is drawn (decoded, inked,
and in the screenshot where the page puts it) and no false warning shows, on a training page
built from real pipeline batches (whose records carry no image) and on a held-out page."""

from __future__ import annotations

import types

import numpy as np
import pytest

from configs.curriculum import get_config
from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.evaluation import data as D
from rewardmap_jax.evaluation import gallery as G
from rewardmap_jax.evaluation import scoring
from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.rewards.registry import make_reward_fn
from rewardmap_jax.run import gallery
from tests import browser

pytestmark = pytest.mark.skipif(browser.CHROMIUM is None,
                                reason="chromium not installed (apt-get install chromium)")


def test_training_page_shows_every_map(tmp_path):
    c = get_config("tiny")
    c.data.shard = "none"
    pipe = DataPipeline.from_config(c)
    batch = next(pipe.iterator())
    records = batch["records"][:3]
    assert all(r.figure is None for r in records)  # what the trainer's rollouts hold
    g = 2
    recs = [r for r in records for _ in range(g)]
    texts = [answer_text(r) if i % 2 == 0 else "no idea" for i, r in enumerate(recs)]
    scores = make_reward_fn(c.reward)(recs, texts)
    # A single-process rollout: local row i is global row i (`RolloutResult.rows`).
    res = types.SimpleNamespace(records=recs, texts=texts, scores=scores,
                                rows=np.arange(len(recs)))
    page = G.write_training_gallery(tmp_path, 7, res, g, 3, pipe.sources)
    info = browser.inspect_page(page, tmp_path / "browser")
    browser.assert_maps_drawn(info, 3)
    assert info["flags"] == [], info["flags"]  # finite rewards, two different per group
    assert np.isfinite(scores["overall"]).all()


def test_heldout_page_shows_every_map(tmp_path):
    c = get_config("tiny")
    data = D.mapworld_data("tiny", "val", 1, ("TorF1", "Counting3", "planning"))
    texts = [answer_text(r) for r in data.records]
    rows = scoring.score_completions(data.records, texts, reward_fn=make_reward_fn(c.reward))
    items = G.heldout_items(data.records, rows, 6)
    page = gallery.write_gallery(tmp_path, 10, items, eval_tag="final")
    info = browser.inspect_page(page, tmp_path / "browser")
    browser.assert_maps_drawn(info, 3)
    assert info["flags"] == [], info["flags"]
    index = (tmp_path / "gallery" / "index.html").read_text()
    assert 'href="eval_final.html"' in index
