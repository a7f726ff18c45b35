"""Qwen2-VL image preprocessing in numpy + PIL (the HF PIL backend, no torch at run time).

`preprocess(image, cfg)` = RGB (alpha composited on white) -> `smart_resize` target -> PIL BICUBIC
resize of the uint8 image -> rescale 1/255 (float64, then float32) -> CLIP normalize (float32) ->
patchify into rows of `C * temporal_patch * patch * patch` (= 1176) values in HF's order:
rows (block_row, block_col, 2x2 inside the block), columns (C, T, ph, pw). An image is one frame
repeated `temporal_patch_size` times, so grid_t = 1. See transformers'
`Qwen2VLImageProcessor` and docs/data.md.

Real ReasonMap maps are ~5,800 x 5,400 px: they are decoded once as uint8, resized straight to the
target (<= `max_pixels`), and only then converted to float; inputs above `max_image_pixels` are
rejected with a clear error instead of exhausting memory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Qwen2-VL image processor settings (defaults = the checkpoint's preprocessor_config)."""

    min_pixels: int = 3136
    max_pixels: int = 12845056
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    # Largest decoded input accepted (width * height); bounds host memory for huge maps.
    max_image_pixels: int = 64_000_000

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 12845056
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area in [min_pixels, max_pixels].

    Python `round` (half to even) as in HF; raises ValueError for aspect ratios above 200.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
            f"got {max(height, width) / min(height, width)} for a {height}x{width} image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def grid_for_size(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) in patches for an input of this size, without decoding it."""
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return 1, h // cfg.patch_size, w // cfg.patch_size


def num_image_tokens(grid_thw: tuple[int, int, int] | np.ndarray, merge_size: int = 2) -> int:
    """LLM placeholder count for one image: t*h*w / merge^2."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (merge_size * merge_size)


def open_figure(figure: Any, max_image_pixels: int) -> Image.Image:
    """A record's `figure` (PIL image, PNG/JPEG bytes, base64 string, path or HWC uint8 array) as
    a PIL image; raises ValueError naming the problem for unreadable or oversized input."""
    if isinstance(figure, Image.Image):
        image = figure
    elif isinstance(figure, np.ndarray):
        if figure.dtype != np.uint8 or figure.ndim not in (2, 3):
            raise ValueError(f"array figure must be HxW[xC] uint8: {figure.dtype} {figure.shape}")
        image = Image.fromarray(figure)
    else:
        if isinstance(figure, (bytes, bytearray, memoryview)):
            source: Any = io.BytesIO(bytes(figure))
        elif isinstance(figure, (str, os.PathLike)):
            text = os.fspath(figure)
            if os.path.isfile(text):
                source = text
            else:
                try:  # ReasonMap stores the map as a base64 PNG string
                    source = io.BytesIO(base64.b64decode(text, validate=True))
                except (binascii.Error, ValueError):
                    raise FileNotFoundError(f"figure file not found: {text[:200]!r}") from None
        elif isinstance(figure, dict) and ("bytes" in figure or "path" in figure):
            return open_figure(figure.get("bytes") or figure.get("path"), max_image_pixels)
        else:
            raise ValueError(f"unsupported figure type {type(figure).__name__}")
        # PIL's decompression-bomb guard is replaced by our explicit `max_image_pixels` bound.
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(source)
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot decode figure: {e}") from e
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    if image.width * image.height > max_image_pixels:
        raise ValueError(
            f"figure is {image.width}x{image.height} = {image.width * image.height} pixels, above "
            f"max_image_pixels={max_image_pixels} (config data.max_image_pixels)"
        )
    try:
        image.load()
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode figure: {e}") from e
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white (HF `convert_to_rgb`)."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def patchify(image_chw: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """(C, H, W) -> (H/p * W/p, C*T*p*p) rows in HF order (frame repeated T times).

    Row order: merged-block row, merged-block column, then the m x m patches of the block
    (row-major); column order: channel, temporal copy, patch row, patch column.
    """
    c, h, w = image_chw.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    x = image_chw.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, C, ph, pw)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return x.reshape(gh * gw, c * t * p * p)


def preprocess(
    image: Image.Image | np.ndarray, cfg: ImageProcessorConfig, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (pixel rows (t*gh*gw, 1176) `dtype`, grid_thw (3,) int32)."""
    if isinstance(image, np.ndarray):
        image = open_figure(image, cfg.max_image_pixels)
    image = to_rgb(image)
    height, width = image.height, image.width
    new_h, new_w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    # HF: float64 rescale, downcast to float32, then normalize in float32.
    arr = (np.asarray(image, dtype=np.uint8).astype(np.float64) * cfg.rescale_factor).astype(
        np.float32
    )
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    arr = ((arr - mean) / std).transpose(2, 0, 1)
    rows = patchify(arr, cfg)
    grid = np.array([1, new_h // cfg.patch_size, new_w // cfg.patch_size], dtype=np.int32)
    return np.ascontiguousarray(rows, dtype=dtype), grid
