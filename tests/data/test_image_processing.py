"""Image preprocessing parity with transformers' PIL-backend Qwen2-VL image processor."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from rewardmap_jax.data.image_processing import (
    ImageProcessorConfig,
    num_image_tokens,
    open_figure,
    preprocess,
    smart_resize,
)

MIN_PIXELS, MAX_PIXELS = 3136, 200_704  # a small max so large inputs exercise the downscale branch


def _hf_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def _random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [(84, 84), (217, 300), (28, 28), (30, 1000), (1000, 30), (13, 17), (56, 700)]
    while len(sizes) < n:
        sizes.append((int(rng.integers(8, 900)), int(rng.integers(8, 900))))
    return sizes


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_parity_with_hf_pil_backend(mode):
    hf = _hf_processor()
    cfg = ImageProcessorConfig(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    rng = np.random.default_rng({"RGB": 1, "RGBA": 2, "L": 3}[mode])
    sizes = _random_sizes(24 if mode == "RGB" else 4, seed=len(mode))
    worst = 0.0
    for h, w in sizes:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)
        ours, grid = preprocess(img, cfg)
        ref = hf(images=[img], return_tensors="np")
        assert ours.shape == ref["pixel_values"].shape, (h, w)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
        worst = max(worst, float(np.max(np.abs(ours - ref["pixel_values"]))))
    assert worst <= 1e-5, worst


def test_verified_example_217x300():
    # by hand from transformers' smart_resize: 224x308, grid [1,16,22], 352 rows, 88 tokens
    cfg = ImageProcessorConfig()
    assert smart_resize(217, 300) == (224, 308)
    rows, grid = preprocess(Image.new("RGB", (300, 217), (10, 20, 30)), cfg)
    assert rows.shape == (352, 1176) and grid.tolist() == [1, 16, 22]
    assert num_image_tokens(grid) == 88


def test_smart_resize_rules():
    assert smart_resize(42, 42) == (56, 56)  # 42 rounds to 28 (half to even 1.5 -> 2 => 56)
    assert smart_resize(70, 70) == (56, 56)  # 2.5 -> 2 (banker's rounding)
    assert smart_resize(98, 98) == (112, 112)  # 3.5 -> 4
    assert smart_resize(10, 10) == (56, 56)  # below min_pixels: scaled up
    h, w = smart_resize(5839, 5449, max_pixels=1_003_520)
    assert h * w <= 1_003_520 and h % 28 == 0 and w % 28 == 0
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)


def test_tiny_map_size():
    rows, grid = preprocess(Image.new("RGB", (84, 84)), ImageProcessorConfig())
    assert grid.tolist() == [1, 6, 6] and rows.shape == (36, 1176) and num_image_tokens(grid) == 9


def test_patch_layout_is_hf_order():
    # Each pixel's value encodes its (channel, y, x): check row/column placement by hand.
    cfg = ImageProcessorConfig()
    h, w = 56, 84
    c, y, x = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    from rewardmap_jax.data.image_processing import patchify

    rows = patchify((c * 10000 + y * 100 + x).astype(np.float32), cfg)
    assert rows.shape == (4 * 6, 1176)
    # row 5 = block (0, 1), inner (0, 1) -> patch (py=0, px=3); column = (c=2, t=1, ph=3, pw=4)
    col = ((2 * 2 + 1) * 14 + 3) * 14 + 4
    assert rows[5, col] == 2 * 10000 + (0 * 14 + 3) * 100 + (3 * 14 + 4)
    # row 6 = block (0, 1) inner (1, 0) -> patch (1, 2); row 8 = block (0, 2) inner 0 -> (0, 4)
    assert rows[6, 0] == 14 * 100 + 28 and rows[8, 0] == 4 * 14
    # row 12 = block (1, 0) -> patch (2, 0); the t=0 and t=1 copies are identical
    assert rows[12, 0] == 28 * 100
    by_t = rows.reshape(24, 3, 2, 196)
    assert np.array_equal(by_t[:, :, 0], by_t[:, :, 1])


def test_open_figure_sources_and_errors(tmp_path):
    img = Image.new("RGB", (40, 30), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    path = tmp_path / "m.png"
    path.write_bytes(png)
    for fig in (img, png, str(path), base64.b64encode(png).decode(), {"bytes": png},
                np.asarray(img)):
        got = open_figure(fig, max_image_pixels=10_000)
        assert got.size == (40, 30)
    with pytest.raises(ValueError, match="max_image_pixels"):
        open_figure(png, max_image_pixels=100)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_figure(str(tmp_path / "missing.png"), max_image_pixels=10_000)
    with pytest.raises(ValueError, match="cannot decode"):
        open_figure(png[:60], max_image_pixels=10_000)
    with pytest.raises(ValueError, match="cannot decode"):
        open_figure(b"not an image", max_image_pixels=10_000)
