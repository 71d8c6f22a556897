"""Any image file as the 8-bit RGB picture a person would see: every PIL mode, EXIF orientation applied.

`Image.convert("RGB")` alone goes wrong on several modes real datasets contain: 16-bit PNGs ("I;16",
"I") are clipped to 255 and come out white, float images ("F") likewise, and transparent pixels take
whatever colour hides under them (often black). The camera's EXIF orientation is ignored, so a portrait
photo is seen lying on its side (OpenCV's `imread`, which LISA uses, applies it). Torch-free; every
sibling reads images through `to_rgb`/`open_rgb`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# What a transparent pixel is shown as (a page or viewer background).
BACKGROUND = (255, 255, 255)
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


def _high_depth_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale scaled to 0..255 by the range its type can hold."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        hi = float(finite.max()) if finite.size else 0.0
        # floats in 0..1 are fractions; anything larger is taken as 0..255 (clipped)
        a = np.nan_to_num(a, nan=0.0) * (255.0 if hi <= 1.0 else 1.0)
    else:
        a = a.astype(np.float64)
        hi = float(a.max()) if a.size else 0.0
        # "I;16*" is 16-bit; "I" holds 8- or 16-bit data (PNG) or wider: scale by the smallest range that fits
        if img.mode.startswith("I;16") or hi > 255:
            a = a / (65535.0 if hi <= 65535 else hi) * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `img`, whatever its mode; EXIF orientation applied; alpha over white."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    elif mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_8bit(img).convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def open_rgb(path: str | Path) -> Image.Image:
    """`to_rgb` of an image file (decoded fully, file closed)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as `open_rgb` returns it, read from the header only."""
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in _TRANSPOSED else (w, h)


def open_image(path: str | Path) -> Image.Image:
    """`open_rgb` for a runner or a dataset: a missing or unreadable file raises an error naming it."""
    try:
        return open_rgb(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, ValueError) as e:
        raise OSError(f"unreadable image {path}: {e}") from None
