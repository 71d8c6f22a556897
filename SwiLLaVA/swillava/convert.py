"""Released SEAL weights and the FaST switch adapter -> SwiLLaVA checkpoints.

    python -m swillava.convert --from seal --in seal_vqa_7b --out seal-vqa-7b-swi \\
        [--vision-tower clip-vit-large-patch14]
    python -m swillava.convert --from fast-release --in swi-llava-v1.5-7b-lora --out switch \\
        --base llava-v1.5-7b-hf [--perceiver llava-vicuna-v1-5-7b-resampler-pretrain/mm_projector.bin]

`seal`: SEAL's VQA LLM (`craigwu/seal_vqa_7b`: LLaMA + linear `model.mm_projector` + the perceiver
`model.mm_projector_object`, CLIP ViT-L/14 at 224 by its config) becomes a "full" SwiLLaVA checkpoint: a llava-hf
model whose projector computes the linear layer exactly (identity activation and identity second layer), SEAL's
perceiver in `mm_projector_object.safetensors`, `<object>` added to the tokenizer after the original ids, and
`swillava_config.json`. `fast-release`: a switch LoRA run of the FaST code (peft `adapter_model.bin`,
`adapter_config.json`, `non_lora_trainables.bin`) becomes our switch adapter on `--base`, the llava-hf
conversion of the LLaVA-1.5 it was trained on (`python -m roillava.convert --from llava`). That run froze both
projectors, so its `non_lora_trainables.bin` may lack the perceiver: pass the perceiver-pretrain
`mm_projector.bin` it started from as `--perceiver`.

Both load with `swillava.model.load_switch` and answer with `python -m swillava.infer`, `eval/` and `fast`.

    python -m swillava.convert --from adapter --in runs/switch --out switch-merged [--base BASE]

`adapter` goes the other way: our switch adapter merged into its base, written as a "full" SwiLLaVA checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from eval.original_checkpoint import (
    CheckpointError,
    convert_llava_directory,
    load_weights_file,
    mlp_projector_adapter_state,
    read_config,
    read_original_lora,
    write_conversion_record,
    write_lora_adapter,
)

from .model import (
    CONFIG_FILE,
    MLP_PROJECTOR,
    OBJECT_PROJECTOR,
    OBJECT_PROJECTOR_FILE,
    ObjectProjectorConfig,
    SwiConfig,
    llava_processor,
    load_switch,
)
from .resampler import object_projector_state_from_checkpoint, remap_perceiver_pretrain_keys

FAMILIES = ("seal", "fast-release", "adapter")
SEAL_OBJECT_PREFIX = "model.mm_projector_object."
SEAL_DIM_HEAD = 96  # SEAL's perceiver: 16 heads x 96


def object_projector_config(
    state: dict[str, torch.Tensor], heads: int | None = None
) -> ObjectProjectorConfig:
    """Perceiver sizes read from its weights (keys relative to `mm_projector_object.`); heads x 96 unless given."""
    depth = len({k.split(".")[2] for k in state if k.startswith("1.layers.")})
    inner, dim = state["1.layers.0.0.to_q.weight"].shape
    if heads is None:
        if inner % SEAL_DIM_HEAD:
            raise CheckpointError(
                f"the perceiver's attention width {inner} is not a multiple of {SEAL_DIM_HEAD}; pass --perceiver-heads"
            )
        heads = inner // SEAL_DIM_HEAD
    if inner % heads:
        raise CheckpointError(f"--perceiver-heads {heads} does not divide the attention width {inner}")
    return ObjectProjectorConfig(
        depth=depth,
        heads=heads,
        dim_head=inner // heads,
        num_latents=state["1.latents"].shape[0],
        ff_mult=state["1.layers.0.1.1.weight"].shape[0] // dim,
    )


def convert_seal(
    src: str | Path, out: str | Path, *, vision_tower: str | None, dtype: str, heads: int | None
) -> Path:
    """SEAL's full VQA LLM -> a "full" SwiLLaVA checkpoint."""
    out = Path(out)
    if read_config(src).get("mm_use_im_start_end"):
        raise CheckpointError(
            f"{Path(src) / 'config.json'}: mm_use_im_start_end is true; SwiLLaVA prompts do not wrap images in "
            "<im_start>/<im_end>"
        )
    model, processor, original = convert_llava_directory(
        src,
        out,
        family="SEAL",
        vision_tower=vision_tower,
        dtype=dtype,
        extra_prefixes=(SEAL_OBJECT_PREFIX,),
        extra_tokens=("<object>",),
    )
    perceiver = original.extras[SEAL_OBJECT_PREFIX]
    cfg = object_projector_config(perceiver, heads)
    target = model.dtype
    save_file(
        {SEAL_OBJECT_PREFIX + k: v.to(target).contiguous() for k, v in perceiver.items()},
        str(out / OBJECT_PROJECTOR_FILE),
    )
    SwiConfig(base_model=".", object_projector=cfg, weights="full").save(out)
    return out


