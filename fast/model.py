"""One model in memory: the System-1 base once, the switch, ROI and seg LoRA adapters on it by name.

Each sibling trains a peft LoRA adapter on the same llava-hf System-1 checkpoint; FaST loads that base
once and attaches every adapter with `add_adapter` + the adapter's own saved weights, then activates one
per stage (`use`). What each adapter trains besides LoRA comes along:

* an adapter trained with `--freeze_mm_mlp_adapter True` (the scripts' default) uses the base's
  `multi_modal_projector`, so one projector serves every stage; an adapter that trained its own (in its
  `modules_to_save`) brings one extra copy, next to the base's that System 1 uses;
* SEAL's object projector (`mm_projector_object`) is only ever used by the switch, so it is loaded as a
  plain module, not wrapped: one copy instead of peft's untrained original plus the switch's;
* the seg heads (`text_hidden_fcs`, SAM's mask decoder) and one SAM live next to the language model.

Token ids: every stage tokenises and decodes with its own checkpoint's tokenizer, so each adapter sees
exactly the ids it was trained with (`check_token_ids` refuses anything that could not be shared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from roillava.stage import BaseStage, RoiStage
from segllava.segmenter import Segmenter
from swillava.stage import SwitchStage

from .config import AgentConfig
from .vision_cache import VisionMemo

SWITCH, ROI, SEG = SwitchStage.ADAPTER, RoiStage.ADAPTER, Segmenter.ADAPTER
IMAGE_PLACEHOLDER = "<image>"


class TokenConflict(ValueError):
    """Two checkpoints disagree about token ids in a way one shared base cannot serve."""


def check_token_ids(
    base_tokenizer,
    adapter_tokenizers: dict[str, object],
    required: dict[str, tuple[str, ...]],
    *,
    embedding_rows: int,
    image_token_id: int,
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The ids each adapter was trained with, and notes on ids that adapters use for different tokens.

    Refused (TokenConflict): an adapter tokenizer that renumbers any base token (ordinary text would
    tokenise differently), one without its required special token, one whose `<image>` id differs from
    the base model's, and a token id beyond the base's embedding rows (that adapter resized the
    vocabulary, so its embeddings are not the shared ones).

    Allowed and noted: two adapters that each appended their own token at the same id (e.g. `<object>`
    for the switch and `[SEG]` for seg both at 32002 on llava-hf 7B). Each stage tokenises and decodes
    with its own tokenizer and no forward pass mixes stages; `<object>` is a placeholder whose embedding
    is always overwritten by object features, so its id only has to be a valid row.
    """
    base_vocab = base_tokenizer.get_vocab()
    ids: dict[str, dict[str, int]] = {}
    for name, tok in adapter_tokenizers.items():
        vocab = tok.get_vocab()
        renumbered = sorted(t for t, i in base_vocab.items() if vocab.get(t) != i)
        if renumbered:
            raise TokenConflict(
                f"the {name} checkpoint's tokenizer gives {len(renumbered)} base tokens other ids "
                f"(e.g. {renumbered[:3]}); it was not trained on this base's vocabulary"
            )
        if vocab.get(IMAGE_PLACEHOLDER) != image_token_id:
            raise TokenConflict(
                f"the {name} checkpoint's {IMAGE_PLACEHOLDER} id is {vocab.get(IMAGE_PLACEHOLDER)}, "
                f"the base model's is {image_token_id}"
            )
        if max(vocab.values()) >= embedding_rows:
            raise TokenConflict(
                f"the {name} checkpoint's tokenizer has {max(vocab.values()) + 1} ids, beyond the base's "
                f"{embedding_rows} embedding rows: it resized the vocabulary, so it cannot share this base"
            )
        ids[name] = {}
        for token in required.get(name, ()):
            if token not in vocab:
                raise TokenConflict(f"the {name} checkpoint's tokenizer has no {token} token")
            ids[name][token] = vocab[token]
    notes = []
    by_id: dict[int, list[str]] = {}
    for name, tokens in ids.items():
        for token, i in tokens.items():
            by_id.setdefault(i, []).append(f"{token} ({name})")
    for i, users in sorted(by_id.items()):
        if len(users) > 1:
            notes.append(f"id {i} is {' and '.join(users)}: each stage uses its own tokenizer")
    return ids, notes


def unique_parameter_count(*modules: nn.Module | None) -> int:
    """Elements of all distinct parameter storages (shared or tied tensors count once)."""
    seen: set[tuple[int, int, tuple]] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            # Meta tensors have no storage address: a shared one is the same Parameter object.
            key = (
                (id(p), 0, ())
                if p.is_meta
                else (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape))
            )
            if key not in seen:
                seen.add(key)
                total += p.numel()
    return total


