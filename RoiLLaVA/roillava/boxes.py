"""Geometry of LLaVA-1.5's padded square frame, where every ROI box lives.

LLaVA-1.5 pads an image to a square with the CLIP mean colour, centred on the short axis
(offset `(long - short) // 2`). Chain-of-Spot boxes are `[x1, y1, x2, y2]` normalised by that
square's side.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def crop_padded(image: Image.Image, box_norm: tuple[float, float, float, float]) -> Image.Image:
    """The normalised padded-frame box cut from the padded image (at least 1 px each way)."""
    square = expand_to_square(image)
    s = square.width
    x1, y1, x2, y2 = box_norm
    left, top = int(round(x1 * s)), int(round(y1 * s))
    right, bottom = max(left + 1, int(round(x2 * s))), max(top + 1, int(round(y2 * s)))
    return square.crop((left, top, right, bottom))
