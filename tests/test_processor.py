"""Whatever image processor a checkpoint ships, every loader preprocesses as LLaVA-1.5 does.

llava-hf's llava-1.5 checkpoints ship a `CLIPImageProcessor` config (resize + centre crop); setting
`do_pad` on it is silently ignored, so a loader that trusts the shipped class crops where LLaVA pads.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaImageProcessorPil

from eval.llava_hf import load_processor as fast_processor
from roillava.model import llava_processor as roi_processor
from segllava.model import load_processor as seg_processor
from swillava.model import llava_processor as swi_processor

LOADERS = {"roillava": roi_processor, "swillava": swi_processor, "segllava": seg_processor}


@pytest.fixture(scope="module")
def hub_style_dir(tiny_base, tmp_path_factory):
    """The tiny base's tokenizer with a plain `CLIPImageProcessor` config, as llava-hf ships it."""
    d = tmp_path_factory.mktemp("hub_style")
    for f in tiny_base.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, d / f.name)
    config = json.loads((d / "processor_config.json").read_text())
    del config["image_processor"]  # the hub files keep it in preprocessor_config.json
    (d / "processor_config.json").write_text(json.dumps(config))
    side = json.loads((tiny_base / "config.json").read_text())["vision_config"]["image_size"]
    shipped = AutoProcessor.from_pretrained(tiny_base).image_processor
    (d / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": side},
                "do_center_crop": True,
                "crop_size": {"height": side, "width": side},
                "do_normalize": True,
                "image_mean": list(shipped.image_mean),
                "image_std": list(shipped.image_std),
                "resample": 3,
            }
        )
    )
    return d


def wide_image() -> Image.Image:
    """2:1, with a red band at the left border that a centre crop would cut off."""
    a = np.full((60, 120, 3), 90, np.uint8)
    a[:, :10] = (255, 0, 0)
    return Image.fromarray(a)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_hub_clip_processor_pads_to_square(name, hub_style_dir, tiny_base):
    assert type(AutoProcessor.from_pretrained(hub_style_dir).image_processor).__name__.startswith("CLIP")
    processor = LOADERS[name](hub_style_dir, "pad")
    assert isinstance(processor.image_processor, LlavaImageProcessorPil)
    reference = AutoProcessor.from_pretrained(tiny_base).image_processor  # the toy base pads (do_pad=True)
    assert reference.do_pad
    ours = processor.image_processor(wide_image(), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, reference(wide_image(), return_tensors="pt")["pixel_values"])
    # The red band survives (left columns), and the top rows are the mean-colour padding (≈ 0 after normalising).
    middle = ours.shape[-2] // 2
    assert ours[0, 0, middle, 0] > 1.5
    assert ours[0, :, 0, :].abs().max() < 0.05


def test_square_is_llavas_resize_and_centre_crop(hub_style_dir):
    ours = roi_processor(hub_style_dir, "square").image_processor(wide_image(), return_tensors="pt")
    clip = AutoProcessor.from_pretrained(hub_style_dir).image_processor(wide_image(), return_tensors="pt")
    torch.testing.assert_close(ours["pixel_values"], clip["pixel_values"])


def test_agent_and_saved_processors_pad(hub_style_dir, tmp_path):
    processor = fast_processor(tmp_path / "no_processor_here", hub_style_dir)
    assert processor.image_processor.do_pad
    processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved").image_processor
    assert isinstance(reloaded, LlavaImageProcessorPil) and reloaded.do_pad


def test_unknown_aspect_ratio_is_refused(hub_style_dir):
    with pytest.raises(ValueError, match="pad or square"):
        roi_processor(hub_style_dir, "anyres")