@dataclass
class MemoryReport:
    """Resident parameters of the agent against "one LLaVA + SAM" (the base and SAM, each loaded once)."""

    agent_params: int
    llava_plus_sam_params: int
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.agent_params / max(1, self.llava_plus_sam_params)

    def as_dict(self) -> dict:
        return {
            "agent_params": self.agent_params,
            "llava_plus_sam_params": self.llava_plus_sam_params,
            "ratio": round(self.ratio, 4),
            "breakdown": self.breakdown,
        }

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:,}" for k, v in self.breakdown.items())
        return (
            f"resident parameters: agent {self.agent_params:,} vs one LLaVA + SAM "
            f"{self.llava_plus_sam_params:,} (x{self.ratio:.3f}); {parts}"
        )


# The ROI prompt the agent asks with (RoiLLaVA's recorded settings); here for the agent's callers.
read_roi_config = RoiStage.read_config


def is_standalone(stage: str, directory: str | Path) -> bool:
    """A stage checkpoint with its own full model (converted released weights, merged adapters), not a LoRA
    adapter on the base: it runs as a separate model, with its own vision tower and vocabulary."""
    return {SWITCH: SwitchStage, ROI: RoiStage, SEG: Segmenter}[stage].is_standalone(directory)


class FastModel:
    """The shared base with every adapter attached; `use(name)` picks the adapter a stage runs with."""

    def __init__(self, config: AgentConfig):
        self.config = config
        # Straight to the device (a 7B model never sits in host RAM first); 4/8-bit: the LM's linears only.
        llava = BaseStage.load(config.base, dtype=config.torch_dtype, bits=config.bits, device=config.device)
        base_count = unique_parameter_count(llava)
        self.base_processor = BaseStage.processor_for(config.base, config.base)
        self.core = llava
        core_config = llava.config
        # Read before peft wraps the embeddings (seg may train rows of its new tokens).
        self.embedding_rows = rows = llava.get_input_embeddings().num_embeddings

        # --- switch: LoRA + its projector copy; the object projector as one plain module. A stage given as a
        # full checkpoint (e.g. converted SEAL / Chain-of-Spot / LISA weights) runs as its own model instead.
        self.switch_config = SwitchStage.read_config(config.switch)
        self.standalone: dict[str, nn.Module] = {}
        standalone = {
            name
            for name, d in ((SWITCH, config.switch), (ROI, config.roi), (SEG, config.seg))
            if d and is_standalone(name, d)
        }
        processors, required = {}, {}
        if SWITCH in standalone:
            swi, switch_processor = SwitchStage.load_standalone(
                config.switch, dtype=config.torch_dtype, bits=config.bits, device=config.device
            )
            self.standalone[SWITCH] = swi
        else:
            switch_processor = SwitchStage.processor_for(config.switch, config.base)
            processors[SWITCH] = switch_processor
            required[SWITCH] = SwitchStage.REQUIRED_TOKENS
        if config.roi and ROI not in standalone:
            processors[ROI] = BaseStage.processor_for(config.roi, config.base)
        self.seg_stage = None
        if config.seg and SEG not in standalone:
            processors[SEG] = Segmenter.processor_for(config.seg, config.base)
            required[SEG] = Segmenter.REQUIRED_TOKENS
        self.token_ids, self.token_notes = check_token_ids(
            self.base_processor.tokenizer,
            {k: p.tokenizer for k, p in processors.items()},
            required,
            embedding_rows=rows,
            image_token_id=core_config.image_token_id,
        )
        peft_model = llava
        if SWITCH not in standalone:
            peft_model = SwitchStage.attach_adapter(llava, config.switch, self.switch_config)

        self.roi: RoiStage | None = None
        if config.roi:
            roi_config, wording_source = RoiStage.read_config(
                config.roi, max_new_tokens=config.roi_max_new_tokens, wording=config.roi_wording
            )
            if ROI in standalone:
                roi_model, roi_processor = RoiStage.load_standalone(
                    config.roi, dtype=config.torch_dtype, bits=config.bits, device=config.device
                )
                self.standalone[ROI] = roi_model
            else:
                peft_model = RoiStage.attach_adapter(peft_model, config.roi)
                roi_processor = processors[ROI]
            self.roi = RoiStage(None, roi_processor, roi_config, wording_source)
        self.sam = None
        if config.seg:
            from .seg import SegStage

            if SEG in standalone:
                self.seg_stage = SegStage.standalone(config)
                self.standalone[SEG] = self.seg_stage.seg
            else:
                self.seg_stage = SegStage.attach(peft_model, config, self.token_ids[SEG][Segmenter.SEG_TOKEN])
            self.sam = self.seg_stage.sam

        self.peft = peft_model.eval()
        self.peft.requires_grad_(False)
        for name, module in self.standalone.items():
            if name != SEG:  # the seg stage moves itself
                module.to(config.device).eval().requires_grad_(False)
        if self.roi is not None:  # the model the ROI stage generates with: the shared one or its own
            self.roi.model = self.standalone.get(ROI, self.peft)
        self.switch = SwitchStage.on(
            self.standalone.get(SWITCH, self.peft),
            self.switch_config,
            switch_processor,
            object_token_id=None
            if SWITCH in standalone
            else self.token_ids[SWITCH][SwitchStage.REQUIRED_TOKENS[0]],
            max_new_tokens=config.switch_max_new_tokens,
            copy_names=config.copy_names,
        )
        if self.seg_stage is not None:
            self.seg_stage.to(config.device)
            self.seg_stage.seg.requires_grad_(False)

        layers = core_config.vision_feature_layer
        self.vision = VisionMemo(
            llava.model.vision_tower, list(layers) if isinstance(layers, (list, tuple)) else [layers]
        )
        self.memory = self._memory_report(base_count)

    # --- adapters -----------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(getattr(self.peft, "peft_config", {}))

    @property
    def roi_model(self) -> nn.Module:
        """The model the ROI stage generates with: the shared one (under "roi") or its own full model."""
        return self.standalone.get(ROI, self.peft)

    @property
    def roi_config(self):
        return self.roi.config

    @property
    def roi_processor(self):
        return self.roi.processor

    @property
    def roi_wording_source(self) -> str:
        return self.roi.wording_source

    def use(self, name: str) -> None:
        """Activate one adapter (its LoRA and its projector copy) for the next stage."""
        if name in self.standalone:
            return  # that stage runs on its own model
        if name not in self.adapters:
            raise ValueError(f"no {name!r} adapter loaded; loaded: {self.adapters}")
        self.peft.set_adapter(name, inference_mode=True)

    @contextlib.contextmanager
    def base_only(self) -> Iterator[nn.Module]:
        """The System-1 base: every adapter off, the base's own projector."""
        if not self.adapters:  # every stage is standalone: the base carries no adapter
            yield self.peft
            return
        with self.peft.disable_adapter():
            yield self.peft

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    # --- memory -------------------------------------------------------------------------------------
    def _memory_report(self, base_count: int) -> MemoryReport:
        extra = self.seg_stage.heads() if self.seg_stage is not None else []
        return memory_report(self.peft, self.core, self.sam, extra, base_count, standalone=self.standalone)


