"""`python -m roillava.build_base`: a llava-hf base composed from a LLaMA-family LM and a CLIP tower."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
)

from playground.real_shapes import real_tokenizer

ROOT = Path(__file__).resolve().parent.parent

# (hidden, intermediate, heads, vision hidden, vision intermediate, vision heads, image size, patch)
WIDTHS = {
    "tiny": (64, 128, 4, 32, 64, 2, 56, 14),
    "real": (4096, 11008, 32, 1024, 4096, 16, 336, 14),  # Vicuna-7B, CLIP ViT-L/14-336
}


def sources(tmp: Path, widths) -> tuple[Path, Path]:
    """A 1-layer LlamaForCausalLM with its tokenizer (no <image>, no pad) and a 2-layer CLIP tower."""
    hidden, inter, heads, v_hidden, v_inter, v_heads, size, patch = widths
    torch.manual_seed(0)
    lm = LlamaForCausalLM._from_config(
        LlamaConfig(
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=1,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            vocab_size=32000,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        ),
        dtype=torch.bfloat16,
    )
    lm.save_pretrained(tmp / "lm")
    real_tokenizer(llava_tokens=False).save_pretrained(tmp / "lm")
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=v_hidden,
            intermediate_size=v_inter,
            num_hidden_layers=2,
            num_attention_heads=v_heads,
            image_size=size,
            patch_size=patch,
            hidden_act="quick_gelu",
        )
    ).to(torch.bfloat16)
    tower.save_pretrained(tmp / "tower")
    return tmp / "lm", tmp / "tower"


@pytest.mark.parametrize("scale", ["tiny", pytest.param("real", marks=pytest.mark.real)])
def test_build_base_composes_a_loadable_llava(scale, tmp_path):
    lm_dir, tower_dir = sources(tmp_path, WIDTHS[scale])
    out = tmp_path / "base"
    proc = subprocess.run(
        [sys.executable, "-m", "roillava.build_base", "--lm", str(lm_dir), "--vision-tower", str(tower_dir)]
        + ["--out", str(out)],
        cwd=ROOT / "RoiLLaVA",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    from roillava.model import llava_processor

    model = LlavaForConditionalGeneration.from_pretrained(out)
    config = model.config
    size, patch = WIDTHS[scale][6:]
    rows = (size // patch) ** 2
    assert config.image_token_index == 32000 and config.pad_token_id == 32001
    assert config.text_config.vocab_size == 32064  # 32002 rows padded to a multiple of 64, as llava-hf's
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == rows and config.projector_hidden_act == "gelu"

    processor = llava_processor(out, "pad")
    assert isinstance(processor.image_processor, LlavaImageProcessorPil)
    shipped = json.loads((out / "processor_config.json").read_text())
    assert json.dumps(shipped).count('"do_pad": true') == 1
    assert (
        processor.tokenizer.convert_tokens_to_ids("<image>") == 32000
        and processor.tokenizer.pad_token == "<pad>"
    )
    batch = processor(
        images=Image.new("RGB", (size * 2, size)),
        text="USER: <image>\nWhat is it? ASSISTANT:",
        return_tensors="pt",
    )
    assert batch["pixel_values"].shape == (1, 3, size, size)
    assert int((batch["input_ids"] == 32000).sum()) == rows
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 32064) and torch.isfinite(logits).all()

    # The LM's and tower's weights are the sources' (the LM's first 32000 embedding rows unchanged).
    state = model.state_dict()
    lm_state = load_file(lm_dir / "model.safetensors")
    torch.testing.assert_close(
        state["model.language_model.layers.0.self_attn.q_proj.weight"],
        lm_state["model.layers.0.self_attn.q_proj.weight"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        state["model.language_model.embed_tokens.weight"][:32000],
        lm_state["model.embed_tokens.weight"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(state["lm_head.weight"][:32000], lm_state["lm_head.weight"], rtol=0, atol=0)
    new_row = state["model.language_model.embed_tokens.weight"][32000].float()  # <image>: the old rows' mean
    torch.testing.assert_close(
        new_row, lm_state["model.embed_tokens.weight"].float().mean(0), rtol=0.02, atol=1e-3
    )
    tower_state = load_file(tower_dir / "model.safetensors")
    for name, value in tower_state.items():
        torch.testing.assert_close(state[f"model.vision_tower.{name}"], value, rtol=0, atol=0)
    projector = state["model.multi_modal_projector.linear_1.weight"]
    assert projector.shape == (WIDTHS[scale][0], WIDTHS[scale][3]) and projector.std() > 0
