"""The switch model: a llava-hf `LlavaForConditionalGeneration` plus SEAL's object projector, composed.

Token layout (llava-hf conventions, positions always found from token ids):

* the image is a run of `image_token_id`s, one per feature row: N rows ("long", the llava-hf
  `multi_modal_projector` output, N = 576 for CLIP@336) or `num_latents` rows ("short", the perceiver);
* each object is a run of `<object>` token ids, N or `num_latents` long, in order of appearance.

`embed_multimodal` embeds the ids, then scatters the image rows and the object rows (row-major over the
batch) into those runs; the language model runs on `inputs_embeds`. Batches carry a fixed number of
object slots per sample (`object_present` marks the real ones), so samples with 0, 1 or 3 objects batch
without any re-padding loop. The object projector is registered as `llava.model.mm_projector_object`, so
its checkpoint keys are SEAL's `model.mm_projector_object.*` and peft's `modules_to_save` can train it.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.integrations import is_deepspeed_zero3_enabled

from eval.llava_hf import (  # noqa: F401
    DTYPE_CHOICES,
    DTYPE_HELP,
    DTYPES,
    inference_dtype,
    llava_processor,
    load_llava_for_inference,
)

from .conversation import OBJECT_PLACEHOLDER, TokenLayout
from .resampler import (
    build_object_projector,
    object_projector_state_from_checkpoint,
    remap_perceiver_pretrain_keys,
)

MLP_PROJECTOR = "multi_modal_projector"
OBJECT_PROJECTOR = "mm_projector_object"
CONFIG_FILE = "swillava_config.json"
MLP_PROJECTOR_FILE = "mm_projector.safetensors"
OBJECT_PROJECTOR_FILE = "mm_projector_object.safetensors"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# Kept in full precision under --bits 4/8 (transformers-5 module paths, matched from the start of a name): CLIP,
# both projectors (they train or feed trained rows) and lm_head.
QUANT_SKIP_MODULES = ["model.vision_tower", f"model.{MLP_PROJECTOR}", f"model.{OBJECT_PROJECTOR}", "lm_head"]


def quantization_config(
    bits: int, compute_dtype: torch.dtype, quant_type: str = "nf4", double_quant: bool = True
):
    """bitsandbytes settings for QLoRA: the language model's linears in 4 or 8 bits, the rest as loaded."""
    from transformers import BitsAndBytesConfig

    if bits not in (4, 8):
        raise ValueError(f"--bits must be 4, 8 or 16, got {bits}")
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        llm_int8_skip_modules=QUANT_SKIP_MODULES,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_quant_type=quant_type,
    )


def lora_targets(modules: tuple[str, ...] = LORA_MODULES) -> str:
    """peft's target regex: the named linear layers of the language model only (never CLIP's)."""
    unknown = sorted(set(modules) - set(LORA_MODULES))
    if unknown or not modules:
        raise ValueError(f"LoRA modules must be a non-empty subset of {LORA_MODULES}, got {list(modules)}")
    return rf".*language_model.*\.({'|'.join(modules)})"


@dataclass
class ObjectProjectorConfig:
    """Perceiver sizes; the defaults are SEAL's, so its checkpoints load."""

    depth: int = 6
    heads: int = 16
    dim_head: int = 96
    num_latents: int = 32
    ff_mult: int = 4


@dataclass
class SwiConfig:
    """Everything needed to rebuild a SwiLLaVA model; saved as `swillava_config.json` with every checkpoint.

    `weights` says what the directory holds: "lora" (peft adapter incl. both projectors, on `base_model`),
    "full" (a llava-hf model + `mm_projector_object.safetensors`) or "projectors" (projector files only,
    on `base_model`).
    """

    base_model: str = "llava-hf/llava-1.5-7b-hf"
    object_projector: ObjectProjectorConfig = field(default_factory=ObjectProjectorConfig)
    object_slots: int = 3
    patch_scale: float = 1.2
    template: str = "v1"
    weights: str = "full"

    def save(self, directory: str | Path) -> None:
        """A local base is written relative to the checkpoint, so it can move together with it."""
        from eval.checks import relative_to_checkpoint

        data = asdict(self)
        data["base_model"] = relative_to_checkpoint(directory, data["base_model"])
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> SwiConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"not a SwiLLaVA checkpoint: {path} is missing")
        raw = json.loads(path.read_text())
        raw["object_projector"] = ObjectProjectorConfig(**raw.get("object_projector", {}))
        return cls(**raw)


