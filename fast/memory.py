"""The agent's resident parameters at the true LLaVA-1.5-7B + SAM-H sizes, counted on the meta device.

The agent is composed exactly as `FastModel` composes it (one llava-hf base, the switch's LoRA with SEAL's
object projector as one plain module, the ROI LoRA, the seg LoRA with its trained token rows, the seg heads
and one SAM), from the LoRA configs each sibling's own builder makes with its training script's defaults.
No weights exist: every tensor is on the meta device, so the count costs no memory and needs no download.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration, SamModel

from roillava.stage import RoiStage
from segllava.segmenter import Segmenter
from swillava.stage import SwitchStage

from .model import MemoryReport, memory_report, unique_parameter_count


@dataclass(frozen=True)
class AgentRecipe:
    """What each sibling's training script trains by default, i.e. what the agent's adapters hold.

    `*_shares_projector`: the adapter uses the base's MLP projector (RoiLLaVA `finetune_lora.sh`'s
    `--freeze_mm_mlp_adapter True`, SwiLLaVA's `--freeze_mm_mlp_adapter True`) instead of saving a trained
    copy. `seg_train_embeddings`: "new_tokens" trains only the rows of `[SEG]` (peft trainable tokens),
    "full" LISA's whole `embed_tokens` and `lm_head` copies.
    """

    lora_r: int = 128
    lora_alpha: int = 256
    switch_shares_projector: bool = True
    roi_shares_projector: bool = True
    seg_lora_r: int = 8
    seg_lora_alpha: int = 16
    seg_lora_targets: str = "q_proj,v_proj"
    seg_train_embeddings: str = "new_tokens"


SCRIPT_DEFAULTS = AgentRecipe()
# What the scripts trained before the projector was shared and seg trained only its new rows.
PROJECTOR_COPIES_AND_FULL_EMBEDDINGS = AgentRecipe(
    switch_shares_projector=False, roi_shares_projector=False, seg_train_embeddings="full"
)


def _lora_configs(llava_config, sam_config, tokenizer, recipe: AgentRecipe) -> dict:
    """The peft LoRA config each sibling's stage makes with its trainer's settings (built on throwaway
    one-layer meta models: a LoRA config names modules, not layers)."""
    llava_config = copy.deepcopy(llava_config)
    llava_config.text_config.num_hidden_layers = 1
    llava_config.vision_config.num_hidden_layers = 1
    sam_config = copy.deepcopy(sam_config)
    sam_config.vision_config.num_hidden_layers = 1
    sam_config.vision_config.global_attn_indexes = [0]
    configs = {}
    configs["switch"] = SwitchStage.lora_config(
        llava_config, tokenizer, r=recipe.lora_r, alpha=recipe.lora_alpha,
        shares_projector=recipe.switch_shares_projector,
    )  # fmt: skip
    configs["roi"] = RoiStage.lora_config(
        llava_config, r=recipe.lora_r, alpha=recipe.lora_alpha, shares_projector=recipe.roi_shares_projector
    )
    configs["seg"], configs["seg_tokenizer"] = Segmenter.lora_config(
        llava_config, sam_config, tokenizer, r=recipe.seg_lora_r, alpha=recipe.seg_lora_alpha,
        targets=recipe.seg_lora_targets, train_embeddings=recipe.seg_train_embeddings,
    )  # fmt: skip
    return configs


def agent_memory_on_meta(
    llava_config, sam_config, tokenizer, recipe: AgentRecipe = SCRIPT_DEFAULTS
) -> MemoryReport:
    """Resident parameters of the composed agent for these model configs, counted on the meta device."""
    with torch.device("meta"):
        configs = _lora_configs(llava_config, sam_config, tokenizer, recipe)
        llava = LlavaForConditionalGeneration(llava_config)
        base_count = unique_parameter_count(llava)
        Segmenter.add_tokens(llava, configs["seg_tokenizer"])
        sam = SamModel(sam_config)
        # As FastModel: the object projector as one plain module, then the adapters by name.
        peft = SwitchStage.add_config(llava, configs["switch"])
        peft = RoiStage.add_config(peft, configs["roi"])
        peft = Segmenter.add_config(peft, configs["seg"])
        heads = Segmenter.heads_for(llava_config, sam_config)
        return memory_report(peft, llava, sam, heads, base_count)


def real_size_configs():
    """llava-1.5-7b-hf's `LlavaConfig` (32 text and 24 CLIP layers), SAM ViT-H's `SamConfig`, and a tokenizer
    with llava-hf's ids, all built offline."""
    from playground.real_shapes import RealShapeConfig, llava_config, real_tokenizer, sam_config

    llava = llava_config(RealShapeConfig(text_layers=32, vision_layers=24))
    sam = sam_config(RealShapeConfig(sam_layers=32))
    sam.vision_config.global_attn_indexes = [7, 15, 23, 31]  # ViT-H's global-attention blocks
    return llava, sam, real_tokenizer()
