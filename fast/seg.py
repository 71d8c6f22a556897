"""The seg stage: SegLLaVA's adapter, heads and SAM on the shared base; masks for named objects.

`SegLLaVA.from_pretrained(dir, llava=<the agent's peft model>, sam=<one SAM>)` adds the seg LoRA adapter
by name, loads `text_hidden_fcs` and the trained SAM parts (into the one SAM, in place). Per question the
region is encoded once by SAM (and once by CLIP, through the agent's vision memo), and every object of
that question is decoded from it.

Two ways to find the `[SEG]` state: "teacher" forces LISA's validation answer `"[SEG]."` (one forward
pass, always a mask; the agent always wants one) and "generate" decodes greedily and uses the first
`[SEG]` (none: no mask, a recorded fallback), as LISA's chat does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from segllava.conversation import SEG_TOKEN, VAL_ANSWER
from segllava.inference import clean_answer, clip_pixels, generated_seg_states, left_pad, prompt_ids
from segllava.model import SegLLaVA
from segllava.sam_checkpoint import load_sam

from .config import AgentConfig

SEG_DECODING = ("teacher", "generate")
__all__ = ["SEG_TOKEN", "SegStage"]


class SegStage:
    """A SegLLaVA that shares the agent's language model; `segment` runs under the active "seg" adapter."""

    def __init__(self, seg: SegLLaVA, config: AgentConfig):
        self.seg = seg
        self.config = config
        self.processor = seg.processor

    @classmethod
    def attach(cls, peft_model: nn.Module, config: AgentConfig, seg_token_id: int) -> SegStage:
        """Add the seg adapter (named "seg") to `peft_model`; SAM from `config.sam` or the checkpoint's."""
        sam = load_sam(config.sam) if config.sam else None
        seg = SegLLaVA.from_pretrained(
            config.seg,
            llava=peft_model,
            sam=sam,
            adapter_name="seg",
            dtype=config.torch_dtype,
            device=config.device,
        )
        if seg.seg_token_id != seg_token_id:
            raise ValueError(
                f"{config.seg}: {SEG_TOKEN} is id {seg.seg_token_id} in SegLLaVA, {seg_token_id} in the checks"
            )
        return cls(seg, config)

    @classmethod
    def standalone(cls, config: AgentConfig) -> SegStage:
        """A full SegLLaVA checkpoint (e.g. converted LISA weights) with its own language model and SAM."""
        seg = SegLLaVA.from_pretrained(config.seg, dtype=config.torch_dtype, device=config.device)
        return cls(seg, config)

    @property
    def sam(self) -> nn.Module:
        return self.seg.visual_model

    def heads(self) -> list[nn.Module]:
        """What seg adds besides LoRA and SAM (counted in the memory report)."""
        return [self.seg.text_hidden_fcs]

    def to(self, device) -> SegStage:
        if self.seg.core is self.seg.llava:  # a standalone model: move all of it
            self.seg.to(device)
        self.seg.visual_model.to(device)
        self.seg.text_hidden_fcs.to(device)
        return self

    @torch.inference_mode()
    def segment(
        self, region_images: Sequence, jobs: Sequence[tuple[int, str]], config: AgentConfig | None = None
    ) -> list[tuple[np.ndarray | None, str]]:
        """For each (region index, object name): the boolean mask on that region image (None: no `[SEG]`)
        and the seg adapter's answer. SAM encodes each region once, whatever the number of objects.

        `config` (default: the one the stage was loaded with) gives the prompt, decoding and threshold.
        """
        if not jobs:
            return []
        seg, tok, cfg = self.seg, self.processor.tokenizer, config or self.config
        questions = [cfg.seg_prompt.format(name=name) for _, name in jobs]
        answer = VAL_ANSWER if cfg.seg_decoding == "teacher" else None
        ids, mask = left_pad([prompt_ids(seg, tok, q, answer) for q in questions], tok.pad_token_id)
        device = seg.core.device
        ids, mask = ids.to(device), mask.to(device)
        pixels = clip_pixels(seg, self.processor, [region_images[k] for k, _ in jobs])
        if cfg.seg_decoding == "teacher":
            embeds = seg.embed(ids, pixels, torch.arange(len(jobs), device=device))
            hidden = seg.language_forward(embeds, mask).hidden_states[-1]
            states, rows = seg.seg_hidden_states(hidden, ids)
            texts = [VAL_ANSWER] * len(jobs)
        else:
            states, where, new = generated_seg_states(seg, tok, ids, mask, pixels, cfg.seg_max_new_tokens)
            rows = where[:, 0]
            texts = [clean_answer(t, tok) for t in tok.batch_decode(new)]
        # The first [SEG] of each job is its mask.
        first: dict[int, int] = {}
        for n, row in enumerate(rows.tolist()):
            first.setdefault(row, n)
        picked = sorted(first)
        sam = seg.sam_image_embeddings(list(region_images))
        logits = seg.masks_from_seg_hidden(
            states[[first[r] for r in picked]], sam, [jobs[r][0] for r in picked]
        )
        masks: list[np.ndarray | None] = [None] * len(jobs)
        for r, m in zip(picked, logits):
            masks[r] = (m > cfg.mask_threshold).cpu().numpy()
        return list(zip(masks, texts))
