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

import torch

from segllava.convert import merge_and_save

__all__ = ["merge_and_save"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
