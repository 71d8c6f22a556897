"""Released LISA weights and Meta's SAM checkpoints -> SegLLaVA checkpoints.

    python -m segllava.convert --from lisa --in LISA-7B-v1 --out lisa-7b-seg [--vision-tower clip-vit-large-patch14]
    python -m segllava.convert --from sam --in sam_vit_h_4b8939.pth --out sam-vit-h

`lisa`: LISA's merged model (`xinlai/LISA-7B-v1`: LLaMA with `[SEG]`, `<im_start>`, `<im_end>` in its
vocabulary, a linear `model.mm_projector`, `model.text_hidden_fcs`, SAM ViT-H under `model.visual_model`, CLIP
ViT-L/14 at 224 by its config) becomes a "full" SegLLaVA checkpoint: a llava-hf model whose projector computes
the linear layer exactly, `<image>` added after the original ids (so `[SEG]` keeps its id), SAM as a `SamModel`
directory in `sam/`, `text_hidden_fcs` in `seg_heads.safetensors` and `segllava_config.json` with LISA's
`mm_use_im_start_end` and `image_aspect_ratio` (LISA: `square`, plain CLIP resize + centre crop).
`SegLLaVA.from_pretrained`, `python -m segllava.validate`, `chat.py`, `eval/` and `fast` take it.

`sam`: Meta's `sam_vit_{b,l,h}_*.pth` (or SAM inside a LISA checkpoint file) becomes a transformers `SamModel`
directory, for `--vision_pretrained`. Sizes other than vit_b/l/h need `--sam-config` (a SamConfig JSON).

    python -m segllava.convert --from adapter --in runs/seg --out seg-merged [--base BASE]

`adapter` goes the other way: our seg adapter merged into its base (`merge_lora_weights_and_save_hf_model.py`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SamConfig

from eval.original_checkpoint import CheckpointError, aspect_ratio_of, convert_llava_directory, read_config

from .conversation import IM_END, IM_START, SEG_TOKEN
from .model import HEADS_FILE, SAM_SUBDIR, TEXT_HIDDEN_FCS, SegConfig, SegLLaVA
from .sam_checkpoint import load_sam, sam_from_meta_state

FAMILIES = ("lisa", "sam", "adapter")
LISA_FCS_PREFIX = "model.text_hidden_fcs."
LISA_SAM_PREFIX = "model.visual_model."
FCS_KEYS = {"0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias"}


def text_hidden_fcs_state(fcs: dict, source: str) -> dict:
    """LISA's `model.text_hidden_fcs.*` (keys after the prefix) as `seg_heads.safetensors` keys."""
    if set(fcs) != FCS_KEYS:
        raise CheckpointError(
            f"{source}: text_hidden_fcs keys {sorted(fcs)} are not LISA's (0.0 / 0.2 weight and bias)"
        )
    return {f"{TEXT_HIDDEN_FCS}.{k}": v.contiguous() for k, v in fcs.items()}


def convert_lisa(
    src: str | Path, out: str | Path, *, vision_tower: str | None, dtype: str, sam_config: str | None
) -> Path:
    """LISA's merged model -> a "full" SegLLaVA checkpoint."""
    src, out = Path(src), Path(out)
    config = read_config(src)
    use_start_end = bool(config.get("mm_use_im_start_end", True))
    model, processor, original = convert_llava_directory(
        src,
        out,
        family="LISA",
        vision_tower=vision_tower or config.get("mm_vision_tower") or config.get("vision_tower"),
        dtype=dtype,
        extra_prefixes=(LISA_FCS_PREFIX, LISA_SAM_PREFIX),
    )
    vocab = processor.tokenizer.get_vocab()
    for token in [SEG_TOKEN] + ([IM_START, IM_END] if use_start_end else []):
        if token not in vocab:
            raise CheckpointError(f"{src}: the tokenizer has no {token} token, which LISA's model needs")
    try:
        sam = sam_from_meta_state(
            original.extras[LISA_SAM_PREFIX],
            SamConfig.from_json_file(sam_config) if sam_config else None,
            source=f"{src} ({LISA_SAM_PREFIX}*)",
        )
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    sam.to(model.dtype).save_pretrained(out / SAM_SUBDIR)
    heads = text_hidden_fcs_state(original.extras[LISA_FCS_PREFIX], str(src))
    save_file({k: v.to(model.dtype) for k, v in heads.items()}, str(out / HEADS_FILE))
    SegConfig(
        base_model=".",
        vision_pretrained=SAM_SUBDIR,
        out_dim=heads[f"{TEXT_HIDDEN_FCS}.0.2.weight"].shape[0],
        use_mm_start_end=use_start_end,
        image_aspect_ratio=aspect_ratio_of(config),
        sam_trained=[],
        weights="full",
    ).save(out)
    return out


def convert_sam(src: str | Path, out: str | Path, *, sam_config: str | None) -> Path:
    """Meta's SAM `.pth` (or a LISA file's `visual_model`) -> a transformers SamModel directory."""
    try:
        sam = load_sam(str(src), SamConfig.from_json_file(sam_config) if sam_config else None)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a torch reader failure on a truncated file
        raise CheckpointError(f"{src}: cannot read it ({type(e).__name__}: {str(e)[:200]})") from None
    sam.save_pretrained(out)
    return Path(out)


def merge_and_save(
    weight: str | Path, save_path: str | Path, version: str | None = None, dtype=torch.float32
) -> Path:
    """Load the adapter on its base, merge, and write the full checkpoint; returns `save_path`."""
    out = Path(save_path)
    out.mkdir(parents=True, exist_ok=True)
    llava = None
    if version is not None:
        from transformers import LlavaForConditionalGeneration

        llava = LlavaForConditionalGeneration.from_pretrained(version, dtype=dtype)
    seg = SegLLaVA.from_pretrained(weight, llava=llava, merge=True, dtype=dtype)
    if seg.core is not seg.llava:  # a shared base keeps the adapter unmerged; merge it here
        seg.llava = seg.llava.merge_and_unload()
    seg.llava.save_pretrained(out)
    seg.processor.save_pretrained(out)
    seg.visual_model.save_pretrained(out / SAM_SUBDIR)
    heads = {
        f"{TEXT_HIDDEN_FCS}.{k}": v.detach().cpu().contiguous()
        for k, v in seg.text_hidden_fcs.state_dict().items()
    }
    save_file(heads, str(out / HEADS_FILE))
    replace(
        seg.seg_config, base_model=".", vision_pretrained=SAM_SUBDIR, sam_trained=[], weights="full"
    ).save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="family", required=True, choices=FAMILIES)
    p.add_argument(
        "--in", dest="src", required=True, help="lisa: the checkpoint directory; sam: the .pth file"
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--vision-tower", default=None, help="lisa: CLIP directory (default: the config's vision tower)"
    )
    p.add_argument("--base", default=None, help="adapter: its base (default: the one recorded with it)")
    p.add_argument("--sam-config", default=None, help="a SamConfig JSON for SAM sizes other than vit_b/l/h")
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"))
    args = p.parse_args(argv)
    try:
        if args.family == "adapter":
            out = merge_and_save(
                args.src,
                args.out,
                args.base,
                torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype),
            )
        elif args.family == "lisa":
            out = convert_lisa(
                args.src,
                args.out,
                vision_tower=args.vision_tower,
                dtype=args.dtype,
                sam_config=args.sam_config,
            )
        else:
            out = convert_sam(args.src, args.out, sam_config=args.sam_config)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"converted {args.family} checkpoint written to {out}")


if __name__ == "__main__":
    main()
