"""Fold a SegLLaVA LoRA adapter into its base and save an HF-format model (LISA's script name).

    python merge_lora_weights_and_save_hf_model.py --weight runs/<exp> --save_path ./SegLLaVA-7B [--version BASE]

`--weight` is a training output or `checkpoint-*` directory (peft adapter + `seg_heads.safetensors` +
`segllava_config.json`); `--version` overrides the recorded base. The result is a llava-hf directory
(`LlavaForConditionalGeneration.from_pretrained` loads it; LoRA and any trained token rows merged), its processor,
the whole SAM with the trained mask decoder in `sam/` (a `SamModel` directory), `text_hidden_fcs` in
`seg_heads.safetensors` and a `segllava_config.json` saying `"weights": "full"`; `SegLLaVA.from_pretrained` and
`validate.py` take it like the adapter.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from segllava.model import HEADS_FILE, SAM_SUBDIR, TEXT_HIDDEN_FCS, SegLLaVA

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weight", required=True, help="adapter directory (training output or checkpoint-*)")
    p.add_argument("--save_path", required=True)
    p.add_argument("--version", default=None, help="base model (default: the one recorded with the adapter)")
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    args = p.parse_args()
    out = merge_and_save(args.weight, args.save_path, args.version, DTYPES[args.precision])
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
