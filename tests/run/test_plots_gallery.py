"""Curves PNG (stage segments, smoothing, CLI) and the rollout gallery (escaping, images)."""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from rewardmap_jax.mapworld.generator import make_record
from rewardmap_jax.run import gallery, plots
from rewardmap_jax.run.metrics_writer import MetricsWriter


def _write_run(workdir, stages=((0, "TorF", 5), (1, "planning", 4))):
    step = 0
    with MetricsWriter(workdir, progress_bar=False, tensorboard=False) as w:
        for stage, name, n in stages:
            for i in range(n):
                step += 1
                m = {"stage": stage, "stage_name": name, "reward/mean": float(step)}
                m["accuracy/mean"] = i / n
                if step == 3:
                    m["loss"] = math.nan
                w.write(step, m)


def test_stage_segments():
    records = [
        {"step": 1, "stage": 0, "stage_name": "TorF"},
        {"step": 2, "stage": 0, "stage_name": "TorF"},
        {"step": 3},
        {"step": 5, "stage": 1},
        {"step": 6, "stage": 0},
    ]
    assert plots.stage_segments(records) == [
        (1, 2, 0, "TorF"),
        (5, 5, 1, "stage 1"),
        (6, 6, 0, "stage 0"),
    ]


def test_moving_average_skips_nonfinite():
    y = np.array([1.0, 3.0, np.nan, 5.0, np.inf])
    got = plots.moving_average(np.where(np.isfinite(y), y, np.nan), 2)
    np.testing.assert_allclose(got, [1.0, 2.0, 3.0, 5.0, 5.0])
    assert np.isnan(plots.moving_average(np.array([np.nan]), 3)[0])


def test_smoothing_restarts_at_stage_boundaries():
    x = np.arange(1.0, 7.0)
    y = np.array([0.0, 0.0, 0.0, 10.0, 10.0, 10.0])
    segs = [(1, 3, 0, "a"), (4, 6, 1, "b")]
    np.testing.assert_allclose(plots._smooth_by_stage(x, y, segs, 3), y)


def test_plot_run_and_cli(tmp_path, capsys):
    _write_run(tmp_path)
    path = plots.plot_run(tmp_path)
    assert path == tmp_path / "plots" / "curves.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 800 and img.size[1] > 600
        # Not a blank canvas: stage shading and curves give many distinct colours.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    out = tmp_path / "other.png"
    assert plots.main(["--workdir", str(tmp_path), "--out", str(out), "--smooth", "2"]) == 0
    assert out.exists() and capsys.readouterr().out.strip() == str(out)
    assert plots.main(["--workdir", str(tmp_path / "missing")]) == 1
    assert "no metrics file" in capsys.readouterr().err


def test_plot_without_reward_or_accuracy_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_curves([{"step": 1, "loss": 1.0}], tmp_path / "x.png")


def test_held_out_eval_points_are_drawn(tmp_path):
    records = [
        {"step": s, "stage": 0, "reward/mean": float(s % 3), "accuracy/mean": 0.1 * (s % 4)}
        for s in range(1, 11)
    ]
    without = plots.plot_curves(records, tmp_path / "a.png", smooth=1)
    records[4]["eval/accuracy/mean"] = 0.5
    records[9]["eval/accuracy/mean"] = 0.75
    with_eval = plots.plot_curves(records, tmp_path / "b.png", smooth=1)

    def dark_pixels(path):
        return int((np.asarray(Image.open(path).convert("L")) < 40).sum())

    # Same curves and axes: the black held-out markers (and their legend entry) are the change.
    assert dark_pixels(with_eval) > dark_pixels(without) + 100


def test_warm_start_panel_and_per_task_held_out_markers(tmp_path):
    rl = [{"step": s, "stage": 0, "reward/mean": 1.0, "accuracy/TorF1": 0.5} for s in range(6, 11)]
    sft = [{"step": s, "sft/loss": 5.0 / s, "sft/answer_match": s / 5} for s in range(1, 6)]
    two = plots.plot_curves(rl, tmp_path / "rl.png", smooth=1)
    three = plots.plot_curves(sft + rl, tmp_path / "sft.png", smooth=1)
    with Image.open(two) as a, Image.open(three) as b:
        assert b.size[1] > a.size[1] * 1.2  # a third (warm start) panel
    rl[0]["eval/accuracy/TorF1"] = 0.2
    rl[-1]["eval/accuracy/TorF1"] = 0.9
    marked = plots.plot_curves(rl, tmp_path / "marked.png", smooth=1)

    def dark_pixels(path):
        return int((np.asarray(Image.open(path).convert("L")) < 40).sum())

    # The diamonds' black edges are the change.
    assert dark_pixels(marked) > dark_pixels(two) + 30


