"""At LLaVA-1.5-7B widths (LLaMA 4096/11008/32 heads, vocab 32000, CLIP ViT-L/14-336; 1 text layer, 2 vision
layers): the converted model has llava-1.5-7b-hf's geometry and computes what the original does."""

from __future__ import annotations

import json

import pytest
import torch
from original_layouts import (
    PLACEHOLDER,
    converted_logits,
    reference_logits,
    reference_projector,
    save_sharded_bin,
)
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from eval.original_checkpoint import read_state_dict
from playground.real_shapes import real_tokenizer
from roillava.convert import main

pytestmark = pytest.mark.real


def _original_tokenizer(directory) -> None:
    """LLaMA's 32000 ids without llava-hf's additions, as the original repos ship it (tokenizer.json form)."""
    tok = real_tokenizer()
    state = json.loads(tok.backend_tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in ("<image>", "<pad>")]
    (directory / "tokenizer.json").write_text(json.dumps(state))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                    "unk_token": "<unk>", "pad_token": "<unk>"})
    )  # fmt: skip


def test_llava15_at_real_widths(tmp_path):
    torch.manual_seed(0)
    tower_config = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip
    # bf16-exact values: the converter stores the tower in the checkpoint's dtype (bf16 here)
    tower = CLIPVisionModel(tower_config).to(torch.bfloat16).float().eval()
    tower.save_pretrained(tmp_path / "clip336")
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=1, num_attention_heads=32, vocab_size=32000,
        rms_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device("meta"):
        shapes = LlamaForCausalLM(text).state_dict()
    llama = {
        k: torch.ones(v.shape, dtype=torch.bfloat16)
        if "norm" in k
        else (torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * 0.02).to(torch.bfloat16)
        for i, (k, v) in enumerate(shapes.items())
    }
    g = torch.Generator().manual_seed(1)
    projector = {
        "model.mm_projector.0.weight": torch.randn(4096, 1024, generator=g) * 0.02,
        "model.mm_projector.0.bias": torch.zeros(4096),
        "model.mm_projector.2.weight": torch.randn(4096, 4096, generator=g) * 0.02,
        "model.mm_projector.2.bias": torch.zeros(4096),
    }
    projector = {k: v.to(torch.bfloat16) for k, v in projector.items()}
    src = tmp_path / "llava-v1.5-7b"
    src.mkdir()
    save_sharded_bin(src, {**llama, **projector})
    (src / "config.json").write_text(json.dumps({
        "model_type": "llava", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 1,
        "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        "vocab_size": 32000, "mm_vision_tower": str(tmp_path / "clip336"), "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 1024, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "torch_dtype": "float16",
    }))  # fmt: skip
    _original_tokenizer(src)
    del llama
    main(["--from", "llava", "--in", str(src), "--out", str(tmp_path / "hf")])
    hf = tmp_path / "hf"
    config = json.loads((hf / "config.json").read_text())
    # llava-1.5-7b-hf's geometry: <image> right after LLaMA's ids, the vocabulary padded to 32064, 576 rows
    assert config["image_token_index"] == 32000 and config["text_config"]["vocab_size"] == 32064
    assert config["image_seq_length"] == 576 and config["vision_feature_layer"] == -2
    model = LlavaForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    reference = LlamaForCausalLM(text).eval()
    source = read_state_dict(src)  # the original files, read back as they are
    with torch.no_grad():  # one float copy at a time (peak memory)
        for name, param in reference.named_parameters():
            param.copy_(source[name])
    del source
    original = {k: v.float() for k, v in projector.items()}
    assert torch.equal(
        model.model.multi_modal_projector.linear_1.weight, original["model.mm_projector.0.weight"]
    )
    ids = [1, 319, 13, PLACEHOLDER, 29871, 3750]
    pixels = torch.randn(1, 3, 336, 336, generator=g)
    want = reference_logits(reference, tower.float(), lambda x: reference_projector(original, x), ids, pixels)
    got = converted_logits(model, ids, pixels, image_rows=576)
    torch.testing.assert_close(got[:, :32000], want, atol=1e-4, rtol=1e-3)
