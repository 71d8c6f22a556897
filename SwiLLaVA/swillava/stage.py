"""The switch as one stage of a composed agent: everything a caller does with SwiLLaVA goes through here.

`SwitchStage` is a `SwitchAdapter` that can attach itself by adapter name to a shared peft llava-hf model
(LoRA + its projector copy; SEAL's object projector as one plain module), and carries the switch's
protocol: the decide pass (decision, object names, direct answers and their confidence, option losses),
the reply kinds, SEAL's evidence (checked names and boxes, 1.2x patches, the evidence prompt) and
likelihood option scoring, also on a plain llava (the System-1 baseline, adapters off).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from eval.llava_hf import add_named_adapter, attach_lora_adapter, load_processor
from eval.vstar_bench import vstar_pixel_values

from .conversation import OBJECT_PLACEHOLDER
from .infer import Prompt, SwitchAdapter, parse_missing_objects, switch_reply_kind
from .likelihood import llava_option_losses_batch
from .model import OBJECT_PROJECTOR, SwiConfig, SwiLLaVA, add_lora, attach_object_projector, build_switch
from .model import load_switch as _load_switch
from .objects import (
    MISSING_OBJECTS_PREFIX,
    ObjectInstance,
    check_box,
    check_name,
    evidence_question,
    expand_objects,
    patch_bounds,
)
from .switch_pass import PassResult, option_confidence, switch_pass

__all__ = ["SwitchStage"]


class SwitchStage(SwitchAdapter):
    """The switch stage: a `SwitchAdapter` plus the attach path and the protocol the agent follows."""

    ADAPTER = "switch"
    MISSING_OBJECTS_PREFIX = MISSING_OBJECTS_PREFIX
    # Tokens the switch's tokenizer must have for a shared base (checked against the base's ids).
    REQUIRED_TOKENS = (OBJECT_PLACEHOLDER,)

    # --- loading and attaching ----------------------------------------------------------------------
    @staticmethod
    def read_config(directory: str | Path) -> SwiConfig:
        return SwiConfig.load(directory)

    @staticmethod
    def is_standalone(directory: str | Path) -> bool:
        """A full switch checkpoint (converted SEAL weights, merged adapters), not a LoRA on the base."""
        return SwiConfig.load(directory).weights == "full"

    @staticmethod
    def load_standalone(directory: str | Path, *, dtype, bits: int, device) -> tuple[SwiLLaVA, object]:
        """The full switch model and its processor."""
        return _load_switch(directory, dtype=dtype, bits=bits, device=device)

    @staticmethod
    def processor_for(directory: str | Path, base: str | Path):
        """The switch checkpoint's processor (the base's if it saved none)."""
        return load_processor(directory, base)

    @classmethod
    def attach_adapter(cls, llava: nn.Module, directory: str | Path, config: SwiConfig) -> nn.Module:
        """Add the switch adapter in `directory` to `llava` (plain or peft) under "switch", with SEAL's
        object projector as one plain module on the llava-hf model; returns the peft model."""
        object_projector = attach_object_projector(llava, config.object_projector)
        peft_model, plain = attach_lora_adapter(
            llava, directory, cls.ADAPTER, plain_modules=(OBJECT_PROJECTOR,)
        )
        prefix = f"model.{OBJECT_PROJECTOR}."
        object_state = {k.removeprefix(prefix): v for k, v in plain.items() if k.startswith(prefix)}
        if not object_state:
            raise ValueError(f"{directory}: the switch adapter holds no {OBJECT_PROJECTOR} weights")
        object_projector.load_state_dict(object_state, strict=True)
        return peft_model

    @classmethod
    def on(
        cls,
        model: nn.Module,
        config: SwiConfig,
        processor,
        *,
        object_token_id: int | None,
        max_new_tokens: int,
        copy_names: bool = True,
    ) -> SwitchStage:
        """The stage on a peft model the adapter is attached to (`object_token_id` given) or on a full
        switch model (a `SwiLLaVA`, `object_token_id` None)."""
        swi = model if object_token_id is None else SwiLLaVA(model, config, object_token_id)
        return cls(swi, processor, max_new_tokens=max_new_tokens, copy_names=copy_names)

    # --- resident parameters on the meta device -----------------------------------------------------
    @staticmethod
    def lora_config(llava_config, tokenizer, *, r: int, alpha: int, shares_projector: bool):
        """The peft LoRA config SwiLLaVA's trainer makes with these settings (built on a throwaway model
        of `llava_config`: a LoRA config names modules, not layers)."""
        from transformers import LlavaForConditionalGeneration

        swi = build_switch(LlavaForConditionalGeneration(llava_config), copy.deepcopy(tokenizer), SwiConfig())
        add_lora(swi, r=r, alpha=alpha, dropout=0.05, freeze_mlp_projector=shares_projector)
        return swi.llava.peft_config["default"]

    @classmethod
    def add_config(cls, llava: nn.Module, lora_config) -> nn.Module:
        """As `attach_adapter`, from a LoRA config instead of saved weights (to count parameters)."""
        attach_object_projector(llava, SwiConfig().object_projector)
        return add_named_adapter(llava, lora_config, cls.ADAPTER, plain_modules=(OBJECT_PROJECTOR,))

    @staticmethod
    def object_projector_of(llava: nn.Module) -> nn.Module | None:
        """SEAL's object projector on a llava-hf model (None: not attached)."""
        return getattr(llava.model, OBJECT_PROJECTOR, None)

    # --- deciding -----------------------------------------------------------------------------------
    def decide_prompts(
        self,
        prompts: Sequence[Prompt],
        *,
        force: bool,
        max_new_tokens: int,
        direct_rows: Sequence[int] = (),
        options: dict[int, list[str]] | None = None,
    ) -> PassResult:
        """`switch_pass` on SEAL's missing-objects sentence: the decision, the named objects and the
        direct answers of a batch of prompts (`decide` is SEAL's generate-and-parse probe)."""
        return switch_pass(
            self, prompts, self.sentence_ids(), force=force, max_new_tokens=max_new_tokens,
            direct_rows=direct_rows, options=options,
        )  # fmt: skip

    @staticmethod
    def missing_sentence(continuation: str) -> str:
        """The switch's whole missing-objects reply from the pass's continuation of the sentence."""
        return f"{MISSING_OBJECTS_PREFIX} {continuation}"

    missing_objects = staticmethod(parse_missing_objects)
    reply_kind = staticmethod(switch_reply_kind)
    option_confidence = staticmethod(option_confidence)
    check_name = staticmethod(check_name)

    # --- images and evidence ------------------------------------------------------------------------
    @staticmethod
    def view_pixels(image_processor, images: Sequence[Image.Image], view: str) -> torch.Tensor:
        """Pixel values of `images` in an image view (`eval.vstar_bench`: padded, unpadded...)."""
        return vstar_pixel_values(image_processor, images, view)

    @staticmethod
    def object_box(box, width: int, height: int, patch_scale: float) -> tuple[list[float], list]:
        """An object's box checked to lie inside the image, and its 1.2x (`patch_scale`) patch bounds."""
        box = check_box(list(box), width, height)
        return [float(v) for v in box], list(patch_bounds(box, width, height, patch_scale))

    @staticmethod
    def evidence_prompt_text(question: str, objects: Sequence[tuple[str, Sequence[float]]], width, height):
        """SEAL's evidence prompt as text (image and object placeholders expanded) for the trace."""
        instances = [ObjectInstance(name, tuple(box)) for name, box in objects]
        text = "<image>\n" + evidence_question(question, len(instances))
        return expand_objects([(text, None)], instances, width, height)[0][0]

    # --- likelihood scoring on a plain llava --------------------------------------------------------
    llava_option_losses = staticmethod(llava_option_losses_batch)
