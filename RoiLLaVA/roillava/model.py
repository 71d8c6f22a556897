"""Loading the llava-hf base and choosing what trains: projector, full model, or LoRA."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration
from transformers.integrations import is_deepspeed_zero3_enabled

from eval.llava_hf import DTYPE_CHOICES, DTYPE_HELP, DTYPES, inference_dtype, llava_processor  # noqa: F401

PROJECTOR = "multi_modal_projector"
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Modules QLoRA keeps unquantised (regexes matched from the start of a module's full name).
QUANTISATION_SKIP = [r".*vision_tower", rf".*{PROJECTOR}", "lm_head"]


def gathered(params, modifier_rank: int | None = None):
    """Full (un-partitioned) parameters under ZeRO-3; a no-op otherwise."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def find_projector(model: torch.nn.Module) -> torch.nn.Module:
    """The multimodal projector inside a plain or PEFT-wrapped llava-hf model."""
    for name, module in model.named_modules():
        if name.endswith(PROJECTOR):
            wrapped = getattr(module, "modules_to_save", None)  # peft's ModulesToSaveWrapper
            return wrapped["default"] if wrapped is not None else module
    raise ValueError("model has no multi_modal_projector")


_ORIGINAL_PROJECTOR_KEYS = {"0": "linear_1", "2": "linear_2"}


def projector_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Projector weights from our `mm_projector.safetensors` or LLaVA's `mm_projector.bin`.

    Accepts `multi_modal_projector.linear_{1,2}.*` (llava-hf) and `model.mm_projector.{0,2}.*`
    (original LLaVA-1.5), with or without leading `model.` prefixes.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        raw = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, value in raw.items():
        m = re.search(r"(?:multi_modal_projector|mm_projector)\.(linear_1|linear_2|0|2)\.(weight|bias)$", key)
        if m is None:
            raise ValueError(f"{path}: unexpected projector key {key!r}")
        out[f"{_ORIGINAL_PROJECTOR_KEYS.get(m.group(1), m.group(1))}.{m.group(2)}"] = value
    return out


def load_projector(model: torch.nn.Module, path: str | Path) -> None:
    projector = find_projector(model)
    state = projector_state_from_file(path)
    with gathered(projector.parameters(), modifier_rank=0):
        missing, unexpected = projector.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: projector keys missing {missing}, unexpected {unexpected}")


def save_projector(model: torch.nn.Module, path: str | Path, *, write: bool = True) -> None:
    """Every rank calls this (ZeRO-3 gathers the projector collectively); `write` picks the one that saves."""
    projector = find_projector(model)
    with gathered(projector.parameters()):
        state = {f"{PROJECTOR}.{k}": v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    if write:
        save_file(state, str(path))


BITS_HELP = "load the language model in 4-bit (NF4) or 8-bit with bitsandbytes; vision tower, projector and lm_head stay in --dtype"


def quantization_config(bits: int, dtype: torch.dtype):
    """bitsandbytes config that quantises the language model's linear layers only (QLoRA).

    The vision tower, the projector and `lm_head` stay in `dtype`, as in LLaVA's QLoRA. The skip patterns
    are regexes so they match both transformers-5 names (`model.vision_tower.…`) and older ones.
    """
    if bits not in (4, 8, 16):
        raise ValueError(f"bits must be 4, 8 or 16, got {bits}")
    if bits == 16:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=QUANTISATION_SKIP,
    )


def load_base(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    bits: int = 16,
    device: str | torch.device | None = None,
):
    """The llava-hf model; 4/8-bit quantises the language model's linear layers only (`quantization_config`).

    `device`: load the weights straight there (no host-RAM copy of a GPU model first); None leaves the
    placement to the caller (training: the Trainer / DeepSpeed places it).
    """
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    quant = quantization_config(bits, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device is not None:
        kwargs["device_map"] = {"": torch.device(device)}
    return LlavaForConditionalGeneration.from_pretrained(path, **kwargs)


def is_quantised(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def freeze_for_stage(
    model: LlavaForConditionalGeneration, *, projector_only: bool, freeze_projector: bool = False
) -> None:
    """Projector alignment trains the projector alone; instruction tuning adds the language model.

    The vision tower is always frozen, as in LLaVA-1.5; `freeze_projector` (LLaVA's
    `--freeze_mm_mlp_adapter`) keeps the projector as it is too.
    """
    if projector_only and freeze_projector:
        raise ValueError("--tune_mm_mlp_adapter and --freeze_mm_mlp_adapter contradict each other")
    for name, p in model.named_parameters():
        in_projector = f"{PROJECTOR}." in name
        in_tower = "vision_tower." in name
        trains = (in_projector and not freeze_projector) or (
            not projector_only and not in_tower and not in_projector
        )
        if trains and not p.is_floating_point():
            trains = False  # a quantised (integer) weight: QLoRA trains adapters on it, never the weight
        p.requires_grad_(trains)


def add_lora(
    model,
    *,
    r: int,
    alpha: int,
    dropout: float,
    freeze_projector: bool = False,
    activation_checkpointing: bool = False,
):
    """LoRA on every linear layer of the language model; the projector trains fully and is saved with it,
    unless `freeze_projector` (then the adapter is LoRA only and uses the base's projector).

    The adapter weights take the model's dtype (peft would make them fp32): ZeRO-3 flattens every
    trainable weight into one buffer of one dtype, so fp32 LoRA beside a bf16 projector cannot start.
    A quantised (QLoRA) model first goes through peft's `prepare_model_for_kbit_training`.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantised(model):
        before = {n: (p.requires_grad, p.dtype) for n, p in model.named_parameters()}
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
        # It freezes everything and upcasts every float weight to fp32; keep the stage's choice of what
        # trains, and keep the tower, projector, embeddings and head in the model's dtype (LLaVA's QLoRA
        # keeps only the norms in fp32), which halves their memory.
        for name, p in model.named_parameters():
            trains, dtype = before[name]
            p.requires_grad_(trains)
            if p.is_floating_point() and "norm" not in name:
                p.data = p.data.to(dtype)

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=LORA_TARGETS,
        modules_to_save=None if freeze_projector else [PROJECTOR],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=False)