def gathered(params, modifier_rank: int | None = None):
    """Full (un-partitioned) parameters under ZeRO-3; a no-op otherwise."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def unwrap_llava(model: nn.Module) -> LlavaForConditionalGeneration:
    """The llava-hf model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _active(module: nn.Module) -> nn.Module:
    """A peft `ModulesToSaveWrapper`'s trained copy, or the module itself."""
    copies = getattr(module, "modules_to_save", None)
    return copies["default"] if copies is not None else module


def image_feature_length(config) -> int:
    """Rows of a "long" image: patches, plus CLS under the "full" selection strategy."""
    vc = config.vision_config
    return (vc.image_size // vc.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")


class SwiLLaVA(nn.Module):
    """A llava-hf model (plain or peft-wrapped) with long/short image and object features.

    `forward` takes the collator's batch: `input_ids` with image/object runs, `pixel_values` [B,3,S,S]
    (zeros for text-only rows, `image_present` False), `image_long` [B], `object_pixel_values`
    [B,K,3,S,S] with `object_present`/`object_long` [B,K]; `labels` give the CE loss.
    """

    def __init__(self, llava: nn.Module, config: SwiConfig, object_token_id: int):
        super().__init__()
        self.llava = llava
        self.swi_config = config
        self.object_token_id = object_token_id
        core = self.core
        if not hasattr(core.model, OBJECT_PROJECTOR):
            raise ValueError("attach the object projector first (build_switch)")
        self.image_token_id = core.config.image_token_id
        self.long_length = image_feature_length(core.config)
        self.short_length = config.object_projector.num_latents

    @property
    def core(self) -> LlavaForConditionalGeneration:
        return unwrap_llava(self.llava)

    @property
    def config(self):
        """The llava-hf config (the Trainer and DeepSpeed read sizes from it)."""
        return self.core.config

    @property
    def mlp_projector(self) -> nn.Module:
        return getattr(self.core.model, MLP_PROJECTOR)

    @property
    def object_projector(self) -> nn.Module:
        return getattr(self.core.model, OBJECT_PROJECTOR)

    def feature_length(self, long: bool) -> int:
        return self.long_length if long else self.short_length

    def token_layout(self) -> TokenLayout:
        return TokenLayout(self.image_token_id, self.object_token_id, self.long_length, self.short_length)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Selected CLIP hidden states [M, N, D] (llava-hf's layer and CLS rules); no grad if the tower is frozen."""
        cfg = self.core.config
        tower = self.core.model.vision_tower
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        with torch.set_grad_enabled(needs_grad):
            dtype = next(tower.parameters()).dtype
            out = tower(pixel_values.to(dtype), output_hidden_states=True)
        layers = cfg.vision_feature_layer
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        states = [out.hidden_states[i] for i in layers]
        if cfg.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]
        return torch.cat(states, dim=-1)

    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_present: torch.Tensor | None = None,
        image_long: torch.Tensor | None = None,
        object_pixel_values: torch.Tensor | None = None,
        object_present: torch.Tensor | None = None,
        object_long: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`inputs_embeds` with image and object feature rows scattered into their token runs."""
        embeds = self.core.get_input_embeddings()(input_ids)
        b = input_ids.shape[0]
        is_image, is_object = input_ids == self.image_token_id, input_ids == self.object_token_id
        if pixel_values is None:
            if is_image.any() or is_object.any():
                raise ValueError("input_ids hold image/object tokens but no pixel_values were given")
            return embeds
        device = input_ids.device
        ones = torch.ones(b, dtype=torch.bool, device=device)
        image_present = ones if image_present is None else image_present.bool()
        image_long = ones if image_long is None else image_long.bool()
        if object_pixel_values is None:
            object_pixel_values = pixel_values.new_zeros((b, 0, *pixel_values.shape[1:]))
        k = object_pixel_values.shape[1]
        full = torch.ones(b, k, dtype=torch.bool, device=device)
        object_present = full if object_present is None else object_present.bool()
        object_long = full if object_long is None else object_long.bool()

        # Python lists once: per-element tensor reads would each synchronise a GPU.
        img_present, img_long = image_present.tolist(), image_long.tolist()
        obj_present, obj_long = object_present.tolist(), object_long.tolist()
        self._check_runs(is_image, is_object, img_present, img_long, obj_present, obj_long)

        # Every image slot (text-only rows hold a zero image) runs through the tower and both projectors,
        # so every rank calls the same modules each step (ZeRO-3) whatever the batch holds.
        crops = object_pixel_values[object_present]
        features = self.vision_features(torch.cat([pixel_values, crops]))
        long, short = self.mlp_projector(features), self.object_projector(features)

        img_rows = [long[i] if img_long[i] else short[i] for i in range(b) if img_present[i]]
        crop_long = [lg for row in range(b) for lg, p in zip(obj_long[row], obj_present[row]) if p]
        obj_rows = [long[b + j] if lg else short[b + j] for j, lg in enumerate(crop_long)]
        embeds = _scatter(embeds, is_image, img_rows)
        embeds = _scatter(embeds, is_object, obj_rows)
        if torch.is_grad_enabled():
            # Unused rows still reach the loss (times 0), so every trainable parameter gets a gradient
            # (a mean in float32: a half-precision sum could overflow and turn 0 * inf into NaN).
            embeds = embeds + (long.float().mean() + short.float().mean()).to(embeds.dtype) * 0.0
        return embeds

    def _check_runs(
        self,
        is_image: torch.Tensor,
        is_object: torch.Tensor,
        img_present: list[bool],
        img_long: list[bool],
        obj_present: list[list[bool]],
        obj_long: list[list[bool]],
    ) -> None:
        """Placeholder counts per row must equal the feature rows chosen for that row."""
        n_img, n_obj = is_image.sum(1).tolist(), is_object.sum(1).tolist()
        for row in range(len(n_img)):
            want = self.feature_length(img_long[row]) if img_present[row] else 0
            if n_img[row] != want:
                raise ValueError(f"batch row {row}: {n_img[row]} image tokens, but its image has {want} rows")
            want = sum(self.feature_length(lg) for lg, p in zip(obj_long[row], obj_present[row]) if p)
            if n_obj[row] != want:
                raise ValueError(
                    f"batch row {row}: {n_obj[row]} object tokens, but its objects have {want} rows"
                )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_present: torch.Tensor | None = None,
        image_long: torch.Tensor | None = None,
        object_pixel_values: torch.Tensor | None = None,
        object_present: torch.Tensor | None = None,
        object_long: torch.Tensor | None = None,
        **kwargs,
    ):
        embeds = self.embed_multimodal(
            input_ids,
            pixel_values,
            image_present,
            image_long,
            object_pixel_values,
            object_present,
            object_long,
        )
        return self.llava(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As `nn.Module`'s, except that a strict load accepts missing frozen weights: a checkpoint of a
        projector or LoRA stage (DeepSpeed's resume states included) holds only what trains, and the
        frozen rest is the base this model was built from."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            missing = [k for k in result.missing_keys if k in trainable]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"SwiLLaVA state dict: missing trained weights {missing[:5]} ({len(missing)}), "
                    f"unexpected keys {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
                )
        return result

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Called by the HF Trainer; checkpointing lives in the language model."""
        self.core.activation_checkpointing_enable(**kwargs)
        self.core.enable_input_require_grads()

    # --- saving -------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | Path,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        projectors_only: tuple[str, ...] = (),
    ) -> None:
        """Write a self-contained checkpoint (see `SwiConfig.weights`) plus `swillava_config.json`.

        `state_dict` is this module's (e.g. gathered by DeepSpeed); `projectors_only` names the projector
        files to write instead of model weights (projector alignment).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        state = {k.removeprefix("llava."): v for k, v in state.items()}
        if projectors_only:
            weights = "projectors"
            core_state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
            for name in projectors_only:
                _save_projector_file(core_state, name, out)
        elif unwrap_llava(self.llava) is not self.llava:
            weights = "lora"
            self.llava.save_pretrained(out, state_dict=state)
        else:
            weights = "full"
            prefix = f"model.{OBJECT_PROJECTOR}."
            self.llava.save_pretrained(
                out, state_dict={k: v for k, v in state.items() if not k.startswith(prefix)}
            )
            _save_projector_file(state, OBJECT_PROJECTOR, out)
        replace(self.swi_config, weights=weights).save(out)


def _scatter(embeds: torch.Tensor, mask: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    if not rows:
        return embeds
    values = torch.cat(rows).to(embeds.dtype)
    return embeds.masked_scatter(mask.unsqueeze(-1), values)


def _save_projector_file(core_state: dict[str, torch.Tensor], name: str, out: Path) -> None:
    """`mm_projector.safetensors` (llava-hf keys) or `mm_projector_object.safetensors` (SEAL keys)."""
    prefix = f"model.{name}."
    picked = {k: v for k, v in core_state.items() if k.startswith(prefix)}
    if not picked:
        raise ValueError(f"no {prefix}* weights in the state dict to save")
    if name == MLP_PROJECTOR:
        picked = {k.removeprefix("model."): v for k, v in picked.items()}
    file = MLP_PROJECTOR_FILE if name == MLP_PROJECTOR else OBJECT_PROJECTOR_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in picked.items()}, str(out / file))


# --- building and loading ------------------------------------------------------------------------------
def ensure_object_token(tokenizer, llava: LlavaForConditionalGeneration) -> int:
    """Add `<object>` to the tokenizer if missing (llava-hf 7B has spare embedding rows; else resize)."""
    if OBJECT_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_tokens([OBJECT_PLACEHOLDER], special_tokens=True)
    if len(tokenizer) > llava.get_input_embeddings().num_embeddings:
        # Deterministic (mean) initialisation: the loader repeats it, so a LoRA run stays self-contained.
        llava.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(OBJECT_PLACEHOLDER)


def attach_object_projector(llava: LlavaForConditionalGeneration, cfg: ObjectProjectorConfig) -> nn.Module:
    """Build SEAL's perceiver projector (vision hidden -> text hidden) as `llava.model.mm_projector_object`."""
    layers = llava.config.vision_feature_layer
    n_layers = len(layers) if isinstance(layers, (list, tuple)) else 1
    projector = build_object_projector(
        llava.config.vision_config.hidden_size * n_layers,
        llava.config.text_config.hidden_size,
        depth=cfg.depth,
        heads=cfg.heads,
        dim_head=cfg.dim_head,
        num_latents=cfg.num_latents,
        ff_mult=cfg.ff_mult,
    )
    dtype = next(getattr(llava.model, MLP_PROJECTOR).parameters()).dtype
    projector.to(dtype=dtype, device=llava.get_input_embeddings().weight.device)
    llava.model.add_module(OBJECT_PROJECTOR, projector)
    return projector


