"""Untrained switch / ROI / seg adapters on a llava-hf base, saved by each sibling's own code.

They have the real adapters' layout and sizes for the base they sit on (switch and ROI: LoRA r128 on every
language-model linear, sharing the base's projector; SEAL's perceiver; seg: LoRA r8 on q,v, the rows of its
new tokens, `text_hidden_fcs` and SAM's mask decoder), so every stage of `fast` can run at real widths
without trained weights. Used by the real-shape inference tests and the GPU check.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_untrained_adapters(
    base: Path, out: Path, *, dtype: torch.dtype = torch.bfloat16, lora_r: int = 128, perceiver=None
) -> dict[str, Path]:
    """Write `out/{switch,roi,seg}` for the llava-hf directory `base` (with SAM in `base/sam`)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from roillava.model import add_lora as roi_add_lora
    from segllava.model import SegConfig, build_seg_llava, ensure_seg_tokens
    from segllava.sam_checkpoint import load_sam
    from segllava.train import SegTrainArgs, set_trainable
    from swillava.model import SwiConfig, build_switch
    from swillava.model import add_lora as switch_add_lora

    paths = {"base": base, "switch": out / "switch", "roi": out / "roi", "seg": out / "seg"}
    if (paths["seg"] / "segllava_config.json").is_file():
        return paths

    def llava():
        return LlavaForConditionalGeneration.from_pretrained(base, dtype=dtype)

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(base)
    switch_config = SwiConfig(base_model=str(base))
    if perceiver is not None:
        switch_config = SwiConfig(base_model=str(base), object_projector=perceiver)
    swi = build_switch(llava(), processor.tokenizer, switch_config)
    switch_add_lora(swi, r=lora_r, alpha=2 * lora_r, dropout=0.0, freeze_mlp_projector=True)
    swi.eval().save_pretrained(paths["switch"])
    processor.save_pretrained(paths["switch"])
    del swi

    processor = AutoProcessor.from_pretrained(base)
    roi = roi_add_lora(llava(), r=lora_r, alpha=2 * lora_r, dropout=0.0, freeze_projector=True)
    roi.save_pretrained(paths["roi"])
    processor.save_pretrained(paths["roi"])
    del roi

    processor = AutoProcessor.from_pretrained(base)
    model = llava()
    new_ids = ensure_seg_tokens(processor.tokenizer, model, True)
    sam = load_sam(str(base / "sam")).to(dtype)
    config = SegConfig(
        base_model=str(base),
        vision_pretrained=str(base / "sam"),
        out_dim=sam.config.prompt_encoder_config.hidden_size,
    )
    seg = build_seg_llava(model, sam, processor.tokenizer, config).to(dtype)
    args = SegTrainArgs(lora_r=8, lora_alpha=16, lora_dropout=0.0, train_embeddings="new_tokens")
    set_trainable(seg, args, new_ids)
    seg.eval().save_pretrained(paths["seg"])
    processor.save_pretrained(paths["seg"])
    return paths