def convert_fast_release(
    src: str | Path, out: str | Path, *, base: str, perceiver: str | None, dtype: str, heads: int | None
) -> Path:
    """A switch LoRA run of the FaST code -> our switch adapter on the converted LLaVA-1.5 base."""
    src, out, base_dir = Path(src), Path(out), Path(base)
    lora = read_original_lora(src)
    state = dict(lora.state)
    mlp = {
        k.removeprefix("model.mm_projector."): v
        for k, v in lora.non_lora.items()
        if k.startswith("model.mm_projector.")
    }
    objects = {k: v for k, v in lora.non_lora.items() if k.startswith(SEAL_OBJECT_PREFIX)}
    foreign = [k for k in lora.non_lora if not k.startswith(("model.mm_projector.", SEAL_OBJECT_PREFIX))]
    if foreign:
        raise CheckpointError(
            f"{src / 'non_lora_trainables.bin'}: unexpected key {foreign[0]!r} (a switch LoRA run trains only "
            "LoRA and the two projectors)"
        )
    if not objects:
        if perceiver is None:
            raise CheckpointError(
                f"{src}: non_lora_trainables.bin holds no {SEAL_OBJECT_PREFIX}* weights (the run froze the "
                "perceiver); pass --perceiver, the perceiver-pretrain mm_projector.bin it started from"
            )
        raw = load_weights_file(perceiver)
        try:
            if "model.mm_projector.1.latents" in raw and not any(SEAL_OBJECT_PREFIX in k for k in raw):
                raw = remap_perceiver_pretrain_keys(raw)
            objects = {
                SEAL_OBJECT_PREFIX + k: v for k, v in object_projector_state_from_checkpoint(raw).items()
            }
        except ValueError as e:
            raise CheckpointError(f"{perceiver}: {e}") from None
    relative = {k.removeprefix(SEAL_OBJECT_PREFIX): v for k, v in objects.items()}
    cfg = object_projector_config(relative, heads)
    state |= {f"base_model.model.{k}": v for k, v in objects.items()}
    modules_to_save = [OBJECT_PROJECTOR]
    if mlp:
        state |= mlp_projector_adapter_state(mlp, str(src / "non_lora_trainables.bin"))
        modules_to_save = [MLP_PROJECTOR, OBJECT_PROJECTOR]
    weights_dtype = next(iter(lora.state.values())).dtype
    write_lora_adapter(
        out,
        lora,
        state,
        base=str(base),
        modules_to_save=modules_to_save,
        dtype=weights_dtype if dtype == "auto" else getattr(torch, dtype),
    )
    processor = llava_processor(base_dir, "pad")
    tokenizer = processor.tokenizer
    if "<object>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<object>"]}, replace_extra_special_tokens=False
        )
    processor.save_pretrained(out)
    SwiConfig(base_model=str(base), object_projector=cfg, weights="lora").save(out)
    for name in ("conversion.json",):  # the base's record (aspect ratio, tower) stays next to the adapter
        if (base_dir / name).is_file():
            shutil.copy(base_dir / name, out / "base_conversion.json")
    write_conversion_record(out, {"from": "fast-release", "source": str(src), "base": str(base)})
    return out


def export_adapter(src: str | Path, out: str | Path, *, base: str | None, dtype: str) -> Path:
    """Our switch adapter merged into its base: a "full" SwiLLaVA checkpoint (llava-hf + object projector)."""
    src, out = Path(src), Path(out)
    if not (src / CONFIG_FILE).is_file():
        raise CheckpointError(f"{src / CONFIG_FILE}: missing (not a SwiLLaVA checkpoint)")
    swi, processor = load_switch(src, base, dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype))
    swi.swi_config = replace(swi.swi_config, base_model=".")
    swi.save_pretrained(out)
    processor.save_pretrained(out)
    write_conversion_record(out, {"from": "adapter", "source": str(src), "base": base})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="family", required=True, choices=FAMILIES)
    p.add_argument("--in", dest="src", required=True, help="the original checkpoint or LoRA run directory")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--vision-tower", default=None, help="seal: CLIP directory (default: the config's mm_vision_tower)"
    )
    p.add_argument("--base", default=None, help="fast-release: the converted llava-hf LLaVA-1.5 directory")
    p.add_argument(
        "--perceiver", default=None, help="fast-release: perceiver weights if the run did not save them"
    )
    p.add_argument(
        "--perceiver-heads", type=int, default=None, help="default: attention width / 96 (SEAL: 16)"
    )
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"))
    args = p.parse_args(argv)
    try:
        if args.family == "adapter":
            out = export_adapter(args.src, args.out, base=args.base, dtype=args.dtype)
        elif args.family == "seal":
            out = convert_seal(
                args.src,
                args.out,
                vision_tower=args.vision_tower,
                dtype=args.dtype,
                heads=args.perceiver_heads,
            )
        else:
            if not args.base:
                raise CheckpointError("--from fast-release needs --base (the converted llava-hf LLaVA-1.5)")
            out = convert_fast_release(
                args.src,
                args.out,
                base=args.base,
                perceiver=args.perceiver,
                dtype=args.dtype,
                heads=args.perceiver_heads,
            )
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"converted {args.family} checkpoint written to {out}")


if __name__ == "__main__":
    main()
