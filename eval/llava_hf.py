"""How every sibling loads a llava-hf checkpoint for its users: LLaVA-1.5's image preprocessing and `--dtype`.

Shared by roillava, swillava and segllava (which never import each other) and by `fast/`, so that one rule
decides the frame every box, crop and mask lives in, and one rule what `--dtype auto` means.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaImageProcessorPil

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_HELP = "auto: bf16 on a GPU that supports it, else fp16 on CUDA, fp32 on CPU"


def inference_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The weights' dtype for `--dtype` on `device` (`auto`: bf16 where the GPU has it, fp16 on older CUDA)."""
    if name == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {name!r}")
    return DTYPES[name]


def llava_processor(source: str | Path, image_aspect_ratio: str = "pad"):
    """The checkpoint's processor with LLaVA-1.5's image preprocessing, whatever class the checkpoint ships.

    llava-hf's llava-1.5 checkpoints ship a `CLIPImageProcessor` config (resize + centre crop), which has no
    padding step: setting `do_pad` on it is silently ignored, and every box, crop and mask would then live in
    a cropped frame. LLaVA-1.5 pads to a square with the mean colour (`pad`) or resizes and centre-crops
    (`square`, its stage-1 default); both are `LlavaImageProcessorPil` with the checkpoint's sizes and stats.
    """
    if image_aspect_ratio not in ("pad", "square"):
        raise ValueError(f"image_aspect_ratio must be pad or square, got {image_aspect_ratio!r}")
    processor = AutoProcessor.from_pretrained(str(source))
    shipped = processor.image_processor
    processor.image_processor = LlavaImageProcessorPil(
        do_pad=image_aspect_ratio == "pad",
        do_resize=True,
        size={k: v for k, v in dict(shipped.size).items() if v is not None},
        do_center_crop=True,
        crop_size={k: v for k, v in dict(shipped.crop_size).items() if v is not None},
        resample=shipped.resample,
        rescale_factor=shipped.rescale_factor,
        image_mean=list(shipped.image_mean),
        image_std=list(shipped.image_std),
        do_convert_rgb=True,
    )
    return processor


def load_llava_for_inference(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    bits: int = 16,
) -> LlavaForConditionalGeneration:
    """A llava-hf model loaded straight to `device` (no host copy first); 4/8-bit quantises only the
    language model's linears (transformers-5 names: `model.vision_tower`, `model.multi_modal_projector`)."""
    if bits not in (4, 8, 16):
        raise ValueError(f"bits must be 4, 8 or 16, got {bits}")
    kwargs = {"dtype": dtype, "device_map": {"": torch.device(device)}}
    if bits != 16:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=bits == 4,
            load_in_8bit=bits == 8,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
        )
    return LlavaForConditionalGeneration.from_pretrained(str(path), **kwargs)


def left_pad(
    rows: Sequence[Sequence[int]], pad_token_id: int, shared_prefix: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch, padded on the left of each row's own part: the one
    padding rule of every batched prompt (generation, teacher forcing, likelihoods).

    With `shared_prefix` = P the first P ids (the same in every row) stay in front and the padding goes
    between them and the rest: `[prefix][pad...][rest]`. Positions come from the mask, so each row sees
    the positions it would see alone.
    """
    length = shared_prefix + max(len(r) - shared_prefix for r in rows)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :shared_prefix] = torch.tensor(list(r[:shared_prefix]), dtype=torch.long)
        mask[i, :shared_prefix] = 1
        ids[i, length - len(r) + shared_prefix :] = torch.tensor(list(r[shared_prefix:]), dtype=torch.long)
        mask[i, length - len(r) + shared_prefix :] = 1
    return ids, mask


ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def is_adapter_dir(directory: str | Path) -> bool:
    """A peft LoRA adapter directory (not a full model checkpoint)."""
    return (Path(directory) / ADAPTER_CONFIG_FILE).is_file()


def load_processor(directory: str | Path, fallback: str | Path):
    """A checkpoint's processor (padding on, as LLaVA-1.5 trains), or `fallback`'s if it saved none."""
    d = Path(directory)
    has = (d / "processor_config.json").is_file() or (d / "tokenizer_config.json").is_file()
    return llava_processor(d if has else fallback, "pad")


def attach_lora_adapter(model, directory: str | Path, name: str, *, plain_modules: tuple[str, ...] = ()):
    """Add the peft adapter saved in `directory` to `model` under `name`: the one attach path of every
    sibling's stage. Returns the peft model and the weights of `plain_modules`.

    Weights of `plain_modules` (listed in the adapter's `modules_to_save`) are not wrapped by peft; they
    are returned (keys relative to the llava-hf model) for the caller to load into the one plain module.
    Every adapter weight must land: unexpected or missing adapter keys are errors.
    """
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

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


def add_named_adapter(model, config, name: str, *, plain_modules: tuple[str, ...] = ()):
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
