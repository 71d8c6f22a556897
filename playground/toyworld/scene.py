"""Procedural scenes: one coloured, patterned target shape among grey clutter.

The world is built so that System 2 matters. The target's pattern (stripes or checks, three
periods across the object, or plain) scales with the object: on a large target (64-128 px on a
448 px canvas) it survives the model's global 112 px view, while on a small one (20-30 px, so
5-7 px after downsampling) the stripes blur into the plain mean colour, and only a closer look
(a crop) shows them. Every pattern has the same mean colour, so colour is always readable.
The pattern is also readable from any fragment of the object, which a tiny vision tower learns in
minutes (global shape needs attention across patches and does not). Clutter is grey and never
from the target shape family, so no question needs binding attributes across named objects.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 175, 45),
    "blue": (40, 70, 235),
    "yellow": (240, 215, 30),
    "purple": (150, 45, 205),
    "cyan": (30, 205, 215),
}
PATTERNS: tuple[str, ...] = ("horizontal stripes", "vertical stripes", "checkered", "plain")
PATTERN_PERIODS = 3  # stripe pairs across the object: the pattern scales with the object
CANVAS_SIZES: tuple[tuple[int, int], ...] = ((448, 336), (336, 448), (448, 448))
LARGE_SIDE = (64, 128)
SMALL_SIDE = (20, 30)


@dataclass(frozen=True)
class Target:
    """The one named object of a scene; `bbox` is [x, y, w, h] in original pixels."""

    shape: str
    color: str
    pattern: str
    size: str  # "large" | "small"
    bbox: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """How questions and the switch adapter refer to the target."""
        return f"{self.color} object"


@dataclass
class Scene:
    image: Image.Image
    mask: np.ndarray  # uint8 [H, W], 1 on the target
    target: Target
    clutter_mask: np.ndarray  # uint8 [H, W], 1 on grey clutter


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of `shape` inscribed in a side x side square; None for the circle (drawn as ellipse)."""
    r = side / 2
    if shape == "circle":
        return None
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if shape == "cross":
        t = r / 3
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
            (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
            (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    poly = shape_polygon(shape, cx, cy, side)
    if poly is None:
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    """Low-saturation blotchy texture plus fine noise: cluttered, but never a target colour."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    coarse = nrng.integers(70, 190, size=(height // 32 + 2, width // 32 + 2, 1))
    tint = nrng.integers(-12, 13, size=(1, 1, 3))
    coarse = np.clip(coarse + tint, 0, 255).astype(np.uint8)
    base = Image.fromarray(np.repeat(coarse, 3, axis=2) if coarse.shape[2] == 1 else coarse)
    base = base.resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(6))
    noise = nrng.normal(0, 9, size=(height, width, 1))
    arr = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _draw_clutter(rng: random.Random, img: Image.Image, clutter: Image.Image) -> None:
    """Grey blobs, rings and strokes of both object sizes, from outside the target shape family."""
    draw, cdraw = ImageDraw.Draw(img), ImageDraw.Draw(clutter)
    width, height = img.size
    for _ in range(rng.randint(6, 12)):
        grey = rng.randint(35, 225)
        fill = (grey, grey, grey)
        side = rng.uniform(*SMALL_SIDE) if rng.random() < 0.5 else rng.uniform(*LARGE_SIDE)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = rng.choice(("blob", "ring", "stroke"))
        if kind == "blob":
            n = rng.randint(5, 8)
            pts = [
                (cx + side / 2 * rng.uniform(0.5, 1.0) * math.cos(2 * math.pi * k / n),
                 cy + side / 2 * rng.uniform(0.5, 1.0) * math.sin(2 * math.pi * k / n))
                for k in range(n)
            ]  # fmt: skip
            for d in (draw, cdraw):
                d.polygon(pts, fill=fill if d is draw else 1)
        elif kind == "ring":
            r = side / 2
            for d in (draw, cdraw):
                d.ellipse(
                    [cx - r, cy - r, cx + r, cy + r],
                    outline=fill if d is draw else 1,
                    width=max(2, int(side / 8)),
                )
        else:
            ang = rng.uniform(0, math.pi)
            dx, dy = side * math.cos(ang), side * math.sin(ang)
            for d in (draw, cdraw):
                d.line(
                    [cx - dx, cy - dy, cx + dx, cy + dy],
                    fill=fill if d is draw else 1,
                    width=rng.randint(2, 5),
                )


def pattern_tones(color: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dark and light tones of a hue; "plain" is their mean, so patterns share one mean colour."""
    dark = np.asarray(color, dtype=np.float32) * 0.75
    light = dark + (255 - dark) * 0.55
    return dark, light


def pattern_fill(
    pattern: str, color: tuple[int, int, int], x0: float, y0: float, side: float, shape_hw
) -> np.ndarray:
    """RGB [H, W, 3] of `pattern` anchored at the object's corner (x0, y0), period side / 3."""
    h, w = shape_hw
    dark, light = pattern_tones(color)
    half = side / PATTERN_PERIODS / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    bx, by = np.floor((xs - x0) / half), np.floor((ys - y0) / half)
    if pattern == "horizontal stripes":
        light_on = by % 2 == 1
    elif pattern == "vertical stripes":
        light_on = bx % 2 == 1
    elif pattern == "checkered":
        light_on = (bx + by) % 2 == 1
    elif pattern == "plain":
        return np.broadcast_to((dark + light) / 2, (h, w, 3)).copy()
    else:
        raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")
    return np.where(light_on[..., None], light, dark)


def make_scene(rng: random.Random, *, size: str | None = None) -> Scene:
    """One deterministic scene from `rng`; `size` forces a "large" or "small" target."""
    width, height = rng.choice(CANVAS_SIZES)
    img = _background(rng, width, height)
    clutter = Image.new("L", (width, height), 0)
    _draw_clutter(rng, img, clutter)

    size = size or rng.choice(("large", "small"))
    side = rng.uniform(*(LARGE_SIDE if size == "large" else SMALL_SIDE))
    shape, color, pattern = rng.choice(SHAPES), rng.choice(tuple(COLORS)), rng.choice(PATTERNS)
    margin = side / 2 + 4
    cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    target_layer = Image.new("L", (width, height), 0)
    _draw_shape(ImageDraw.Draw(target_layer), shape, cx, cy, side, fill=1)
    jitter = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLORS[color])

    mask = np.asarray(target_layer, dtype=np.uint8)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = pattern_fill(pattern, jitter, cx - side / 2 - x0, cy - side / 2 - y0, side, (y1 - y0, x1 - x0))
    arr = np.array(img)
    window = arr[y0:y1, x0:x1]
    inside = mask[y0:y1, x0:x1] > 0
    window[inside] = fill[inside].round().astype(np.uint8)
    img = Image.fromarray(arr)
    bbox = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    clutter_mask = np.asarray(clutter, dtype=np.uint8) * (1 - mask)
    return Scene(img, mask, Target(shape, color, pattern, size, bbox), clutter_mask)
