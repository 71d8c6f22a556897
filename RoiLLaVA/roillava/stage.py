"""RoiLLaVA's two stages of a composed agent: the System-1 base answerer and the ROI proposer.

`BaseStage` is the llava-hf System-1 model: loading it (and a checkpoint's processor), its prompts and
greedy batched generation. `RoiStage` is the Chain-of-Spot ROI adapter attached by name to the shared
peft model (or a full checkpoint of its own): its recorded prompt settings, stage-1 prompts, box decoding
under the box grammar and parsing, and the padded-frame geometry every region lives in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import nn

from eval.llava_hf import add_named_adapter, attach_lora_adapter, is_adapter_dir, load_processor

from .answer import Prompt, build_prompt, generate, load_for_inference
from .boxes import crop_padded, paste_region_mask, region_pixel_box
from .model import add_lora, inference_dtype, load_base
from .roi import (
    FULL_IMAGE_BOX,
    RoiConfig,
    RoiParse,
    generate_roi_texts,
    parse_roi_box,
    split_instruction,
    stage1_prompt,
)
from .wording import recorded_template, resolve_roi_wording

__all__ = ["BaseStage", "RoiStage"]


class BaseStage:
    """The System-1 base: one llava-hf model every adapter attaches to, answering with adapters off."""

    inference_dtype = staticmethod(inference_dtype)
    split_instruction = staticmethod(split_instruction)

    @staticmethod
    def load(base: str | Path, *, dtype, bits: int, device) -> nn.Module:
        """The base straight to `device` (a 7B model never sits in host RAM first); 4/8-bit: the LM's
        linears only."""
        return load_base(base, dtype=dtype, bits=bits, device=device)

    @staticmethod
    def processor_for(directory: str | Path, fallback: str | Path):
        """A checkpoint's processor (padding on, as LLaVA-1.5 trains), or `fallback`'s if it saved none."""
        return load_processor(directory, fallback)

    @staticmethod
    def prompts(
        questions: Sequence[str], images: Sequence[Image.Image], *, processor, model_config, template
    ):
        """LLaVA-1.5 prompts, one image each."""
        return [
            build_prompt(q, [im], tokenizer=processor.tokenizer, model_config=model_config, template=template)
            for q, im in zip(questions, images)
        ]

    @staticmethod
    def generate(model: nn.Module, processor, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[str]:
        """Greedy batched answers."""
        return generate(model, processor, list(prompts), max_new_tokens=max_new_tokens)


@dataclass
class RoiStage:
    """The ROI proposer on `model` (the shared peft model with "roi" attached, or its own full model)."""

    model: nn.Module
    processor: object
    config: RoiConfig
    wording_source: str = ""

    ADAPTER = "roi"
    FULL_IMAGE_BOX = FULL_IMAGE_BOX

    # --- loading and attaching ----------------------------------------------------------------------
    @staticmethod
    def read_config(
        directory: str | Path, *, max_new_tokens: int, wording: str | None = None
    ) -> tuple[RoiConfig, str]:
        """The ROI prompt (wording, template) to ask the adapter with, and why that wording.

        The template is the one the adapter records (`roillava.wording.recorded_template`); the wording is
        `wording` when given, else the one the adapter records, else Chain-of-Spot's evaluation wording.
        """
        wording, why = resolve_roi_wording(directory, wording)
        template = recorded_template(directory)
        return RoiConfig(wording=wording, template=template, roi_max_new_tokens=max_new_tokens), why

    @staticmethod
    def is_standalone(directory: str | Path) -> bool:
        """A full model (converted Chain-of-Spot weights, a merged adapter), not a LoRA adapter."""
        return not is_adapter_dir(directory)

    @classmethod
    def attach_adapter(cls, model: nn.Module, directory: str | Path) -> nn.Module:
        """Add the ROI adapter in `directory` to `model` (plain or peft) under "roi"; the peft model."""
        return attach_lora_adapter(model, directory, cls.ADAPTER)[0]

    @staticmethod
    def load_standalone(directory: str | Path, *, dtype, bits: int, device) -> tuple[nn.Module, object]:
        """A full ROI model and its processor."""
        return load_for_inference(directory, dtype=dtype, bits=bits, device=device)

    # --- resident parameters on the meta device -----------------------------------------------------
    @staticmethod
    def lora_config(llava_config, *, r: int, alpha: int, shares_projector: bool):
        """The peft LoRA config RoiLLaVA's trainer makes with these settings."""
        from transformers import LlavaForConditionalGeneration

        roi = add_lora(
            LlavaForConditionalGeneration(copy.deepcopy(llava_config)), r=r, alpha=alpha, dropout=0.05,
            freeze_projector=shares_projector,
        )  # fmt: skip
        return roi.peft_config["default"]

    @classmethod
    def add_config(cls, model: nn.Module, lora_config) -> nn.Module:
        """As `attach_adapter`, from a LoRA config instead of saved weights (to count parameters)."""
        return add_named_adapter(model, lora_config, cls.ADAPTER)

    # --- proposing ----------------------------------------------------------------------------------
    def propose(
        self, questions: Sequence[str], images: Sequence[Image.Image]
    ) -> tuple[list[str], list[RoiParse], bool]:
        """Chain-of-Spot stage 1 for each (question, image): the box texts, their parses on the padded
        frame, and whether they were decoded under the box grammar (`RoiConfig.constrained_box`)."""
        kw = {"processor": self.processor, "model_config": self.model.config, "config": self.config}
        prompts = [stage1_prompt(q, im, **kw) for q, im in zip(questions, images)]
        texts, constrained = generate_roi_texts(self.model, self.processor, prompts, self.config)
        return texts, [parse_roi_box(t, self.config.min_side) for t in texts], constrained

    # --- the padded frame ---------------------------------------------------------------------------
    crop = staticmethod(crop_padded)
    paste_mask = staticmethod(paste_region_mask)
    pixel_box = staticmethod(region_pixel_box)
