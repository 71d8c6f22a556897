"""Released LLaVA-1.5 and Chain-of-Spot weights -> llava-hf directories (and their LoRA runs -> our adapters).

    python -m roillava.convert --from llava --in llava-v1.5-7b --out llava-v1.5-7b-hf \\
        [--vision-tower clip-vit-large-patch14-336]
    python -m roillava.convert --from cos --in CoS-llava-v1.5-7b --out cos-7b-hf --vision-tower CLIP_DIR
    python -m roillava.convert --from llava-lora --in llava-v1.5-7b-lora --out roi-adapter --base llava-v1.5-7b-hf

`--in` is the original checkpoint directory (`config.json`, sharded `pytorch_model-*.bin` or `*.safetensors`
with their index, `tokenizer.model`); the vision tower is not in it, so it is read from `--vision-tower`
(default: the config's `mm_vision_tower`, which must then be a local directory or a cached hub id). The output is
a llava-hf directory that `roillava.answer`, `roillava.roi_answer`, `eval/` and `fast` take as `--model-path` /
`--base`: same geometry (tower, layer, `image_aspect_ratio` in the processor), same token ids, `<image>` added.

`cos` also writes `roi_config.json` (the two-stage answerer's settings): Chain-of-Spot's evaluation asks "what is
the region of interest", so the converted model is asked that way. `llava-lora` / `cos-lora` take a LoRA run of
the original code (peft `adapter_model.bin`, `adapter_config.json`, `non_lora_trainables.bin` with
`base_model.model.` prefixes) and write our adapter on `--base` (the converted base model).

    python -m roillava.convert --from adapter --in runs/roi --out roi-merged [--base BASE]

`adapter` goes the other way: one of our adapters (System-1 LoRA or the ROI adapter) merged into its base, written
as a standalone llava-hf directory (with the adapter's run config, so the ROI wording stays).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from eval.original_checkpoint import (
    CONVERSION_FILE,
    CheckpointError,
    convert_llava_directory,
    mlp_projector_adapter_state,
    read_config,
    read_original_lora,
    write_conversion_record,
    write_lora_adapter,
)

from .roi import RoiConfig
from .wording import ROI_CONFIG_FILE, ROI_WORDING_KEY, TRAIN_CONFIG_FILE

FAMILIES = ("llava", "cos", "llava-lora", "cos-lora", "adapter")
RUN_CONFIG_FILES = (TRAIN_CONFIG_FILE, ROI_CONFIG_FILE)
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def write_roi_config(out: str | Path) -> None:
    """Chain-of-Spot's evaluation settings for the converted model (its stage-1 question says "what", its box is
    decoded freely): in `roi_config.json`, and as `roi_wording` in `config.json` where the answerers look for a
    recorded wording."""
    out = Path(out)
    (out / ROI_CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(RoiConfig(wording="what", constrained_box=False)), indent=1)
    )
    config_file = out / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config[ROI_WORDING_KEY] = "what"
        config_file.write_text(json.dumps(config, indent=2))


def recorded_aspect_ratio(directory: str | Path, default: str = "pad") -> str:
    """The `image_aspect_ratio` a converted checkpoint recorded (`conversion.json`); `default` otherwise."""
    record = Path(directory) / CONVERSION_FILE
    if record.is_file():
        return json.loads(record.read_text()).get("image_aspect_ratio", default)
    return default


def convert_full(
    src: str | Path, out: str | Path, *, family: str, vision_tower: str | None, dtype: str
) -> Path:
    """LLaVA-1.5 or Chain-of-Spot full checkpoint -> llava-hf directory."""
    name = {"llava": "LLaVA-1.5", "cos": "Chain-of-Spot"}[family]
    if read_config(src).get("mm_use_im_start_end"):
        raise CheckpointError(
            f"{Path(src) / 'config.json'}: mm_use_im_start_end is true; our LLaVA prompts do not wrap images in "
            "<im_start>/<im_end> (LISA's checkpoints do: convert those with segllava.convert --from lisa)"
        )
    convert_llava_directory(src, out, family=name, vision_tower=vision_tower, dtype=dtype)
    if family == "cos":
        write_roi_config(out)
    return Path(out)


def convert_lora(src: str | Path, out: str | Path, *, family: str, base: str, dtype: str) -> Path:
    """A LoRA run of the original LLaVA / Chain-of-Spot code -> our peft adapter on the converted `base`."""
    src, out, base_dir = Path(src), Path(out), Path(base)
    lora = read_original_lora(src)
    state = dict(lora.state)
    modules_to_save = None
    projector = {k.removeprefix("model.mm_projector."): v for k, v in lora.non_lora.items()}
    foreign = [k for k in lora.non_lora if not k.startswith("model.mm_projector.")]
    if foreign:
        raise CheckpointError(
            f"{src / 'non_lora_trainables.bin'}: unexpected key {foreign[0]!r} (a LLaVA LoRA run trains only "
            "LoRA and the mm_projector)"
        )
    if projector:
        state |= mlp_projector_adapter_state(projector, str(src / "non_lora_trainables.bin"))
        modules_to_save = ["multi_modal_projector"]
    weights_dtype = next(iter(lora.state.values())).dtype
    write_lora_adapter(
        out,
        lora,
        state,
        base=str(base),
        modules_to_save=modules_to_save,
        dtype=weights_dtype if dtype == "auto" else getattr(torch, dtype),
    )
    for name in PROCESSOR_FILES:  # the base's tokenizer and processor: the adapter answers with them
        if (base_dir / name).is_file():
            shutil.copy(base_dir / name, out / name)
    if family == "cos-lora":
        write_roi_config(out)
    write_conversion_record(out, {"from": family, "source": str(src), "base": str(base)})
    return out


def export_adapter(src: str | Path, out: str | Path, *, base: str | None, dtype: str) -> Path:
    """One of our LoRA adapters (System 1 or ROI) merged into its base: a standalone llava-hf directory."""
    from .answer import load_for_inference

    src, out = Path(src), Path(out)
    if not (src / "adapter_config.json").is_file():
        raise CheckpointError(f"{src / 'adapter_config.json'}: missing (not one of our LoRA adapters)")
    model, processor = load_for_inference(
        str(src), base, dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype)
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for name in RUN_CONFIG_FILES:  # the ROI wording and template the adapter was trained or converted with
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    write_conversion_record(out, {"from": "adapter", "source": str(src), "base": base})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="family", required=True, choices=FAMILIES)
    p.add_argument("--in", dest="src", required=True, help="the original checkpoint directory")
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument(
        "--vision-tower", default=None, help="CLIP directory (default: the config's mm_vision_tower)"
    )
    p.add_argument(
        "--base",
        default=None,
        help="*-lora: the converted llava-hf base; adapter: its base (default: recorded)",
    )
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"))
    args = p.parse_args(argv)
    try:
        if args.family == "adapter":
            out = export_adapter(args.src, args.out, base=args.base, dtype=args.dtype)
        elif args.family.endswith("-lora"):
            if not args.base:
                raise CheckpointError(f"--from {args.family} needs --base (the converted llava-hf base)")
            out = convert_lora(args.src, args.out, family=args.family, base=args.base, dtype=args.dtype)
        else:
            out = convert_full(
                args.src, args.out, family=args.family, vision_tower=args.vision_tower, dtype=args.dtype
            )
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"converted {args.family} checkpoint written to {out}")


if __name__ == "__main__":
    main()