def build_switch(llava: LlavaForConditionalGeneration, tokenizer, config: SwiConfig) -> SwiLLaVA:
    """A SwiLLaVA around a freshly loaded llava-hf model (adds `<object>` and the object projector)."""
    object_id = ensure_object_token(tokenizer, llava)
    if not hasattr(llava.model, OBJECT_PROJECTOR):
        attach_object_projector(llava, config.object_projector)
    return SwiLLaVA(llava, config, object_id)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"projector file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_object_projector(swi: SwiLLaVA, path: str | Path) -> None:
    """Load `mm_projector_object` weights: ours, SEAL's full checkpoint or its perceiver-pretrain `.bin`."""
    path = Path(path)
    raw = _read_state(path)
    try:
        if "model.mm_projector.1.latents" in raw and not any(OBJECT_PROJECTOR in k for k in raw):
            raw = remap_perceiver_pretrain_keys(raw)
        state = object_projector_state_from_checkpoint(raw)
        projector = _active(swi.object_projector)
        with gathered(projector.parameters(), modifier_rank=0):
            projector.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot load the object projector ({e})") from None


_LLAVA_PROJECTOR_KEYS = {"0": "linear_1", "2": "linear_2"}  # original LLaVA's Sequential indices


def load_mlp_projector(swi: SwiLLaVA, path: str | Path) -> None:
    """Load the llava-hf projector from `multi_modal_projector.linear_{1,2}.*` or LLaVA's `mm_projector.{0,2}.*`."""
    path = Path(path)
    state = {}
    for key, value in _read_state(path).items():
        m = re.search(r"(?:multi_modal_projector|mm_projector)\.(linear_1|linear_2|0|2)\.(weight|bias)$", key)
        if m is None:
            raise ValueError(f"{path}: unexpected projector key {key!r}")
        state[f"{_LLAVA_PROJECTOR_KEYS.get(m.group(1), m.group(1))}.{m.group(2)}"] = value
    projector = _active(swi.mlp_projector)
    with gathered(projector.parameters(), modifier_rank=0):
        missing, unexpected = projector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: projector keys missing {missing}, unexpected {unexpected}")


