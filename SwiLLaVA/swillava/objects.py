"""Objects as evidence: validated boxes, 1.2x-context crops, location strings and the long/short rules.

Boxes are SEAL's `[x, y, w, h]` in pixels of the original (unpadded) image. Everything here is shared by
the training data and inference, so an object is described to the model identically in both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from .conversation import IMAGE_PLACEHOLDER, OBJECT_PLACEHOLDER

# SEAL's protocol literals: the switch's "System 2 needed" sentence and the
# prefix of the evidence prompt.
MISSING_OBJECTS_PREFIX = (
    "Sorry, I can not answer the question. "
    "Some visual information about the following objects is missing or unclear:"
)
EVIDENCE_PREFIX = "Additional visual information to focus on: "


@dataclass(frozen=True)
class ObjectInstance:
    """A named object and its box `(x, y, w, h)` in pixels of the original image."""

    name: str
    box: tuple[float, float, float, float]


def check_name(name: object) -> str:
    """Object names become comma-separated lists in the missing-objects answer, so commas are refused."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"object name must be a non-empty string, got {name!r}")
    if "," in name:
        raise ValueError(
            f"object name {name!r} contains a comma (it would split in the missing-objects list)"
        )
    if IMAGE_PLACEHOLDER in name or OBJECT_PLACEHOLDER in name:
        raise ValueError(f"object name {name!r} contains a placeholder")
    return name.strip()


def check_box(box: object, width: int, height: int) -> tuple[float, float, float, float]:
    """A usable `(x, y, w, h)`: finite, positive width and height, overlapping the image.

    A box that sticks out of the image is clamped to it (SEAL clamps both the crop and the location
    string); zero-area, negative-size and fully-outside boxes are errors.
    """
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"box must be [x, y, w, h], got {box!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise ValueError(f"box must hold 4 finite numbers, got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        kind = "zero-area" if w == 0 or h == 0 else "negative width or height in"
        raise ValueError(f"{kind} box [x, y, w, h] = {list(box)}")
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box [x, y, w, h] = {list(box)} lies outside the {width}x{height} image")
    return (x1, y1, x2 - x1, y2 - y1)


def patch_bounds(
    box: Sequence[float], width: int, height: int, scale: float = 1.2
) -> tuple[int, int, int, int]:
    """SEAL's `get_patch`: the box's centre, `scale` x its (ceiled) size, shifted inside the image.

    Returns `(left, top, right, bottom)` pixel bounds; at least one pixel wide and high.
    """
    x, y, bw, bh = box
    w, h = math.ceil(bw), math.ceil(bh)
    cx, cy = int(x + w / 2), int(y + h / 2)
    pw, ph = int(scale * w), int(scale * h)
    left, top = max(0, cx - pw // 2), max(0, cy - ph // 2)
    right, bottom = min(left + pw, width), min(top + ph, height)
    # Only reachable for sub-pixel boxes on the far edge; keep one pixel instead of an empty crop.
    left, top = min(left, right - 1), min(top, bottom - 1)
    return left, top, right, bottom


def crop_object(image: Image.Image, box: Sequence[float], size: int, scale: float = 1.2) -> Image.Image:
    """The object's context crop from the unpadded image, resized (aspect not kept) to `size` x `size`."""
    crop = image.crop(patch_bounds(box, *image.size, scale=scale))
    return crop.resize((size, size), Image.Resampling.BICUBIC)


def location_string(box: Sequence[float], width: int, height: int) -> str:
    """`[x1,y1,x2,y2]` with 3 decimals, normalised by the side of the centred, padded square."""
    side = max(width, height)
    ox, oy = (side - width) // 2, (side - height) // 2
    x, y, w, h = box
    coords = ((x + ox) / side, (y + oy) / side, (x + w + ox) / side, (y + h + oy) / side)
    return "[" + ",".join(f"{min(max(c, 0.0), 1.0):.3f}" for c in coords) + "]"


def object_text(obj: ObjectInstance, width: int, height: int) -> str:
    return f"{obj.name} {OBJECT_PLACEHOLDER} at location {location_string(obj.box, width, height)}"


def expand_objects(
    turns: list[tuple[str, str | None]], objects: list[ObjectInstance], width: int, height: int
) -> list[tuple[str, str | None]]:
    """Replace the k-th bare `<object>` (counted over the conversation) by `"{name} <object> at location [...]"`.

    SEAL restarts k in every turn; counting over the conversation keeps names and crops paired (they
    coincide for single-turn records, the only kind SEAL's data has with objects).
    """
    stream: Iterator[ObjectInstance] = iter(objects)
    pattern = re.compile(re.escape(OBJECT_PLACEHOLDER))
    return [(pattern.sub(lambda _: object_text(next(stream), width, height), q), a) for q, a in turns]


def evidence_question(question: str, n_objects: int) -> str:
    """SEAL's evidence prompt with bare placeholders, expanded later by `expand_objects`."""
    if n_objects == 0:
        return question
    return EVIDENCE_PREFIX + "; ".join([OBJECT_PLACEHOLDER] * n_objects) + ".\n" + question


def feature_layout(n_objects: int, rule: str) -> tuple[bool, list[bool]]:
    """(image uses long rows, per-object long rows) for `n_objects` objects.

    "train" is SEAL's training rule: one object -> short image, long object; otherwise long image
    and short objects. "infer" is SEAL's evidence rule: with objects the image is short, and
    objects are long when there are at most two. Both give a long image when there are no objects.
    """
    if rule == "train":
        if n_objects == 1:
            return False, [True]
        return True, [False] * n_objects
    if rule == "infer":
        if n_objects == 0:
            return True, []
        return False, [n_objects <= 2] * n_objects
    raise ValueError(f"unknown feature rule {rule!r} (train | infer)")
