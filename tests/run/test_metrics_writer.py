"""MetricsWriter: JSONL, TensorBoard events, non-finite values, process 0 only, resume."""

from __future__ import annotations

import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rewardmap_jax.run import metrics_writer as mw


def _tb_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """Reads scalar summaries from the TFRecord event files (no tensorboard install needed)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((workdir / mw.TENSORBOARD_SUBDIR).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_jsonl_and_tensorboard(tmp_path):
    with mw.MetricsWriter(tmp_path, total_steps=3, progress_bar=True) as w:
        r1 = w.write(1, {"reward/mean": np.float32(1.5), "stage": 0, "stage_name": "torf"})
        w.write(2, {"reward/mean": jnp.asarray(2.25), "stage": jnp.int32(1), "ok": True})
        w.write(3, {"reward/mean": 3.0, "tokens_per_s": 10})
    assert r1["step"] == 1 and r1["reward/mean"] == 1.5 and r1["stage_name"] == "torf"
    lines = (tmp_path / mw.METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    records = mw.read_metrics(tmp_path)
    assert records[1]["stage"] == 1 and isinstance(records[1]["stage"], int)
    assert records[1]["ok"] is True
    tb = _tb_scalars(tmp_path)
    assert tb["reward/mean"] == [(1, 1.5), (2, 2.25), (3, 3.0)]
    assert tb["stage"] == [(1, 0.0), (2, 1.0)]
    assert "stage_name" not in tb  # strings go to the JSONL only


def test_nonfinite_values_are_logged_and_flagged(tmp_path, caplog):
    with mw.MetricsWriter(tmp_path, progress_bar=False, log_every=10) as w:
        rec = w.write(3, {"loss": float("nan"), "kl": np.inf, "reward/mean": -np.float64("inf")})
        assert w.write(4, {"loss": 1.0}) is None  # skipped by log_every
        assert w.write(4, {"eval/accuracy/mean": 0.5}, force=True)["step"] == 4
        w.write(10, {"loss": 0.5})
    assert rec["nonfinite"] == ["kl", "loss", "reward/mean"]
    assert rec["loss"] == "nan" and rec["kl"] == "inf" and rec["reward/mean"] == "-inf"
    assert "non-finite" in caplog.text
    assert w.nonfinite_steps == [3]
    records = mw.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [3, 4, 10]
    assert math.isnan(records[0]["loss"]) and records[0]["kl"] == math.inf
    assert records[0]["reward/mean"] == -math.inf
    tb = _tb_scalars(tmp_path)
    assert math.isnan(tb["loss"][0][1]) and tb["loss"][1] == (10, 0.5)
    assert tb["eval/accuracy/mean"] == [(4, 0.5)]


def test_non_primary_process_writes_nothing(tmp_path):
    with mw.MetricsWriter(tmp_path / "run", primary=False) as w:
        assert w.write(1, {"loss": 1.0}) is None
    assert not (tmp_path / "run").exists()


def test_bad_metric_values_raise_with_the_key(tmp_path):
    with mw.MetricsWriter(tmp_path, progress_bar=False, tensorboard=False) as w:
        with pytest.raises(ValueError, match="'per_token'.*shape \\(3,\\)"):
            w.write(1, {"per_token": np.ones(3)})
        with pytest.raises(TypeError, match="'obj'"):
            w.write(1, {"obj": object()})


def test_resume_keeps_the_latest_record_per_step_and_skips_torn_line(tmp_path):
    with mw.MetricsWriter(tmp_path, progress_bar=False, tensorboard=False) as w:
        for step in (1, 2, 3):
            w.write(step, {"loss": float(step)})
    with mw.MetricsWriter(tmp_path, progress_bar=False, tensorboard=False, initial_step=2) as w:
        w.write(3, {"loss": 30.0})  # re-run of step 3 after resuming from a step-2 checkpoint
    with (tmp_path / mw.METRICS_FILE).open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    records = mw.read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert "nonfinite" not in records[2]
    # The next run cuts the torn record before appending, so the file stays valid JSONL.
    with mw.MetricsWriter(tmp_path, progress_bar=False, tensorboard=False, initial_step=3) as w:
        w.write(4, {"loss": 4.0})
    lines = (tmp_path / mw.METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 3, 4]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / mw.METRICS_FILE).write_text('{"step": 1, "lo')  # nothing complete
    mw.MetricsWriter(tmp_path / "one", progress_bar=False, tensorboard=False).close()
    assert (tmp_path / "one" / mw.METRICS_FILE).read_text() == ""
    (tmp_path / mw.METRICS_FILE).write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON record"):
        mw.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        mw.read_metrics(tmp_path / "elsewhere")


def test_records_of_one_step_merge(tmp_path):
    with mw.MetricsWriter(tmp_path, progress_bar=False, tensorboard=False) as w:
        w.write(5, {"reward/mean": 1.0, "loss": math.nan})
        w.write(5, {"eval/accuracy/mean": 0.5})  # an evaluation at the same step
        w.write(6, {"loss": math.inf})
        w.write(6, {"loss": 2.0})  # re-logged finite after a resume
    r5, r6 = mw.read_metrics(tmp_path)
    assert r5["reward/mean"] == 1.0 and r5["eval/accuracy/mean"] == 0.5
    assert math.isnan(r5["loss"]) and r5["nonfinite"] == ["loss"]
    assert r6["loss"] == 2.0 and "nonfinite" not in r6


def test_progress_bar_tracks_steps(tmp_path):
    with mw.MetricsWriter(tmp_path, total_steps=10, initial_step=4, tensorboard=False) as w:
        w.write(5, {"reward/mean": 1.0, "stage_name": "counting", "tokens_per_s": 123.0})
        w.write(7, {"reward/mean": 2.0})
        assert w._bar.n == 7 and w._bar.total == 10
        assert "reward/mean=2" in w._bar.postfix
