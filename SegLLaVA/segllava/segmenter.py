"""The segmenter stage: masks for named objects in a batch of images, on a shared llava-hf model.

`Segmenter.attach(peft_model, adapter_dir)` adds the seg LoRA adapter to an already loaded peft llava-hf
model by name (next to other adapters), loads `text_hidden_fcs` and the trained SAM parts into one SAM;
`Segmenter.standalone(adapter_dir)` loads the checkpoint with its own language model and SAM ("attach,
then merge"). `segment(images, jobs)` answers a batch of (image index, object name) jobs: each image is
encoded once by SAM, however many objects are asked about it, and all prompts run as one batch.

Two ways to find the `[SEG]` state: "teacher" forces LISA's validation answer `"[SEG]."` (one forward
pass, always a mask) and "generate" decodes greedily and uses the first `[SEG]` (none: no mask), as
LISA's chat does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, SamModel

from eval.llava_hf import add_named_adapter, left_pad, load_processor

from .conversation import SEG_TOKEN, VAL_ANSWER
from .inference import clean_answer, clip_pixels, generated_seg_states, prompt_ids
from .model import SegConfig, SegLLaVA, build_seg_llava, build_text_hidden_fcs, ensure_seg_tokens
from .sam_checkpoint import load_sam

SEG_DECODINGS = ("teacher", "generate")
DEFAULT_SEG_PROMPT = "Can you segment the {name} in this image?"


@dataclass(frozen=True)
class SegmentOptions:
    """How a batch is segmented: the question asked per object (`{name}` filled in), the decoding
    (`SEG_DECODINGS`), the generation budget and the mask-logit threshold."""

    prompt: str = DEFAULT_SEG_PROMPT
    decoding: str = "teacher"
    max_new_tokens: int = 32
    mask_threshold: float = 0.0

    def __post_init__(self):
        if self.decoding not in SEG_DECODINGS:
            raise ValueError(f"seg decoding must be one of {SEG_DECODINGS}, got {self.decoding!r}")
        if "{name}" not in self.prompt:
            raise ValueError(f"seg prompt must contain {{name}}, got {self.prompt!r}")


class Segmenter:
    """A SegLLaVA that serves batched mask jobs; attached, it runs under the active seg adapter."""

    ADAPTER = "seg"
    SEG_TOKEN = SEG_TOKEN
    # Tokens the seg checkpoint's tokenizer must have for a shared base (checked against the base's ids).
    REQUIRED_TOKENS = (SEG_TOKEN,)

    def __init__(self, seg: SegLLaVA, options: SegmentOptions | None = None):
        self.seg = seg
        self.options = options or SegmentOptions()
        self.processor = seg.processor

    @classmethod
    def attach(
        cls,
        peft_model: nn.Module,
        adapter_dir: str,
        *,
        adapter_name: str = "seg",
        sam: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        options: SegmentOptions | None = None,
    ) -> Segmenter:
        """Add the adapter in `adapter_dir` to `peft_model` as `adapter_name`; SAM from `sam` (a
        directory) or the one the checkpoint names."""
        seg = SegLLaVA.from_pretrained(
            adapter_dir,
            llava=peft_model,
            sam=load_sam(sam) if sam else None,
            adapter_name=adapter_name,
            dtype=dtype,
            device=device,
        )
        return cls(seg, options)

    @classmethod
    def standalone(
        cls,
        adapter_dir: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        options: SegmentOptions | None = None,
    ) -> Segmenter:
        """A SegLLaVA checkpoint with its own language model (the adapter merged) and SAM."""
        return cls(SegLLaVA.from_pretrained(adapter_dir, dtype=dtype, device=device), options)

    @staticmethod
    def is_standalone(directory: str) -> bool:
        """A full SegLLaVA checkpoint (converted LISA weights, merged adapters), not a LoRA on the base."""
        return SegConfig.load(directory).weights == "full"

    @staticmethod
    def processor_for(directory: str, base: str):
        """The seg checkpoint's processor (the base's if it saved none)."""
        return load_processor(directory, base)

    # --- resident parameters on the meta device -----------------------------------------------------
    @staticmethod
    def lora_config(
        llava_config, sam_config, tokenizer, *, r: int, alpha: int, targets: str, train_embeddings: str
    ):
        """The peft LoRA config SegLLaVA's trainer makes with these settings, and the tokenizer with the
        seg tokens (built on throwaway models of these configs: a LoRA config names modules, not layers)."""
        import copy

        from .train import SegTrainArgs, set_trainable

        seg_tok = copy.deepcopy(tokenizer)
        llava = LlavaForConditionalGeneration(llava_config)
        new_ids = ensure_seg_tokens(seg_tok, llava, True)
        sam = SamModel(sam_config)
        seg = build_seg_llava(
            llava, sam, seg_tok, SegConfig(out_dim=sam_config.prompt_encoder_config.hidden_size)
        )
        args = SegTrainArgs(
            lora_r=r, lora_alpha=alpha, lora_dropout=0.05, lora_target_modules=targets,
            train_embeddings=train_embeddings,
        )  # fmt: skip
        set_trainable(seg, args, new_ids)
        return seg.llava.peft_config["default"], seg_tok

    @staticmethod
    def add_tokens(llava: nn.Module, seg_tokenizer) -> None:
        """The seg tokens on a base the seg adapter will share (refused if they need new embedding rows)."""
        import copy

        if len(seg_tokenizer) > llava.get_input_embeddings().num_embeddings:
            raise ValueError("the seg tokens do not fit the base's embedding rows; the agent cannot share it")
        ensure_seg_tokens(copy.deepcopy(seg_tokenizer), llava, True)

    @classmethod
    def add_config(cls, model: nn.Module, lora_config) -> nn.Module:
        """As `attach`, from a LoRA config instead of saved weights (to count parameters)."""
        return add_named_adapter(model, lora_config, cls.ADAPTER)

    @staticmethod
    def heads_for(llava_config, sam_config) -> list[nn.Module]:
        """The seg heads (`text_hidden_fcs`) a seg adapter brings for these model configs."""
        return [
            build_text_hidden_fcs(
                llava_config.text_config.hidden_size, sam_config.prompt_encoder_config.hidden_size
            )
        ]

    @property
    def seg_token_id(self) -> int:
        return self.seg.seg_token_id

    @property
    def sam(self) -> nn.Module:
        return self.seg.visual_model

    def heads(self) -> list[nn.Module]:
        """What seg adds besides LoRA and SAM (the `[SEG]` projection)."""
        return [self.seg.text_hidden_fcs]

    def to(self, device) -> Segmenter:
        if self.seg.core is self.seg.llava:  # a standalone model: move all of it
            self.seg.to(device)
        self.seg.visual_model.to(device)
        self.seg.text_hidden_fcs.to(device)
        return self

    @torch.inference_mode()
    def segment(
        self, images: Sequence, jobs: Sequence[tuple[int, str]], options: SegmentOptions | None = None
    ) -> list[tuple[np.ndarray | None, str]]:
        """For each (image index, object name): the boolean mask on that image (None: no `[SEG]`) and
        the answer. SAM encodes each image once, whatever the number of objects."""
        if not jobs:
            return []
        seg, tok, opt = self.seg, self.processor.tokenizer, options or self.options
        questions = [opt.prompt.format(name=name) for _, name in jobs]
        answer = VAL_ANSWER if opt.decoding == "teacher" else None
        ids, mask = left_pad([prompt_ids(seg, tok, q, answer) for q in questions], tok.pad_token_id)
        device = seg.core.device
        ids, mask = ids.to(device), mask.to(device)
        pixels = clip_pixels(seg, self.processor, [images[k] for k, _ in jobs])
        if opt.decoding == "teacher":
            embeds = seg.embed(ids, pixels, torch.arange(len(jobs), device=device))
            hidden = seg.language_forward(embeds, mask).hidden_states[-1]
            states, rows = seg.seg_hidden_states(hidden, ids)
            texts = [VAL_ANSWER] * len(jobs)
        else:
            states, where, new = generated_seg_states(seg, tok, ids, mask, pixels, opt.max_new_tokens)
            rows = where[:, 0]
            texts = [clean_answer(t, tok) for t in tok.batch_decode(new)]
        # The first [SEG] of each job is its mask.
        first: dict[int, int] = {}
        for n, row in enumerate(rows.tolist()):
            first.setdefault(row, n)
        picked = sorted(first)
        sam = seg.sam_image_embeddings(list(images))
        logits = seg.masks_from_seg_hidden(
            states[[first[r] for r in picked]], sam, [jobs[r][0] for r in picked]
        )
        masks: list[np.ndarray | None] = [None] * len(jobs)
        for r, m in zip(picked, logits):
            masks[r] = (m > opt.mask_threshold).cpu().numpy()
        return list(zip(masks, texts))


__all__ = ["SEG_DECODINGS", "SEG_TOKEN", "SegmentOptions", "Segmenter"]
