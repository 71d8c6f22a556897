"""Ground-truth masks from the annotation formats LISA reads, with errors that name the file.

* ReasonSeg / labelme JSON: polygons (int32-truncated points) outlined and filled largest first with 1,
  "ignore" polygons with 255 (excluded from scoring), "flag" polygons skipped (LISA's `get_mask_from_json`).
* COCO-style polygons or RLE (REFER, PACO-LVIS, PASCAL-Part): decoded with pycocotools; the parts of a
  multi-part object are merged (LISA sums them; a union keeps the mask binary).
* Label PNGs (ADE20K, COCO-Stuff, Mapillary): must have the image's size.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IGNORE_LABEL = 255


class DataError(ValueError):
    """An annotation or image that cannot be used; the message names the file (and record)."""


def open_rgb(path: str | Path) -> Image.Image:
    """8-bit RGB (any PIL mode, EXIF orientation applied, as OpenCV's imread does: `eval.images`)."""
    from eval.images import open_rgb as open_any

    try:
        return open_any(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (the dataset decodes them once)."""
    from eval.images import oriented_size

    try:
        return oriented_size(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def read_json(path: str | Path, *, fallback_encoding: str | None = None):
    """The parsed file; with `fallback_encoding`, a file that is not UTF-8 is read in that encoding
    (LISA reads ReasonSeg annotations as cp1252 when the default read fails)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read JSON ({e})") from None
    try:
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            if fallback_encoding is None:
                raise
            return json.loads(raw.decode(fallback_encoding))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read JSON ({e})") from None


def reason_seg_mask(json_path: str | Path, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] with 1 on the target, 255 on "ignore" regions, 0 elsewhere: LISA's `get_mask_from_json`.

    Pixel for pixel as LISA draws it: the points are cast to int32 (truncation toward zero, not
    rounding); each polygon is outlined (`polylines`, closed, 1 px) and filled; polygons are drawn in
    decreasing order of that drawn area (`argsort` reversed, so equal areas go later-listed first);
    a shape labelled exactly "flag" (any case) is skipped, one whose label contains "ignore" is 255.
    """
    record = read_json(json_path, fallback_encoding="cp1252")
    shapes = record.get("shapes") if isinstance(record, dict) else None
    if not isinstance(shapes, list):
        raise DataError(f"{json_path}: no 'shapes' list")
    values, polygons, areas = [], [], []
    for k, shape in enumerate(shapes):
        label = str(shape.get("label", ""))
        if label.lower() == "flag":
            continue
        points = np.asarray(shape.get("points", []), dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise DataError(f"{json_path}: shape {k} ({label!r}) is not a polygon of at least 3 points")
        if not np.isfinite(points).all():
            raise DataError(f"{json_path}: shape {k} ({label!r}) has a non-finite point")
        polygon = [points.astype(np.int32)]
        drawn = np.zeros((height, width), dtype=np.uint8)
        _draw_polygon(drawn, polygon, 1)
        areas.append(drawn.sum())  # numpy uint64, as LISA sorts them
        values.append(IGNORE_LABEL if "ignore" in label.lower() else 1)
        polygons.append(polygon)
    mask = np.zeros((height, width), dtype=np.uint8)
    for k in np.argsort(areas)[::-1] if areas else []:
        _draw_polygon(mask, polygons[k], values[k])
    return mask


def _draw_polygon(mask: np.ndarray, polygon: list[np.ndarray], value: int) -> None:
    cv2.polylines(mask, polygon, True, value, 1)
    cv2.fillPoly(mask, polygon, value)


def coco_segmentation_mask(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """Binary uint8 [H, W] of a COCO polygon list or RLE (compressed or not)."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):
            if not segmentation or any(len(p) < 6 for p in segmentation):
                raise DataError(f"{where}: a polygon has fewer than 3 points")
            rles = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            rle = dict(segmentation)
            if list(rle.get("size", [])) != [height, width]:
                raise DataError(
                    f"{where}: RLE size {rle.get('size')} differs from the image ({height}, {width})"
                )
            if isinstance(rle["counts"], list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            rles = [rle]
        else:
            raise DataError(f"{where}: unknown segmentation type {type(segmentation).__name__}")
        decoded = mask_utils.decode(rles)
    except DataError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"{where}: cannot decode the segmentation ({e})") from None
    if decoded.ndim == 3:
        decoded = decoded.max(axis=2)
    return decoded.astype(np.uint8)


def read_label_png(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """A label map [H, W]; its (width, height) must equal the image's."""
    try:
        with Image.open(path) as im:
            label = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: cannot read label map ({e})") from None
    if label.ndim != 2:
        raise DataError(f"{path}: label map must be single-channel, got shape {label.shape}")
    if (label.shape[1], label.shape[0]) != tuple(image_size):
        raise DataError(
            f"{path}: label map size {label.shape[1]}x{label.shape[0]} differs from its image "
            f"{image_size[0]}x{image_size[1]}"
        )
    return label


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and scalars: REFER's `refs(*).p` is a list of plain dicts."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def load_plain_pickle(path: str | Path):
    """Read a pickle of plain data (dicts, lists, strings, numbers) without running any code."""
    try:
        with open(path, "rb") as f:
            # REFER's files were written by Python 2; their byte strings are UTF-8 text.
            return _PlainDataUnpickler(f, encoding="utf-8").load()
    except (OSError, pickle.UnpicklingError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the pickle ({e})") from None
