"""Shallow models at the real LLaVA-1.5-7B / CLIP-336 / SAM-H widths, built offline from configs.

Real users run llava-hf's `llava-1.5-7b-hf` and SAM ViT-H; this machine cannot download them and
cannot hold them. A model with every width of the real one (LLaMA-7B hidden 4096 / MLP 11008 / 32
heads, vocab 32064 with `<image>` at 32000 and `<pad>` at 32001; CLIP ViT-L/14 at 336 px, 576 image
rows; SAM ViT-H at 1024 px) but only one or two layers exercises every shape-dependent path: image
rows, padded frames, mask resolution, dtype handling, checkpoint contents. The image processor is
written the way llava-hf ships it (a `CLIPImageProcessor` config: resize + centre crop), so a loader
that trusts the checkpoint's class silently crops where LLaVA-1.5 pads.

    python -m playground.real_shapes --out /tmp/real_base [--text-layers 1] [--vision-layers 1]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SamConfig,
    SamModel,
)

from .tiny_base import CLIP_MEAN, CLIP_STD, build_tokenizer

LLAMA_VOCAB = 32000  # LLaMA's SentencePiece vocabulary; llava-hf adds <image> (32000) and <pad> (32001)
LLAVA_HF_VOCAB = 32064  # llava-1.5-7b-hf's embedding rows (padded to a multiple of 64)


@dataclass(frozen=True)
class RealShapeConfig:
    """Depths of the shallow real-width models; every width is llava-1.5-7b-hf's or SAM ViT-H's."""

    text_layers: int = 1
    vision_layers: int = 2  # vision_feature_layer -2 then reads the first layer's output
    sam_layers: int = 1
    seed: int = 0


def real_tokenizer(llava_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer with LLaMA's 32000 ids and llava-hf's added `<image>` and `<pad>`
    (`llava_tokens=False`: LLaMA's/Vicuna's own, without them and without a pad token).

    The toy BPE gives real merges for every word our prompts use; filler pieces bring the base
    vocabulary to 32000 ids so that the added tokens get llava-hf's ids.
    """
    toy = build_tokenizer(1024)
    state = json.loads(toy.backend_tokenizer.to_str())
    vocab: dict[str, int] = {}
    for piece, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in ("<image>", "<object>", "[SEG]", "<im_start>", "<im_end>"):
            vocab[piece] = len(vocab)
    for k in range(LLAMA_VOCAB - len(vocab)):
        vocab[f"<filler_{k}>"] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # LLaMA's tokenizer prepends <s> (add_bos_token); the toy tokenizer does not, so both cases are exercised.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if not llava_tokens:
        return fast
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.add_special_tokens({"pad_token": "<pad>"})
    assert fast.convert_tokens_to_ids("<image>") == 32000 and fast.pad_token_id == 32001
    return fast


def llava_config(cfg: RealShapeConfig) -> LlavaConfig:
    """llava-1.5-7b-hf's `LlavaConfig` with fewer layers."""
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=LLAVA_HF_VOCAB,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32001,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    config.pad_token_id = 32001
    return config


def sam_config(cfg: RealShapeConfig) -> SamConfig:
    """SAM ViT-H (`facebook/sam-vit-huge`) with fewer encoder layers; 1024 px, 256×256 mask logits."""
    return SamConfig(
        vision_config={
            "hidden_size": 1280,
            "output_channels": 256,
            "num_hidden_layers": cfg.sam_layers,
            "num_attention_heads": 16,
            "image_size": 1024,
            "patch_size": 16,
            "window_size": 14,
            "global_attn_indexes": [cfg.sam_layers - 1],
            "mlp_dim": 5120,
        },
    )


def hub_image_processor_config() -> dict:
    """`preprocessor_config.json` exactly as llava-hf ships it for llava-1.5: a plain CLIP processor."""
    return {
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 336},
    }


def build_real_shape_base(
    out: Path, cfg: RealShapeConfig = RealShapeConfig(), dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Write a llava-hf directory laid out like `llava-hf/llava-1.5-7b-hf`, plus SAM-H widths in `out/sam`."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    with torch.device("cpu"):
        model = LlavaForConditionalGeneration(llava_config(cfg)).to(dtype)
    model.save_pretrained(out)
    del model
    tokenizer = real_tokenizer()
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(hub_image_processor_config(), indent=2))
    (out / "processor_config.json").write_text(
        json.dumps(
            {
                "image_token": "<image>",
                "num_additional_image_tokens": 1,
                "patch_size": 14,
                "processor_class": "LlavaProcessor",
                "vision_feature_select_strategy": "default",
            },
            indent=2,
        )
    )
    torch.manual_seed(cfg.seed)
    SamModel(sam_config(cfg)).to(dtype).save_pretrained(out / "sam")
    (out / "real_shape_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--text-layers", type=int, default=1)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--sam-layers", type=int, default=1)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = p.parse_args()
    cfg = RealShapeConfig(args.text_layers, args.vision_layers, args.sam_layers)
    build_real_shape_base(args.out, cfg, getattr(torch, args.dtype))
    print(f"real-shape base written to {args.out}")


if __name__ == "__main__":
    main()