def _decode_images(page: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_gallery_escapes_untrusted_text(tmp_path):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> & \\boxed{yes}'
    item = gallery.GalleryItem(
        question="Is <b>A</b> on the red line?",
        completions=[evil, "fine"],
        rewards=[{"overall": 1.0, "<k>": 2.0}, {"overall": 3.0}],
        answer="\\boxed{yes}",
        info={"uid": "u<1>"},
    )
    page = gallery.write_gallery(tmp_path, 7, [item]).read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<b>A</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;k&gt;" in page and "u&lt;1&gt;" in page and "&amp; \\boxed{yes}" in page
    # The best completion (overall 3.0) is the highlighted row; both totals are finite.
    assert re.search(r'<tr class="best"><td>1</td>', page)
    assert "<i>no image</i>" in page and "non-finite" not in page


def test_gallery_flags_only_non_finite_totals(tmp_path):
    """A NaN total is flagged; a reward dict without `overall` (e.g. a held-out page scored
    without a reward) or finite totals are not."""
    item = gallery.GalleryItem(question="q", completions=["a", "b", "c"],
                               rewards=[{"overall": float("nan")}, {"overall": 1.0}, {"acc": 1}])
    page = gallery.write_gallery(tmp_path, 3, [item]).read_text()
    assert "1 non-finite overall rewards" in page
    ok = gallery.GalleryItem(question="q", completions=["a"], rewards=[{"accuracy": 1.0}])
    assert "non-finite" not in gallery.write_gallery(tmp_path, 4, [ok]).read_text()


def test_gallery_from_mapworld_records(tmp_path):
    records = [make_record("tiny", "train", i, t) for i, t in enumerate(("TorF1", "planning"))]
    items = [
        gallery.item_from_record(
            records[0], ["\\boxed{yes}"] * 2, [{"overall": 10.0}, {"overall": 10.0}]
        ),
        gallery.item_from_record(records[1], ["x", "y", "z"], [{"overall": v} for v in (0, 1, 2)]),
    ]
    page = gallery.write_gallery(tmp_path, 50, items, thumb_px=64).read_text()
    gallery.write_gallery(tmp_path, 100, items[:1])
    images = _decode_images(page)
    assert len(images) == 2 and all(max(im.size) <= 64 for im in images)
    # The thumbnail is the map, shrunk: same aspect ratio, similar mean colour.
    src = records[0].figure
    assert images[0].size[0] / images[0].size[1] == pytest.approx(src.size[0] / src.size[1], 0.05)
    np.testing.assert_allclose(
        np.asarray(images[0]).mean((0, 1)), np.asarray(src.convert("RGB")).mean((0, 1)), atol=12
    )
    assert "all rewards equal: zero advantage" in page
    assert "2 questions · 5 completions · mean overall reward 4.6" in page
    assert "1 of 2 groups with all rewards equal (zero advantage)" in page
    assert "Route Name:" in page  # planning ground truth is the reference plan
    assert "TorF1" in page and "planning" in page
    index = (tmp_path / "gallery" / "index.html").read_text()
    assert index.index("step_100.html") < index.index("step_50.html")


def test_gallery_item_checks_lengths_and_images():
    with pytest.raises(ValueError, match="2 completions but 1 reward"):
        gallery.GalleryItem(question="q", completions=["a", "b"], rewards=[{}])
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[..., 0] = 255
    uri = gallery.thumbnail_data_uri(arr, 8)
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (8, 4) and img.getpixel((0, 0)) == (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    assert gallery.thumbnail_data_uri(buf.getvalue(), 8).startswith("data:image/png;base64,")
    with pytest.raises(TypeError, match="unsupported image type"):
        gallery.thumbnail_data_uri(3.0, 8)
