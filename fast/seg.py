"""The agent's seg stage: SegLLaVA's `Segmenter` attached by name to the shared base, set by AgentConfig.

Per question the region is encoded once by SAM (and once by CLIP, through the agent's vision memo), and
every object of that question is decoded from it (`segllava.segmenter`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from segllava.segmenter import Segmenter, SegmentOptions

from .config import AgentConfig

__all__ = ["SEG_TOKEN", "SegStage"]

SEG_TOKEN = Segmenter.SEG_TOKEN


def segment_options(config: AgentConfig) -> SegmentOptions:
    return SegmentOptions(
        prompt=config.seg_prompt,
        decoding=config.seg_decoding,
        max_new_tokens=config.seg_max_new_tokens,
        mask_threshold=config.mask_threshold,
    )


class SegStage(Segmenter):
    """A `Segmenter` whose options come from the agent's config (per call, when one is given)."""

    @classmethod
    def attach(cls, peft_model: nn.Module, config: AgentConfig, seg_token_id: int) -> SegStage:
        """Add the seg adapter (named "seg") to `peft_model`; SAM from `config.sam` or the checkpoint's."""
        stage = super().attach(
            peft_model,
            config.seg,
            adapter_name="seg",
            sam=config.sam,
            dtype=config.torch_dtype,
            device=config.device,
            options=segment_options(config),
        )
        if stage.seg_token_id != seg_token_id:
            raise ValueError(
                f"{config.seg}: {SEG_TOKEN} is id {stage.seg_token_id} in SegLLaVA, {seg_token_id} in the checks"
            )
        return stage

    @classmethod
    def standalone(cls, config: AgentConfig) -> SegStage:
        """A full SegLLaVA checkpoint (e.g. converted LISA weights) with its own language model and SAM."""
        return super().standalone(
            config.seg, dtype=config.torch_dtype, device=config.device, options=segment_options(config)
        )

    def segment(
        self, region_images: Sequence, jobs: Sequence[tuple[int, str]], config: AgentConfig | None = None
    ) -> list[tuple[np.ndarray | None, str]]:
        """For each (region index, object name): the mask on that region image (None: no `[SEG]`) and
        the seg adapter's answer; `config` (default: the stage's) gives prompt, decoding and threshold."""
        return super().segment(region_images, jobs, segment_options(config) if config else None)
