"""Segment with a SegLLaVA checkpoint: the answer text, a mask PNG and an overlay PNG per `[SEG]`.

    python chat.py --version runs/<exp> --image_path img.jpg --prompt "Where is the red object? Please output segmentation mask."
    python chat.py --version runs/<exp>            # interactive, as LISA's chat.py: asks for prompt and image

`--version` is an adapter or a merged directory. A prompt without `<image>` gets it in front; files go to
`--vis_save_path` as `<image stem>_mask_<k>.png` (0/255) and `<image stem>_masked_img_<k>.png` (red overlay).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segllava.inference import generate_masks, overlay
from segllava.masks import open_rgb
from segllava.model import BITS_HELP, DTYPE_CHOICES, DTYPE_HELP, DTYPES, SegLLaVA, inference_dtype


def chat_once(
    seg: SegLLaVA, image_path: str, prompt: str, vis_save_path: Path, max_new_tokens: int
) -> list[Path]:
    """Answer one prompt about one image; write and return the mask and overlay files."""
    image = open_rgb(image_path)
    result = generate_masks(seg, seg.processor, [image], [prompt], max_new_tokens=max_new_tokens)[0]
    print(f"text output: {result.text}")
    vis_save_path.mkdir(parents=True, exist_ok=True)
    written = []
    stem = Path(image_path).stem
    for k, mask in enumerate(result.masks):
        mask_file = vis_save_path / f"{stem}_mask_{k}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
        overlay_file = vis_save_path / f"{stem}_masked_img_{k}.png"
        overlay(image, mask).save(overlay_file)
        written += [mask_file, overlay_file]
        print(f"{mask_file} and {overlay_file} saved ({int(mask.sum())} mask pixels)")
    if not result.masks:
        print("no [SEG] in the answer: no mask")
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", required=True, help="SegLLaVA checkpoint (adapter or merged directory)")
    p.add_argument("--image_path", default=None)
    p.add_argument("--prompt", default=None)
    p.add_argument("--vis_save_path", default="./vis_output")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument("--precision", default=None, choices=sorted(DTYPES), help="LISA's name for --dtype")
    p.add_argument("--bits", type=int, choices=(4, 8, 16), default=16, help=BITS_HELP)
    p.add_argument("--load_in_4bit", action="store_true", help="LISA's name for --bits 4")
    p.add_argument("--load_in_8bit", action="store_true", help="LISA's name for --bits 8")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max_new_tokens", type=int, default=64)
    args = p.parse_args(argv)
    bits = 4 if args.load_in_4bit else 8 if args.load_in_8bit else args.bits
    dtype = inference_dtype(args.precision or args.dtype, args.device)
    seg = SegLLaVA.from_pretrained(args.version, dtype=dtype, device=args.device, bits=bits)
    if args.image_path and args.prompt:
        chat_once(seg, args.image_path, args.prompt, Path(args.vis_save_path), args.max_new_tokens)
        return
    while True:
        try:
            prompt = input("Please input your prompt: ")
            image_path = input("Please input the image path: ")
        except EOFError:
            return
        if not Path(image_path).is_file():
            print(f"file not found: {image_path}")
            continue
        chat_once(seg, image_path, prompt, Path(args.vis_save_path), args.max_new_tokens)


if __name__ == "__main__":
    main()
