"""SAM's image preprocessing and mask post-processing, as LISA does them.

Preprocessing: RGB uint8 -> longest side = SAM's input size (1024 for Meta's SAM; the SamConfig's
``vision_config.image_size`` in general), PIL bilinear with ``int(x + 0.5)`` rounding -> normalise with
ImageNet mean/std in 0-255 units -> zero-pad bottom/right to a square. Post-processing undoes it: low-res
logits -> bilinear to the padded square -> crop to the resized (pre-pad) size -> bilinear to the original
size. Both are plain functions of the SAM input size, so the same code serves the tiny and the real SAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
_MEAN = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
_STD = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)


def resized_longest_side(height: int, width: int, target: int) -> tuple[int, int]:
    """(h', w') with the longer side = target, rounded as Meta's ResizeLongestSide does."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class SamImage:
    """One preprocessed image: padded pixels [3, S, S], resized size (h', w') and original size (H, W)."""

    pixel_values: torch.Tensor
    resized_size: tuple[int, int]
    original_size: tuple[int, int]


def sam_preprocess(image: Image.Image | np.ndarray, image_size: int) -> SamImage:
    """Resize the longest side to `image_size`, normalise, zero-pad to `image_size`²."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    from eval.images import to_rgb

    image = to_rgb(image)
    width, height = image.size
    new_h, new_w = resized_longest_side(height, width, image_size)
    resized = torch.from_numpy(np.array(image.resize((new_w, new_h), Image.BILINEAR))).permute(2, 0, 1)
    padded = torch.zeros((3, image_size, image_size), dtype=torch.float32)
    padded[:, :new_h, :new_w] = (resized.float() - _MEAN) / _STD
    return SamImage(padded, (new_h, new_w), (height, width))


def postprocess_masks(
    low_res_logits: torch.Tensor,
    image_size: int,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """[N, h, w] mask logits of one image -> [N, H, W] logits at the image's original size."""
    if low_res_logits.ndim != 3:
        raise ValueError(f"expected [N, h, w] logits, got {tuple(low_res_logits.shape)}")
    x = low_res_logits.unsqueeze(1).float()
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : resized_size[0], : resized_size[1]]
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return x.squeeze(1)
