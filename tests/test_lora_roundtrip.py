"""LoRA + projector: save → load → merge gives the same logits as the model that was trained."""

import torch

from roillava.answer import load_for_inference
from roillava.model import add_lora, find_projector, freeze_for_stage


def test_lora_save_load_merge_equal_logits(tiny_base, llava, tmp_path):
    torch.manual_seed(0)
    freeze_for_stage(llava, projector_only=False)
    model = add_lora(llava, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)  # a "trained" adapter and projector
    assert any("modules_to_save" in n and p.requires_grad for n, p in model.named_parameters())
    model.eval().save_pretrained(tmp_path)

    ids = torch.tensor([[1, 5, 6, llava.config.image_token_id] + [llava.config.image_token_id] * 48 + [7, 8]])
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits
    merged, _ = load_for_inference(str(tmp_path), str(tiny_base))
    with torch.no_grad():
        got = merged(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert find_projector(merged) is merged.model.multi_modal_projector
