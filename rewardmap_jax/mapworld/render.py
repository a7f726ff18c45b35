"""PIL renderer of transit maps: coloured lines, station markers with labels, transfers, legend.

Only Pillow's bundled font (`ImageFont.load_default(size)`) is used, so no system fonts are
needed and the pixels are the same on every machine with the same Pillow.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rewardmap_jax.mapworld.network import Network

if TYPE_CHECKING:
    from rewardmap_jax.mapworld.generator import WorldConfig

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
LEGEND_ROW_PX = 24  # legend row pitch; the legend font is 0.6 of it
Box = tuple[float, float, float, float]


_FONTS = threading.local()  # a FreeType face must not render in two threads at once


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    cache = _FONTS.__dict__.setdefault("by_size", {})
    size = max(int(size), 6)
    if size not in cache:
        cache[size] = ImageFont.load_default(size)
    return cache[size]


def _sizes(world: WorldConfig) -> tuple[int, float, int]:
    """(line width px, station radius px, label font px) for `world`."""
    cell = world.cell
    return (
        max(2, round(world.line_width_scale * cell)),
        max(2.0, world.station_radius_scale * cell),
        max(6, round(world.label_scale * cell)),
    )


def _obstacles(network: Network, world: WorldConfig) -> np.ndarray:
    """Boxes (N, 4) of station markers and line segments, which labels should not cover."""
    line_w, radius, _ = _sizes(world)
    pos = network.position
    boxes = [(x - radius, y - radius, x + radius, y + radius) for x, y in pos.values()]
    half = line_w / 2
    for line in network.lines:
        for a, b in zip(line.stations[:-1], line.stations[1:], strict=True):
            (x1, y1), (x2, y2) = pos[a], pos[b]
            boxes.append(
                (min(x1, x2) - half, min(y1, y2) - half, max(x1, x2) + half, max(y1, y2) + half)
            )
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _hits(box: Box, others: np.ndarray) -> int:
    if not len(others):
        return 0
    return int(
        np.count_nonzero(
            (others[:, 0] < box[2])
            & (box[0] < others[:, 2])
            & (others[:, 1] < box[3])
            & (box[1] < others[:, 3])
        )
    )


def label_boxes(network: Network, world: WorldConfig) -> dict[str, tuple[tuple[float, float], Box]]:
    """Station -> (text anchor (x, y), background box) of its label.

    Letter labels sit in the upper-left corner of the station's cell, where no line runs (the
    layouts keep lines on cell centres). Place names try positions around the station and take
    the one that covers the fewest earlier labels, markers and line segments (first on ties).
    """
    _, radius, size = _sizes(world)
    font = _font(size)
    pad = max(1.0, 0.06 * world.cell)
    out: dict[str, tuple[tuple[float, float], Box]] = {}
    obstacles = _obstacles(network, world) if not world.letter_labels else np.zeros((0, 4))
    placed: list[Box] = []
    for name, (x, y) in network.positions:
        left, top, right, bottom = font.getbbox(name)
        w, h = right - left, bottom - top
        if world.letter_labels:
            candidates = [(x - world.cell / 2 + pad, y - world.cell / 2 + pad)]
        else:
            gap = radius + pad
            candidates = [
                (x + gap, y - gap - h),
                (x + gap, y + gap),
                (x - gap - w, y - gap - h),
                (x - gap - w, y + gap),
                (x - w / 2, y - gap - h - pad),
                (x - w / 2, y + gap + pad),
                (x + gap + pad, y - h / 2),
                (x - gap - pad - w, y - h / 2),
            ]
        best, best_hits = None, None
        for cx, cy in candidates:
            box = (cx - 1, cy - 1, cx + w + 1, cy + h + 1)
            hits = _hits(box, obstacles) + _hits(box, np.asarray(placed).reshape(-1, 4))
            if min(box) < 0 or max(box[0], box[2], box[1], box[3]) > world.image_size:
                hits += len(obstacles) + len(placed) + 1  # off the map: only as a last resort
            if best_hits is None or hits < best_hits:
                best, best_hits = ((cx - left, cy - top), box), hits
            if hits == 0:
                break
        assert best is not None
        placed.append(best[1])
        out[name] = best
    return out


def render_map(network: Network, world: WorldConfig) -> Image.Image:
    """The map of `network` as an RGB image, `image_size` (+ legend) x `image_size` px."""
    line_w, radius, size = _sizes(world)
    width = world.image_size + (world.legend_width if world.legend else 0)
    img = Image.new("RGB", (width, world.image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    pos = network.position
    for line in network.lines:
        pts = [pos[s] for s in line.stations]
        draw.line(pts, fill=line.color, width=line_w, joint="curve")
    transfers = set(network.transfer_stations)
    for name, (x, y) in network.positions:
        if name in transfers and world.transfer_style == "dot":
            r = radius * 1.35  # a filled disc: one distinct pixel pattern for every transfer
            draw.ellipse((x - r, y - r, x + r, y + r), fill=INK, outline=INK, width=1)
        elif name in transfers:
            r = radius * 1.35
            draw.ellipse((x - r, y - r, x + r, y + r), fill=BACKGROUND, outline=INK, width=2)
        else:
            r = radius
            draw.ellipse((x - r, y - r, x + r, y + r), fill=BACKGROUND, outline=INK, width=1)
    font = _font(size)
    boxes = label_boxes(network, world)
    for name, (anchor, box) in boxes.items():
        if not world.letter_labels:
            draw.rectangle(box, fill=BACKGROUND)
        draw.text(anchor, name, fill=INK, font=font)
    if world.legend:
        _draw_legend(draw, network, world, radius)
    return img


def _draw_legend(draw: ImageDraw.ImageDraw, network: Network, world: WorldConfig, radius: float):
    x0 = world.image_size
    font = _font(round(LEGEND_ROW_PX * 0.6))
    draw.line((x0, 0, x0, world.image_size), fill=INK, width=1)
    y = LEGEND_ROW_PX * 0.5
    draw.text((x0 + 12, y), "Legend", fill=INK, font=font)
    for line in network.lines:
        y += LEGEND_ROW_PX
        draw.line((x0 + 12, y + 8, x0 + 52, y + 8), fill=line.color, width=6)
        draw.text((x0 + 62, y), line.name, fill=INK, font=font)
    y += LEGEND_ROW_PX
    r = radius * 1.35
    cx, cy = x0 + 32, y + 8
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=BACKGROUND, outline=INK, width=2)
    draw.text((x0 + 62, y), "Transfer station", fill=INK, font=font)


def highlight_stations(
    image: Image.Image,
    network: Network,
    world: WorldConfig,
    first: str,
    second: str | None = None,
) -> Image.Image:
    """A copy of `image` with a thick ring on `first` and a thick square frame on `second`.

    The label boxes are cut out of the markers, so the letters stay readable.
    """
    img = image.copy()
    draw = ImageDraw.Draw(img)
    pos = network.position
    half = 0.42 * world.cell
    width = max(2, round(0.1 * world.cell))
    x, y = pos[first]
    draw.ellipse((x - half, y - half, x + half, y + half), outline=INK, width=width)
    if second is not None:
        x, y = pos[second]
        draw.rectangle((x - half, y - half, x + half, y + half), outline=INK, width=width)
    _, _, size = _sizes(world)
    font = _font(size)
    boxes = label_boxes(network, world)
    for name in (first, second):
        if name is None:
            continue
        anchor, box = boxes[name]
        draw.rectangle(box, fill=BACKGROUND)
        draw.text(anchor, name, fill=INK, font=font)
    return img
