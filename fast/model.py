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
from safetensors.torch import load_file
from torch import nn

from roillava.model import llava_processor, load_base
from roillava.roi import RoiConfig
from roillava.wording import recorded_template, resolve_roi_wording
from swillava.conversation import OBJECT_PLACEHOLDER
from swillava.infer import SwitchAdapter
from swillava.model import OBJECT_PROJECTOR, SwiConfig, SwiLLaVA, attach_object_projector, load_switch

from .config import AgentConfig
from .vision_cache import VisionMemo

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SWITCH, ROI, SEG = "switch", "roi", "seg"
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


def load_processor(directory: str | Path, fallback: str | Path):
    """A checkpoint's processor (padding on, as LLaVA-1.5 trains), or the base's if it saved none."""
    d = Path(directory)
    has = (d / "processor_config.json").is_file() or (d / "tokenizer_config.json").is_file()
    return llava_processor(d if has else fallback, "pad")


def attach_lora_adapter(
    model: nn.Module, directory: str | Path, name: str, *, plain_modules: tuple[str, ...] = ()
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Add the peft adapter saved in `directory` to `model` under `name`; returns the peft model.

    Weights of `plain_modules` (listed in the adapter's `modules_to_save`) are not wrapped by peft; they
    are returned (keys relative to the llava-hf model) for the caller to load into the one plain module.
    Every adapter weight must land: unexpected or missing adapter keys are errors.
    """
    from peft import LoraConfig, set_peft_model_state_dict

    d = Path(directory)
    for f in (ADAPTER_CONFIG_FILE, ADAPTER_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"not a peft adapter directory: {d / f} is missing")
    config = LoraConfig.from_pretrained(str(d))
    state = load_file(str(d / ADAPTER_FILE))
    plain: dict[str, torch.Tensor] = {}
    for key in list(state):
        inner = key.removeprefix("base_model.model.")
        if any(inner.startswith(f"model.{m}.") or inner.startswith(f"{m}.") for m in plain_modules):
            plain[inner] = state.pop(key)
    model = add_named_adapter(model, config, name, plain_modules=plain_modules)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    if result.unexpected_keys:
        raise ValueError(f"{d}: adapter weights that fit no module: {result.unexpected_keys[:5]}")
    missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
    if missing:
        raise ValueError(f"{d}: adapter {name!r} lacks weights for {missing[:5]}")
    return model, plain


def add_named_adapter(
    model: nn.Module, config, name: str, *, plain_modules: tuple[str, ...] = ()
) -> nn.Module:
    """Add a LoRA config to `model` (plain or peft) under `name`, for inference; returns the peft model.

    `plain_modules` are dropped from `modules_to_save`: the caller keeps one plain copy of them.
    """
    from peft import PeftModel

    config.inference_mode = True
    saved = list(config.modules_to_save or [])
    config.modules_to_save = [m for m in saved if m not in plain_modules] or None
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        return model
    return PeftModel(model, config, adapter_name=name)


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


def read_roi_config(
    directory: str | Path, *, max_new_tokens: int, wording: str | None = None
) -> tuple[RoiConfig, str]:
    """The ROI prompt (wording, template) to ask the adapter with, and why that wording.

    The template is the one the adapter records (`roillava.wording.recorded_template`); the wording is
    `wording` when given, else the one the adapter records, else Chain-of-Spot's evaluation wording.
    """
    wording, why = resolve_roi_wording(directory, wording)
    template = recorded_template(directory)
    return RoiConfig(wording=wording, template=template, roi_max_new_tokens=max_new_tokens), why


def is_standalone(stage: str, directory: str | Path) -> bool:
    """A stage checkpoint with its own full model (converted released weights, merged adapters), not a LoRA
    adapter on the base: it runs as a separate model, with its own vision tower and vocabulary."""
    d = Path(directory)
    if stage == SWITCH:
        return SwiConfig.load(d).weights == "full"
    if stage == SEG:
        from segllava.model import SegConfig

        return SegConfig.load(d).weights == "full"
    return not (d / ADAPTER_CONFIG_FILE).is_file()


class FastModel:
    """The shared base with every adapter attached; `use(name)` picks the adapter a stage runs with."""

    def __init__(self, config: AgentConfig):
        self.config = config
        # Straight to the device (a 7B model never sits in host RAM first); 4/8-bit: the LM's linears only.
        llava = load_base(config.base, dtype=config.torch_dtype, bits=config.bits, device=config.device)
        base_count = unique_parameter_count(llava)
        self.base_processor = load_processor(config.base, config.base)
        self.core = llava
        core_config = llava.config
        # Read before peft wraps the embeddings (seg may train rows of its new tokens).
        self.embedding_rows = rows = llava.get_input_embeddings().num_embeddings

        # --- switch: LoRA + its projector copy; the object projector as one plain module. A stage given as a
        # full checkpoint (e.g. converted SEAL / Chain-of-Spot / LISA weights) runs as its own model instead.
        self.switch_config = SwiConfig.load(config.switch)
        self.standalone: dict[str, nn.Module] = {}
        standalone = {
            name
            for name, d in ((SWITCH, config.switch), (ROI, config.roi), (SEG, config.seg))
            if d and is_standalone(name, d)
        }
        processors, required = {}, {}
        if SWITCH in standalone:
            swi, switch_processor = load_switch(
                config.switch, dtype=config.torch_dtype, bits=config.bits, device=config.device
            )
            self.standalone[SWITCH] = swi
        else:
            switch_processor = load_processor(config.switch, config.base)
            processors[SWITCH] = switch_processor
            required[SWITCH] = (OBJECT_PLACEHOLDER,)
        if config.roi and ROI not in standalone:
            processors[ROI] = load_processor(config.roi, config.base)
        self.seg_stage = None
        if config.seg and SEG not in standalone:
            from .seg import SEG_TOKEN

            processors[SEG] = load_processor(config.seg, config.base)
            required[SEG] = (SEG_TOKEN,)
        self.token_ids, self.token_notes = check_token_ids(
            self.base_processor.tokenizer,
            {k: p.tokenizer for k, p in processors.items()},
            required,
            embedding_rows=rows,
            image_token_id=core_config.image_token_id,
        )
        peft_model = llava
        if SWITCH not in standalone:
            object_projector = attach_object_projector(llava, self.switch_config.object_projector)
            peft_model, plain = attach_lora_adapter(
                llava, config.switch, SWITCH, plain_modules=(OBJECT_PROJECTOR,)
            )
            prefix = f"model.{OBJECT_PROJECTOR}."
            object_state = {k.removeprefix(prefix): v for k, v in plain.items() if k.startswith(prefix)}
            if not object_state:
                raise ValueError(f"{config.switch}: the switch adapter holds no {OBJECT_PROJECTOR} weights")
            object_projector.load_state_dict(object_state, strict=True)

        if config.roi:
            self.roi_config, self.roi_wording_source = read_roi_config(
                config.roi, max_new_tokens=config.roi_max_new_tokens, wording=config.roi_wording
            )
            if ROI in standalone:
                from roillava.answer import load_for_inference

                self.standalone[ROI], self.roi_processor = load_for_inference(
                    config.roi, dtype=config.torch_dtype, bits=config.bits, device=config.device
                )
            else:
                peft_model, _ = attach_lora_adapter(peft_model, config.roi, ROI)
                self.roi_processor = processors[ROI]
        self.sam = None
        if config.seg:
            from .seg import SEG_TOKEN, SegStage

            if SEG in standalone:
                self.seg_stage = SegStage.standalone(config)
                self.standalone[SEG] = self.seg_stage.seg
            else:
                self.seg_stage = SegStage.attach(peft_model, config, self.token_ids[SEG][SEG_TOKEN])
            self.sam = self.seg_stage.sam

        self.peft = peft_model.eval()
        self.peft.requires_grad_(False)
        for name, module in self.standalone.items():
            if name != SEG:  # the seg stage moves itself
                module.to(config.device).eval().requires_grad_(False)
        if SWITCH in standalone:
            swi = self.standalone[SWITCH]
        else:
            swi = SwiLLaVA(self.peft, self.switch_config, self.token_ids[SWITCH][OBJECT_PLACEHOLDER])
        self.switch = SwitchAdapter(swi, switch_processor, max_new_tokens=config.switch_max_new_tokens)
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
    breakdown["object_projector"] = unique_parameter_count(getattr(core.model, OBJECT_PROJECTOR, None))
    if extra:
        breakdown["seg_heads"] = unique_parameter_count(*extra)
    return MemoryReport(agent, base_count + sam_count, breakdown)