def set_trainable(
    swi: SwiLLaVA, *, language_model: bool, mlp_projector: bool, object_projector: bool
) -> None:
    """Choose what trains; the vision tower never does (LLaVA-1.5, SEAL)."""
    for name, p in swi.core.named_parameters():
        if not p.is_floating_point():  # quantised (--bits 4/8) weights never train
            continue
        if f"{OBJECT_PROJECTOR}." in name:
            p.requires_grad_(object_projector)
        elif f"{MLP_PROJECTOR}." in name:
            p.requires_grad_(mlp_projector)
        elif "vision_tower." in name:
            p.requires_grad_(False)
        else:
            p.requires_grad_(language_model)


def add_lora(
    swi: SwiLLaVA,
    *,
    r: int,
    alpha: int,
    dropout: float,
    freeze_mlp_projector: bool = False,
    modules: tuple[str, ...] = LORA_MODULES,
) -> None:
    """LoRA on every linear layer of the language model; the trained projectors are saved with it.

    With `freeze_mlp_projector` the adapter keeps the base's MLP projector (no copy in the adapter),
    so an agent holding several adapters on one base stores it once. The LoRA weights take the model's
    dtype (peft would keep them in float32): ZeRO-3 packs all trainable weights into one buffer of one
    dtype, beside the bf16 projector copies.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=lora_targets(modules),
        modules_to_save=[OBJECT_PROJECTOR] if freeze_mlp_projector else [MLP_PROJECTOR, OBJECT_PROJECTOR],
        task_type="CAUSAL_LM",
    )
    swi.llava = get_peft_model(swi.llava, config, autocast_adapter_dtype=False)


def load_trained_weights(swi: SwiLLaVA, directory: str | Path) -> None:
    """Load what `save_pretrained` wrote into an already built model of the same kind (resume without DeepSpeed)."""
    d = Path(directory)
    if (d / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(swi.llava, load_file(str(d / "adapter_model.safetensors")))
        return
    if (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file():
        trained = LlavaForConditionalGeneration.from_pretrained(d, dtype=next(swi.parameters()).dtype)
        swi.core.load_state_dict(trained.state_dict(), strict=False)
    if (d / MLP_PROJECTOR_FILE).is_file():
        load_mlp_projector(swi, d / MLP_PROJECTOR_FILE)
    if (d / OBJECT_PROJECTOR_FILE).is_file():
        load_object_projector(swi, d / OBJECT_PROJECTOR_FILE)


BITS_HELP = "load the language model in 4-bit (NF4) or 8-bit with bitsandbytes; vision tower, projectors and lm_head stay in --dtype"


def load_switch(
    path: str | Path,
    model_base: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    bits: int = 16,
) -> tuple[SwiLLaVA, object]:
    """A SwiLLaVA checkpoint ready for inference, and its processor (padding on).

    LoRA is merged on a 16-bit base; on a 4/8-bit base it stays a peft layer (merging into quantised
    weights would round the update away). The directories are checked first (`eval.checks`), so a
    damaged one fails in seconds naming the file.
    """
    from eval.checks import check_checkpoint

    path = Path(path)
    check_checkpoint(path, "switch checkpoint", check_base=False)
    check_checkpoint(model_base, "model_base")
    config = SwiConfig.load(path)
    if model_base:
        base = model_base
    else:
        from eval.checks import resolve_in_checkpoint

        base = resolve_in_checkpoint(path, config.base_model, f"{CONFIG_FILE}:base_model")
    weights_dir = path if config.weights == "full" else base
    llava = load_llava_for_inference(weights_dir, device=device, dtype=dtype, bits=bits)
    has_processor = (path / "processor_config.json").is_file() or (path / "tokenizer_config.json").is_file()
    processor = llava_processor(path if has_processor else base, "pad")
    swi = build_switch(llava, processor.tokenizer, config)
    if config.weights == "lora":
        from eval.llava_hf import attach_lora_adapter

        swi.llava, _ = attach_lora_adapter(swi.llava, path, "default")  # the agent's attach path, then merge
        if bits == 16:
            swi.llava = swi.llava.merge_and_unload()
    else:  # "full" already holds the llava-hf weights; both kinds keep the projectors in side files
        if (path / MLP_PROJECTOR_FILE).is_file():
            load_mlp_projector(swi, path / MLP_PROJECTOR_FILE)
        load_object_projector(swi, path / OBJECT_PROJECTOR_FILE)
    return swi.eval(), processor
