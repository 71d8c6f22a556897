"""The offline tiny base: an HF-format LLaVA-1.5 directory (+ a tiny SAM) built from configs.

Every training script accepts this directory wherever it accepts `llava-hf/llava-1.5-7b-hf`,
so the toy world runs the very scripts a GPU user runs. The tokenizer is a Llama-style
(metaspace) BPE trained on the toy vocabulary and all prompt templates, with `<image>`,
`<object>` and `[SEG]` as special tokens. The vision tower comes from `vision_pretrain.py`
(a stand-in for CLIP pretraining); without it the tower is random.

    python -m playground.tiny_base --out playground/tiny_base [--vision-tower playground/tiny_tower]
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SamConfig,
    SamModel,
)

from .toyworld import (
    COLORS,
    GROUNDING_PROMPT,
    MISSING_OBJECTS_PREFIX,
    PATTERNS,
    SEG_CLASSES,
    SHAPES,
    SHORT_ANSWER_SUFFIX,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<object>", "[SEG]", "<im_start>", "<im_end>")


@dataclass(frozen=True)
class TinyBaseConfig:
    """Sizes of the tiny LLaVA-1.5; saved next to the checkpoint as `tiny_base_config.json`."""

    image_size: int = 112
    patch_size: int = 16
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 704
    vocab_size: int = 1024
    max_positions: int = 1024
    sam_image_size: int = 256
    seed: int = 0


def vision_config(cfg: TinyBaseConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )


def toy_corpus() -> list[str]:
    """Every string the tiny model is ever shown, so BPE merges whole toy words."""
    systems = [
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    ]
    lines = list(systems) + ["USER: ASSISTANT:", SHORT_ANSWER_SUFFIX.strip()]
    for color, pattern in itertools.product(COLORS, PATTERNS):
        lines += [
            f"What pattern is on the {color} object? {pattern}",
            f"The {color} object has {pattern}. The {color} object is {pattern}.",
            f'To answer the question: "What pattern is on the {color} object?", where is the region of interest in the image?',
            f"a large {color} star, {pattern}, among grey clutter",
        ]
    for shape, color in itertools.product(SHAPES, COLORS):
        lines += [
            f"What shape is the {color} object? {shape}",
            f"What color is the {shape}? {color}",
            f"a large {color} {shape} among grey clutter. a small {color} {shape} among grey clutter.",
            f"Is the {color} object on the left or right side of the image? left right",
            f"{MISSING_OBJECTS_PREFIX} {color} object.",
            GROUNDING_PROMPT.format(f"the {color} object"),
            f"The {shape} is {color}.",
            f"Additional visual information to focus on: {color} object <object> at location [0.125,0.250,0.500,0.625].",
            f'To answer the question: "What shape is the {color} object?", where is the region of interest in the image?',
            f'To answer the question: "What color is the {shape}?", what is the region of interest in the image?',
            f'The region of interest in the image is <image>\n. Answer the question: "What shape is the {color} object?"',
            "Now answer the following questions based on the raw image: ",
            f"Can you segment the {color} object in this image? Please segment the {color} object in this image.",
            f"What is the {color} object in this image? Please respond with segmentation mask. Please output segmentation mask.",
            "It is [SEG]. Sure, [SEG]. Sure, it is [SEG]. Sure, the segmentation result is [SEG]. [SEG].",
            "Render a clear and concise summary of the photo.",
        ]
    lines += [f"Can you segment the {c} in this image?" for c in SEG_CLASSES]
    fractions = sorted({round(k / 8, 3) for k in range(9)} | {round(k / 1000, 3) for k in range(0, 1001, 7)})
    lines += [
        str([a, b, c, d])
        for a, b, c, d in itertools.product(fractions[:6], fractions[-6:], fractions[:3], fractions[-3:])
    ]
    lines += [f"[{a:.3f},{b:.3f},{a:.3f},{b:.3f}]" for a, b in zip(fractions, reversed(fractions))]
    return lines


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Llama-style BPE (metaspace, byte-free) trained on the toy corpus.

    Digits and punctuation are split like LLaMA's SentencePiece splits digits: otherwise BPE merges
    fragments such as `5]` or `,0.`, and a box list gets a different token sequence every time,
    which a tiny model never learns to close.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(toy_corpus() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        additional_special_tokens=["<image>", "<object>", "[SEG]", "<im_start>", "<im_end>"],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    return fast


def build_processor(cfg: TinyBaseConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """LLaVA-1.5 preprocessing: pad to square with the CLIP mean colour, then resize."""
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def build_llava(cfg: TinyBaseConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    torch.manual_seed(cfg.seed)
    text = LlamaConfig(
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision_config(cfg),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    config.pad_token_id = tokenizer.pad_token_id
    return LlavaForConditionalGeneration(config)


def build_sam(cfg: TinyBaseConfig) -> SamModel:
    torch.manual_seed(cfg.seed)
    config = SamConfig(
        vision_config={
            "hidden_size": 64,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": cfg.sam_image_size,
            "patch_size": 16,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 128,
            "num_pos_feats": 16,
            "mlp_ratio": 2.0,
        },
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": cfg.sam_image_size,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "iou_head_hidden_dim": 32,
        },
    )
    return SamModel(config)


def build_tiny_base(
    out: Path, cfg: TinyBaseConfig = TinyBaseConfig(), vision_tower: Path | None = None
) -> Path:
    """Write tokenizer, processor, LLaVA and SAM under `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.vocab_size)
    processor = build_processor(cfg, tokenizer)
    model = build_llava(cfg, tokenizer)
    if vision_tower is not None:
        tower = CLIPVisionModel.from_pretrained(vision_tower)
        missing, unexpected = model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True), None
        del missing, unexpected
    model.save_pretrained(out)
    processor.save_pretrained(out)
    build_sam(cfg).save_pretrained(out / "sam")
    (out / "tiny_base_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("playground/tiny_base"))
    p.add_argument(
        "--vision-tower", type=Path, default=None, help="a CLIPVisionModel dir from vision_pretrain.py"
    )
    p.add_argument("--seed", type=int, default=0, help="the language model's and SAM's initialisation")
    args = p.parse_args()
    build_tiny_base(args.out, TinyBaseConfig(seed=args.seed), vision_tower=args.vision_tower)
    print(f"tiny base written to {args.out}")


if __name__ == "__main__":
    main()
