"""The shallow real-width base has llava-1.5-7b-hf's shapes: 576 image rows, ids, hub processor class."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, SamConfig

pytestmark = pytest.mark.real


def test_real_base_has_llava_hf_shapes(real_base):
    config = AutoConfig.from_pretrained(real_base)
    assert config.text_config.hidden_size == 4096 and config.text_config.vocab_size == 32064
    assert config.vision_config.image_size == 336 and config.vision_config.patch_size == 14
    tokenizer = AutoTokenizer.from_pretrained(real_base)
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_index == 32000
    assert tokenizer.pad_token_id == 32001
    assert json.loads((real_base / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "CLIPImageProcessor"
    )
    processor = AutoProcessor.from_pretrained(real_base)
    batch = processor(
        images=Image.new("RGB", (448, 336)), text="USER: <image>\nHi ASSISTANT:", return_tensors="pt"
    )
    assert batch["pixel_values"].shape == (1, 3, 336, 336)
    assert int((batch["input_ids"] == 32000).sum()) == 576
    sam = SamConfig.from_pretrained(real_base / "sam")
    assert sam.vision_config.hidden_size == 1280 and sam.vision_config.image_size == 1024
