"""Real-format batches whose maps differ in size go through every pass of the trainer
(sampler, old log-probs, micro-batched GRPO update), and `rl.grad_accum = 2` gives the loss
and gradient of one pass (grad norm to 1e-5: the parameters then differ only by Adam's
amplification of float rounding where a gradient is ~eps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from rewardmap_jax.rl import rollout as ro
from rewardmap_jax.rl import steps, trainer
from rewardmap_jax.run.metrics_writer import read_metrics
from tests.rl.small_config import get_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# (width, height): four patch grids (patch 14): 8x8, 6x12, 14x6, 8x16.
SIZES = ((112, 112), (168, 84), (84, 196), (224, 112))


def _maps_of_four_sizes(tmp_path: Path) -> Path:
    data = tmp_path / "reasonmap_train"
    shutil.copytree(FIXTURES / "reasonmap_train", data)
    for i, f in enumerate(sorted((data / "maps").rglob("*.png"))):
        with Image.open(f) as img:
            img.convert("RGB").resize(SIZES[i % len(SIZES)]).save(f)
    return data


def _config(data: Path, grad_accum: int):
    c = get_config()
    c.sft.steps = 0
    c.train.rl_steps = 1
    c.data.source = "reasonmap"
    c.data.reasonmap_train_dir = str(data)
    c.curriculum.preset = "official"
    c.curriculum.stages = ()
    c.data.batch_size = 4
    c.rl.mini_batch_size = 4
    c.rl.grad_accum = grad_accum
    c.rl.max_new_tokens = 4
    return c


@pytest.mark.slow
def test_maps_of_different_sizes_with_grad_accum(tmp_path, monkeypatch):
    data = _maps_of_four_sizes(tmp_path)
    grids: list[set[tuple[int, ...]]] = []
    agree = ro.agree_batch

    def spy(batch, cfg, place):
        grids.append({tuple(int(x) for x in g) for g in batch["image_grid_thw"]})
        return agree(batch, cfg, place)

    monkeypatch.setattr(ro, "agree_batch", spy)
    runs = {}
    for acc in (1, 2):
        before = steps.TRACE_COUNTS["grpo_step"]
        t = trainer.Trainer(_config(data, acc), tmp_path / f"acc{acc}")
        t.train()
        runs[acc] = [r for r in read_metrics(tmp_path / f"acc{acc}") if "loss" in r]
        assert steps.TRACE_COUNTS["grpo_step"] - before == 1  # one update, one compile
    assert any(len(g) > 1 for g in grids), grids  # a batch really mixed map sizes
    (a,), (b,) = runs[1], runs[2]
    for k in ("loss", "grad_norm", "reward/mean"):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    assert a["grad_norm"] > 0
