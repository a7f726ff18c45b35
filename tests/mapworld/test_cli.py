"""The inspection CLI writes one PNG per question and a JSONL of real-format rows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from rewardmap_jax.mapworld import generator
from rewardmap_jax.mapworld.__main__ import main
from rewardmap_jax.mapworld.records import TASK_TYPES


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_cli_writes_maps_and_questions(tmp_path):
    out = tmp_path / "a"
    assert main(["--out", str(out), "--n", "8", "--seed", "3", "--preset", "tiny"]) == 0
    rows = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows] == [TASK_TYPES[i % 6] for i in range(8)]
    world = generator.get_world("tiny", seed=3)
    for i, row in enumerate(rows):
        rec = generator.make_record(world, "train", i, row["type"])
        assert row["question"] == rec.question and row["json"] == rec.metro
        assert row["answer"] == rec.answer and row["routes"] == rec.routes
        assert row["reference_answer"].startswith(
            "Route Name: " if rec.type == "planning" else "\\boxed{"
        )
        image = Image.open(out / row["figure"])
        assert image.size == (84, 84)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(rec.figure))
    main(["--out", str(tmp_path / "b"), "--n", "8", "--seed", "3", "--preset", "tiny"])
    assert _digest(out) == _digest(tmp_path / "b")
    main(["--out", str(tmp_path / "c"), "--n", "8", "--seed", "4", "--preset", "tiny"])
    assert _digest(out) != _digest(tmp_path / "c")