def memory_report(
    peft: nn.Module,
    core: nn.Module,
    sam: nn.Module | None,
    extra: list[nn.Module],
    base_count: int,
    standalone: dict[str, nn.Module] | None = None,
) -> MemoryReport:
    """Resident parameters of the composed agent (shared storages once) against the base + SAM.

    `standalone`: stages that run as their own full model (converted released weights). Works on
    meta-device models too (storages then have no address: every parameter object counts once).
    """
    standalone = standalone or {}
    sam_count = unique_parameter_count(sam)
    agent = unique_parameter_count(peft, sam, *extra, *standalone.values())
    breakdown = {"base": base_count, "sam": sam_count}
    named = list(peft.named_parameters())
    for name in getattr(peft, "peft_config", {}):
        mine = [(n, p) for n, p in named if name in n.split(".")]
        lora = sum(p.numel() for n, p in mine if "lora_" in n)
        copies = sum(p.numel() for n, p in mine if "modules_to_save" in n)
        breakdown[f"{name}_lora"] = lora
        breakdown[f"{name}_module_copies"] = copies
        other = sum(p.numel() for _, p in mine) - lora - copies
        if other:
            breakdown[f"{name}_other"] = other  # e.g. seg's trained rows of its new tokens
    for name, module in standalone.items():
        breakdown[f"{name}_standalone"] = unique_parameter_count(module)
    breakdown["object_projector"] = unique_parameter_count(SwitchStage.object_projector_of(core))
    if extra:
        breakdown["seg_heads"] = unique_parameter_count(*extra)
    return MemoryReport(agent, base_count + sam_count, breakdown)
