"""The data iterator state survives a real Orbax checkpoint (rewardmap_jax.run.checkpoint)."""

from __future__ import annotations

import numpy as np

from configs.curriculum import get_config
from rewardmap_jax.data.pipeline import DataPipeline
from rewardmap_jax.run.checkpoint import CheckpointManager


def test_resume_from_orbax_checkpoint(tmp_path):
    c = get_config("tiny")
    c.data.shard = "none"
    c.data.mapworld_questions_per_task = 8
    c.curriculum.repeat = True  # crosses into the second, reshuffled pass
    pipe = DataPipeline.from_config(c)
    it = pipe.iterator()
    for _ in range(5):
        next(it)
    with CheckpointManager(tmp_path, every_steps=1, keep=2, async_save=False,
                           handle_preemption=False) as ckpt:
        ckpt.save(5, {"step": np.array(5)}, data_state=it.get_state(), wait=True)
    want = [next(it) for _ in range(3)]  # steps 5..7: pass 0 ends at step 6
    with CheckpointManager(tmp_path, async_save=False, handle_preemption=False) as ckpt:
        restored = ckpt.restore({"step": np.array(0)})
    assert restored.step == 5
    fresh = DataPipeline.from_config(c).iterator()
    fresh.set_state(restored.data_state)
    for a, b in zip([next(fresh) for _ in range(3)], want, strict=True):
        for k in ("input_ids", "attention_mask", "pixel_values", "element", "stage"):
            assert np.array_equal(a[k], b[k]), k
        assert [r.uid for r in a["records"]] == [r.uid for r in b["records"]]
    assert want[-1]["element"][0] == 7 * 8  # past the first pass (48 elements)
