"""Geometry of LLaVA-1.5's padded square frame, where every ROI box lives.

LLaVA-1.5 pads an image to a square with the CLIP mean colour, centred on the short axis
(offset `(long - short) // 2`). Chain-of-Spot boxes are `[x1, y1, x2, y2]` normalised by that
square's side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLIP_MEAN_RGB = (122, 116, 104)  # int(255 * CLIP mean), LLaVA's padding colour


@dataclass(frozen=True)
class PaddedFrame:
    """The square an image of `width` x `height` is pasted into, and where it sits."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        return (self.side - self.width) // 2, (self.side - self.height) // 2

    def to_normalised(self, box_xyxy: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Original-pixel x1y1x2y2 → normalised padded-frame coordinates, clipped to [0, 1]."""
        ox, oy = self.offset
        x1, y1, x2, y2 = box_xyxy
        s = self.side
        return tuple(
            min(1.0, max(0.0, v)) for v in ((x1 + ox) / s, (y1 + oy) / s, (x2 + ox) / s, (y2 + oy) / s)
        )

    def to_pixels(self, box_norm: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Normalised padded-frame box → original-pixel x1y1x2y2 (may extend into the padding)."""
        ox, oy = self.offset
        x1, y1, x2, y2 = (v * self.side for v in box_norm)
        return x1 - ox, y1 - oy, x2 - ox, y2 - oy


def expand_to_square(image: Image.Image, fill: tuple[int, int, int] = CLIP_MEAN_RGB) -> Image.Image:
    """LLaVA-1.5's pad-to-square (identical to llava-hf's `do_pad=True`)."""
    frame = PaddedFrame(*image.size)
    if image.width == image.height:
        return image
    square = Image.new(image.mode, (frame.side, frame.side), fill)
    square.paste(image, frame.offset)
    return square


def cos_box_from_params(params: list[float], width: int, height: int) -> list[float]:
    """Chain-of-Spot's `[top, left, side]` (original pixels) → `[x1, y1, x2, y2]` on the padded frame.

    The square is shifted by the pad offset, clipped to the image content, normalised and
    rounded to 3 decimals, exactly as the Chain-of-Spot ROI data were made.
    """
    top, left, side = params
    frame = PaddedFrame(width, height)
    ox, oy = frame.offset
    x1, y1 = left + ox, top + oy
    x2 = min(x1 + side, ox + width)
    y2 = min(y1 + side, oy + height)
    x1, y1 = max(x1, ox), max(y1, oy)
    s = frame.side
    return [round(x1 / s, 3), round(y1 / s, 3), round(x2 / s, 3), round(y2 / s, 3)]


def padded_crop_bounds(width: int, height: int, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
    """Pixel bounds (left, top, right, bottom) of a normalised box on the padded square, >= 1 px: the one
    rounding every crop, region box and pasted mask uses."""
    side = PaddedFrame(width, height).side
    x1, y1, x2, y2 = box_norm
    left, top = int(round(x1 * side)), int(round(y1 * side))
    return left, top, max(left + 1, int(round(x2 * side))), max(top + 1, int(round(y2 * side)))


def crop_padded(image: Image.Image, box_norm: tuple[float, float, float, float]) -> Image.Image:
    """The normalised padded-frame box cut from the padded image (at least 1 px each way)."""
    return expand_to_square(image).crop(padded_crop_bounds(image.width, image.height, box_norm))


def region_pixel_box(width: int, height: int, box_norm: Sequence[float]) -> tuple[float, float, float, float]:
    """The region as `(x, y, w, h)` on the original image (clipped to it; at least 1 px)."""
    ox, oy = PaddedFrame(width, height).offset
    left, top, right, bottom = padded_crop_bounds(width, height, box_norm)
    x1, y1 = min(max(left - ox, 0), width - 1), min(max(top - oy, 0), height - 1)
    x2, y2 = max(min(right - ox, width), x1 + 1), max(min(bottom - oy, height), y1 + 1)
    return float(x1), float(y1), float(x2 - x1), float(y2 - y1)


def paste_region_mask(mask: np.ndarray, width: int, height: int, box_norm: Sequence[float]) -> np.ndarray:
    """A mask predicted on the region crop (`crop_padded`), placed on the original image (padding cut away)."""
    frame = PaddedFrame(width, height)
    ox, oy = frame.offset
    left, top, right, bottom = padded_crop_bounds(width, height, box_norm)
    if mask.shape != (bottom - top, right - left):
        raise ValueError(f"region mask is {mask.shape}, the region is {(bottom - top, right - left)}")
    full = np.zeros((frame.side, frame.side), dtype=bool)
    full[top:bottom, left:right] = mask
    return full[oy : oy + height, ox : ox + width]
