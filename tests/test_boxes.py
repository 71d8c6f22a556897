"""Pad-to-square and the Chain-of-Spot box transforms, against hand-computed values."""

import numpy as np
import pytest
import torch
from PIL import Image

from roillava.boxes import (
    CLIP_MEAN_RGB,
    PaddedFrame,
    cos_box_from_params,
    crop_padded,
    expand_to_square,
    padded_crop_bounds,
    paste_region_mask,
    region_pixel_box,
)


@pytest.mark.parametrize(
    ("size", "params", "expected"),
    [
        # 448x336 (landscape): oy = 56. x1=20, y1=10+56=66, x2=120, y2=166, /448, rounded.
        ((448, 336), [10, 20, 100], [0.045, 0.147, 0.268, 0.371]),
        # 336x448 (portrait): ox = 56. x1=20+56=76, y1=10, x2=176, y2=110.
        ((336, 448), [10, 20, 100], [0.17, 0.022, 0.393, 0.246]),
        # 448x448: no padding; the square is clipped at the right/bottom edge (500 -> 448).
        ((448, 448), [400, 400, 100], [0.893, 0.893, 1.0, 1.0]),
        # landscape, clipped at the content's bottom edge 56+336=392: y1=356, y2=392.
        ((448, 336), [300, 0, 100], [0.0, 0.795, 0.223, 0.875]),
    ],
)
def test_cos_box_from_params(size, params, expected):
    assert cos_box_from_params(params, *size) == expected


def test_padded_frame_round_trip():
    frame = PaddedFrame(448, 336)
    assert frame.side == 448 and frame.offset == (0, 56)
    norm = frame.to_normalised((20, 10, 120, 110))
    assert norm == pytest.approx((20 / 448, 66 / 448, 120 / 448, 166 / 448))
    assert frame.to_pixels(norm) == pytest.approx((20, 10, 120, 110))
    # 300x500: ox = 100. x: (-50+100)/500 = 0.1, (300+100)/500 = 0.8; y2 = 600/500 clipped to 1.
    assert PaddedFrame(300, 500).to_normalised((-50, 0, 300, 600)) == (0.1, 0.0, 0.8, 1.0)


def test_expand_to_square_matches_llava_hf_do_pad(processor):
    rng = np.random.default_rng(0)
    for size in ((448, 336), (336, 448), (448, 448)):
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        square = expand_to_square(img)
        assert square.size == (448, 448)
        if size != (448, 448):
            assert square.getpixel((0, 0)) == CLIP_MEAN_RGB
        ip = processor.image_processor
        padded_by_hf = ip(img, do_pad=True, return_tensors="pt")["pixel_values"]
        padded_by_us = ip(square, do_pad=False, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(padded_by_hf, padded_by_us)


def test_crop_touching_the_border():
    img = Image.new("RGB", (448, 336), (255, 0, 0))
    crop = crop_padded(img, (0.75, 0.75, 1.0, 1.0))
    assert crop.size == (112, 112)
    arr = np.asarray(crop)
    # rows 336..392 of the padded frame are image (red), rows 392..448 are padding
    assert (arr[:56] == (255, 0, 0)).all() and (arr[56:] == CLIP_MEAN_RGB).all()
    assert crop_padded(img, (1.0, 1.0, 1.0, 1.0)).size == (1, 1)


# --- a region on the padded frame: its crop, its box on the image, its mask pasted back --------------------
def test_region_bounds_and_box_on_a_landscape_image():
    # 448x336: side 448, oy = 56. (0.25, 0.25, 0.5, 0.5) is pixels 112..224 on the square both ways.
    assert padded_crop_bounds(448, 336, (0.25, 0.25, 0.5, 0.5)) == (112, 112, 224, 224)
    assert region_pixel_box(448, 336, (0.25, 0.25, 0.5, 0.5)) == (112.0, 56.0, 112.0, 112.0)
    assert region_pixel_box(448, 336, (0.0, 0.0, 1.0, 1.0)) == (0.0, 0.0, 448.0, 336.0)
    # a box wholly in the top padding still gives one pixel row of the image, never an empty box
    assert region_pixel_box(448, 336, (0.0, 0.0, 1.0, 0.05)) == (0.0, 0.0, 448.0, 1.0)
    # a degenerate box is at least one pixel on the square
    assert padded_crop_bounds(448, 336, (0.5, 0.5, 0.5, 0.5)) == (224, 224, 225, 225)


def test_crop_and_paste_are_inverse_on_the_image_content():
    """A mask that is True on the whole crop, pasted back, marks exactly the crop's part of the image."""
    img = Image.new("RGB", (336, 448), (9, 9, 9))  # portrait: ox = 56
    box = (0.1, 0.2, 0.3, 0.6)
    crop = crop_padded(img, box)
    left, top, right, bottom = padded_crop_bounds(336, 448, box)
    assert crop.size == (right - left, bottom - top)
    full = paste_region_mask(np.ones((crop.height, crop.width), bool), 336, 448, box)
    assert full.shape == (448, 336)
    x, y, w, h = region_pixel_box(336, 448, box)
    ys, xs = np.nonzero(full)
    assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
    # the crop's pixels that lie in the padding are the padding colour, and none of them is pasted
    assert crop.getpixel((0, 0)) == CLIP_MEAN_RGB and full.sum() == w * h
    with pytest.raises(ValueError, match="region mask is"):
        paste_region_mask(np.ones((5, 5), bool), 336, 448, box)
