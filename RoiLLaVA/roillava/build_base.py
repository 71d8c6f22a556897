"""Compose a llava-hf base where LLaVA-1.5's stage 1 starts: a language model, a CLIP tower, a fresh projector.

LLaVA-1.5 trains its projector (stage 1) on top of Vicuna-7B-v1.5 and CLIP ViT-L/14-336, not on top of an
already-aligned LLaVA. This writes that starting point as a llava-hf directory that `pretrain.sh` loads:

    python -m roillava.build_base --lm lmsys/vicuna-7b-v1.5 \\
        --vision-tower openai/clip-vit-large-patch14-336 --out ./checkpoints/llava-v1.5-7b-base

- the language model's weights (any LLaMA-family causal LM), its embeddings resized for the added tokens
  and padded to a multiple of 64 rows as llava-1.5-7b-hf's are (32064);
- the vision tower's weights (a `CLIPVisionModel` or the vision half of a `CLIPModel`);
- a fresh `mlp2x_gelu` projector (Linear, GELU, Linear) with PyTorch's default Linear initialisation, as
  LLaVA creates it;
- the language model's tokenizer with `<image>` and, when it has none, `<pad>` added (llava-hf's ids
  32000 and 32001 for a LLaMA vocabulary); `image_token_index` is read from the tokenizer;
- `vision_feature_layer -2`, `vision_feature_select_strategy default` and `image_seq_length` from the
  tower's geometry ((image_size / patch_size)^2: 576 at 336 px / 14);
- the processor: `LlavaImageProcessorPil` padding to a square with the tower's mean colour (LLaVA-1.5's
  `pad`), with the tower's size, mean and std.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
VOCAB_MULTIPLE = 64  # llava-1.5-7b-hf pads 32002 rows to 32064
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's, used when the tower ships no processor
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROJECTORS = {"mlp2x_gelu": "gelu"}  # LLaVA-1.5's projector type → llava-hf's projector_hidden_act


def vision_config_of(source: str) -> CLIPVisionConfig:
    config = AutoConfig.from_pretrained(source)
    if config.model_type == "clip":
        return config.vision_config
    if config.model_type != "clip_vision_model":
        raise ValueError(
            f"{source}: expected a CLIP model or CLIP vision model, got model_type {config.model_type!r}"
        )
    return config


def tower_image_processor(source: str, vision: CLIPVisionConfig) -> LlavaImageProcessorPil:
    """LLaVA-1.5's pad-to-square preprocessing with the tower's own size and statistics."""
    try:
        shipped = AutoImageProcessor.from_pretrained(source)
        mean, std = list(shipped.image_mean), list(shipped.image_std)
    except OSError:  # a tower saved without a preprocessor config: CLIP's statistics
        mean, std = CLIP_MEAN, CLIP_STD
    return LlavaImageProcessorPil(
        do_pad=True,
        do_resize=True,
        size={"shortest_edge": vision.image_size},
        do_center_crop=True,
        crop_size={"height": vision.image_size, "width": vision.image_size},
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )


def resize_embeddings(language_model, n_tokens: int) -> None:
    """Room for the added tokens, padded to a multiple of 64 rows; new input and output rows start at the
    mean of the old ones. (`<image>` rows are replaced by image features and `<pad>` is masked, so a
    sampled init, which costs minutes at 7B width on a CPU, buys nothing.)"""
    old = language_model.get_input_embeddings().num_embeddings
    if n_tokens <= old:
        return
    language_model.resize_token_embeddings(n_tokens, pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)
    with torch.no_grad():
        for table in (language_model.get_input_embeddings(), language_model.get_output_embeddings()):
            if table is not None:
                table.weight[old:] = table.weight[:old].float().mean(0).to(table.weight.dtype)


def build_base(
    lm: str,
    vision_tower: str,
    out: str | Path,
    *,
    projector: str = "mlp2x_gelu",
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write the composed llava-hf directory to `out`; see the module docstring for what it holds."""
    if projector not in PROJECTORS:
        raise ValueError(f"--projector must be one of {sorted(PROJECTORS)}, got {projector!r}")
    out = Path(out)
    vision_config = vision_config_of(vision_tower)  # fail on a wrong tower before the big load
    tokenizer = AutoTokenizer.from_pretrained(lm)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})

    language_model = AutoModelForCausalLM.from_pretrained(lm, dtype=dtype)
    resize_embeddings(language_model, len(tokenizer))
    tower = CLIPVisionModel.from_pretrained(vision_tower, dtype=dtype)

    text_config = language_model.config
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act=PROJECTORS[projector],
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):  # the parts come from the sources: allocate nothing twice
        model = LlavaForConditionalGeneration(config)
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    model.model.vision_tower = tower
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)  # fresh: torch's init
    model.config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)

    processor = LlavaProcessor(
        image_processor=tower_image_processor(vision_tower, vision_config),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS row, dropped by the `default` strategy
    )
    processor.save_pretrained(out)
    (out / "build_base.json").write_text(
        json.dumps(
            {"lm": str(lm), "vision_tower": str(vision_tower), "projector": projector, "dtype": str(dtype)},
            indent=1,
        )
    )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", required=True, help="LLaMA-family causal LM: directory or hub id")
    p.add_argument("--vision-tower", required=True, help="CLIP (vision) model: directory or hub id")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--projector", default="mlp2x_gelu", choices=sorted(PROJECTORS))
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = p.parse_args(argv)
    out = build_base(
        args.lm, args.vision_tower, args.out, projector=args.projector, dtype=getattr(torch, args.dtype)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
