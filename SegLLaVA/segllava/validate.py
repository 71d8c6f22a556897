"""gIoU / cIoU on a validation split, as LISA computes them (`eval/metrics.py`).

Two modes: "teacher" feeds LISA's validation answer `"[SEG]."` (LISA's only mode); "generate" decodes the
answer greedily and uses the first `[SEG]` it emits (none: an empty mask). A prediction is the mask logit
> 0 at the original image size; gt pixels labelled 255 are ignored. Besides the split's gIoU/cIoU, gIoU is
reported per query kind (`short` / `long`, LISA's test subsets) and per target size when the annotation
records one (`target_size` in the toy world). Raw generations and per-item IoUs can be written as JSONL.

    python -m segllava.validate --model runs/exp --dataset_dir ./dataset --val_dataset "ReasonSeg|val" \
        --mode both --out results.json [--predictions preds.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.metrics import intersection_union, seg_giou_ciou

from .conversation import VAL_ANSWER
from .inference import generate_masks, teacher_forced_masks
from .masks import open_rgb
from .model import BITS_HELP, DTYPE_CHOICES, DTYPE_HELP, SegLLaVA, inference_dtype
from .sources import ValItem, val_gt_mask, val_items

MODES = ("teacher", "generate")


def _batched(items: Sequence, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def split_metrics(preds: list[np.ndarray], gts: list[np.ndarray], metas: list[dict]) -> dict:
    """gIoU/cIoU of the split, and gIoU per query kind and per target size where known."""
    giou, ciou = seg_giou_ciou(preds, gts)
    out = {"giou": giou, "ciou": ciou, "n": len(preds)}
    for key, prefix in (("query", "giou_"), ("target_size", "giou_")):
        for value in sorted({m[key] for m in metas if key in m}):
            idx = [i for i, m in enumerate(metas) if m.get(key) == value]
            out[f"{prefix}{value}"] = seg_giou_ciou([preds[i] for i in idx], [gts[i] for i in idx])[0]
    return out


@torch.inference_mode()
def evaluate(
    seg: SegLLaVA,
    processor,
    items: Sequence[ValItem],
    *,
    mode: str = "teacher",
    batch_size: int = 8,
    max_new_tokens: int = 32,
    predictions: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of `seg` on `items` in one mode (a progress bar per item); optionally write one JSON line per item."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    preds, gts, metas, rows = [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"seg validation ({mode})", unit="item", disable=not progress)
    for batch in _batched(items, batch_size):
        images = [open_rgb(it.image_path) for it in batch]
        questions = [it.question for it in batch]
        if mode == "teacher":
            logits = teacher_forced_masks(seg, processor, images, questions, VAL_ANSWER)
            masks = [(m[0] > 0).cpu().numpy() if m else None for m in logits]
            texts = [VAL_ANSWER] * len(batch)
        else:
            results = generate_masks(seg, processor, images, questions, max_new_tokens=max_new_tokens)
            masks = [r.mask for r in results]
            texts = [r.text for r in results]
        for it, image, mask, text in zip(batch, images, masks, texts):
            gt = val_gt_mask(it, image.size[1], image.size[0])
            pred = np.zeros(gt.shape, np.uint8) if mask is None else mask.astype(np.uint8)
            preds.append(pred)
            gts.append(gt)
            metas.append(it.meta)
            inter, union = intersection_union(pred, gt)
            rows.append(
                {"image": it.image_path, "question": it.question, "text": text, "has_seg": mask is not None,
                 "intersection": inter, "union": union, **it.meta}
            )  # fmt: skip
        bar.update(len(batch))
    bar.close()
    metrics = split_metrics(preds, gts, metas)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics["no_seg"] = sum(not r["has_seg"] for r in rows)
    if predictions is not None:
        Path(predictions).parent.mkdir(parents=True, exist_ok=True)
        Path(predictions).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return metrics


def evaluate_modes(seg, processor, items, modes: Sequence[str], **kwargs) -> dict:
    """Metrics of each mode; keys of the "generate" mode get a `_generated` suffix."""
    out: dict = {}
    predictions = kwargs.pop("predictions", None)  # written for the last mode
    for mode in modes:
        m = evaluate(
            seg, processor, items, mode=mode, predictions=predictions if mode == modes[-1] else None, **kwargs
        )
        out.update(m if mode == "teacher" else {f"{k}_generated": v for k, v in m.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a SegLLaVA checkpoint: adapter dir or merged dir")
    p.add_argument("--dataset_dir", default="./dataset")
    p.add_argument("--val_dataset", default="ReasonSeg|val")
    p.add_argument("--mode", default="both", choices=[*MODES, "both"])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N items (0: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument(
        "--precision", default=None, choices=["fp32", "bf16", "fp16"], help="LISA's name for --dtype"
    )
    p.add_argument("--bits", type=int, choices=(4, 8, 16), default=16, help=BITS_HELP)
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    p.add_argument("--predictions", default=None, help="write per-item JSONL (raw text, I, U) here")
    args = p.parse_args(argv)
    from eval.checks import InputError, check_checkpoint, check_dir, fail

    try:  # every input before the model loads: one line naming the bad one
        check_checkpoint(args.model, "--model", check_base=False)
        check_dir(args.dataset_dir, "--dataset_dir")
        items = val_items(Path(args.dataset_dir), args.val_dataset)
    except (InputError, ValueError, OSError) as e:
        raise fail(e) from None
    dtype = inference_dtype(args.precision or args.dtype, args.device)
    seg = SegLLaVA.from_pretrained(args.model, dtype=dtype, device=args.device, bits=args.bits)
    if args.limit:
        items = items[: args.limit]
    modes = list(MODES) if args.mode == "both" else [args.mode]
    metrics = evaluate_modes(
        seg, seg.processor, items, modes, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        predictions=args.predictions,
    )  # fmt: skip
    metrics = {"val_dataset": args.val_dataset, "model": str(args.model), **metrics}
    print(json.dumps(metrics, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
