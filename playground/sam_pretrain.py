"""A stand-in for SAM pretraining: a promptable tiny SAM for the toy world.

LISA starts from Meta's SAM, pretrained on SA-1B to segment whatever a point or a box prompts; the
segmentation adapter then only teaches the mask decoder a new prompt (the `[SEG]` embedding). A tiny SAM
trained from scratch inside the adapter does not learn to see in minutes on a CPU (a random 256-px SAM
reached gIoU 0.09 after 100 steps on the toy ReasonSeg split), so this script first trains one on promptable
segmentation of toy-world objects: the coloured target and every grey clutter item, each prompted by a
jittered box or by foreground/background points, never by text. The result is an HF `SamModel` directory
(`playground/tiny_sam/`, committed like `tiny_tower/`, 1.1 MB) that `--vision_pretrained` accepts.

    python -m playground.sam_pretrain --out playground/tiny_sam [--device cuda --workers 14] [--minutes 10]

Its input size (512 px, 16-px patches, 32x32 embeddings, 128x128 masks) is chosen for the toy world's
small targets (20-30 px on a 448-px canvas), which a 64x64 mask grid outlines poorly. The committed weights are
the default recipe's 2,500 steps, run on an H100 in 166 s (`pretrain_metrics.json`: low-res mIoU 0.33 for
box and 0.29 for point prompts over all objects, thin clutter strokes included). On a 2-core CPU a step
takes about 0.65 s, so the default 10-minute cap stops near 950 steps.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from transformers import SamConfig, SamModel

from segllava.sam_io import sam_preprocess

from .toyworld import make_scene

MIN_CLUTTER_AREA = 40  # px: smaller connected clutter fragments are not prompted


@dataclass(frozen=True)
class TinySamConfig:
    """Sizes and recipe; saved next to the weights as `pretrain_config.json`."""

    image_size: int = 512
    patch_size: int = 16
    hidden: int = 64
    layers: int = 3
    heads: int = 2
    window: int = 8
    out_channels: int = 32
    decoder_hidden: int = 32
    batch: int = 8
    prompts_per_image: int = 3
    lr: float = 2e-3
    minutes: float = 10.0
    max_steps: int = 2500
    log_every: int = 50
    seed: int = 0


def sam_config(cfg: TinySamConfig) -> SamConfig:
    return SamConfig(
        vision_config={
            "hidden_size": cfg.hidden,
            "output_channels": cfg.out_channels,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "window_size": cfg.window,
            # Windowed attention only: a global layer over 32x32 patches costs more than all the rest on a
            # CPU, and the mask decoder attends over the whole image anyway.
            "global_attn_indexes": [],
            "mlp_dim": 2 * cfg.hidden,
            "num_pos_feats": cfg.out_channels // 2,
            "mlp_ratio": 2.0,
        },
        prompt_encoder_config={
            "hidden_size": cfg.out_channels,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": cfg.decoder_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 2 * cfg.decoder_hidden,
            "iou_head_hidden_dim": cfg.decoder_hidden,
        },
    )


def instance_masks(scene) -> list[np.ndarray]:
    """The target, then each connected clutter item (overlapping items count as one object)."""
    masks = [scene.mask.astype(bool)]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(scene.clutter_mask, connectivity=8)
    masks += [labels == k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= MIN_CLUTTER_AREA]
    return masks


class PromptedScenes(Dataset):
    """Scene `i` (seeded by split and index) with `k` prompted objects: box or points, and the mask."""

    def __init__(self, split: str, length: int, cfg: TinySamConfig):
        self.split, self.length, self.cfg = split, length, cfg

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        cfg = self.cfg
        rng = random.Random(f"sam-{self.split}-{cfg.seed}-{index}")
        scene = make_scene(rng)
        sam_image = sam_preprocess(scene.image, cfg.image_size)
        scale = sam_image.resized_size[0] / scene.mask.shape[0]
        masks = instance_masks(scene)
        # Half the prompts go to the target, whose size and colour vary most.
        picks = [0 if rng.random() < 0.5 or len(masks) == 1 else rng.randrange(1, len(masks))]
        picks += [rng.randrange(len(masks)) for _ in range(cfg.prompts_per_image - 1)]
        low = 4 * cfg.image_size // cfg.patch_size
        points, labels, boxes, targets = [], [], [], []
        for k in picks:
            m = masks[k]
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            w, h = x1 - x0, y1 - y0
            jit = [rng.gauss(0, 0.1) * s for s in (w, h, w, h)]
            boxes.append(
                [(x0 + jit[0]) * scale, (y0 + jit[1]) * scale, (x1 + jit[2]) * scale, (y1 + jit[3]) * scale]
            )
            fg = [(xs[j], ys[j]) for j in (rng.randrange(len(xs)) for _ in range(2))]
            bys, bxs = np.nonzero(~m)
            bg = bxs[j := rng.randrange(len(bxs))], bys[j]
            n_fg = rng.choice((1, 1, 2))
            pts = fg[:n_fg] + [bg]
            lab = [1] * n_fg + [0 if rng.random() < 0.5 else -10]
            pts += [(0, 0)] * (3 - len(pts))
            lab += [-10] * (3 - len(lab))
            points.append([[(x + 0.5) * scale, (y + 0.5) * scale] for x, y in pts])
            labels.append(lab)
            frame = np.zeros((cfg.image_size, cfg.image_size), np.float32)
            rh, rw = sam_image.resized_size
            frame[:rh, :rw] = cv2.resize(m.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
            targets.append(cv2.resize(frame, (low, low), interpolation=cv2.INTER_AREA))
        return {
            "pixel_values": sam_image.pixel_values,
            "points": torch.tensor(points, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.long),
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "targets": torch.from_numpy(np.stack(targets)),
        }


def predict(sam: SamModel, batch: dict, boxes: bool) -> torch.Tensor:
    """[B, K, h, w] low-res logits of every prompt given as its box (or as its points)."""
    embeddings = sam.vision_encoder(batch["pixel_values"]).last_hidden_state
    prompt = (
        {"input_boxes": batch["boxes"]}
        if boxes
        else {"input_points": batch["points"], "input_labels": batch["labels"]}
    )
    return sam(image_embeddings=embeddings, multimask_output=False, **prompt).pred_masks[:, :, 0]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SAM's mask loss, 20·focal + dice, per prompt: focal keeps the many easy background pixels from
    drowning the few object pixels (a plain BCE teaches "all background" first and stays there)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    focal = (alpha_t * (1 - p_t) ** 2 * bce).flatten(2).mean(-1)
    p, t = prob.flatten(2), targets.flatten(2)
    dice = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    return (20 * focal + dice).mean()


@torch.no_grad()
def evaluate(sam: SamModel, loader: DataLoader, device: str) -> dict:
    """Low-res IoU of box and point prompts on held-out scenes (prompt 0: the target half the time)."""
    sam.eval()
    inter = {"box": 0.0, "points": 0.0}
    union = {"box": 0.0, "points": 0.0}
    ious: dict[str, list[float]] = {"box": [], "points": []}
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        for kind in ("box", "points"):
            pred = predict(sam, batch, boxes=kind == "box") > 0
            gt = batch["targets"] > 0.5
            i = (pred & gt).flatten(2).sum(-1).float()
            u = (pred | gt).flatten(2).sum(-1).float()
            inter[kind] += i.sum().item()
            union[kind] += u.sum().item()
            ious[kind] += (i / u.clamp(min=1)).flatten().tolist()
    sam.train()
    return {f"miou_{k}": round(float(np.mean(v)), 3) for k, v in ious.items()} | {
        f"ciou_{k}": round(inter[k] / max(union[k], 1), 3) for k in inter
    }


def train(out: Path, cfg: TinySamConfig, *, device: str = "cpu", workers: int = 1) -> dict:
    torch.manual_seed(cfg.seed)
    sam = SamModel(sam_config(cfg))
    # transformers initialises SAM's random-Fourier position matrix with std = hidden_size / 2 (only ever
    # overwritten by a checkpoint); Meta's SAM starts it at std 1. At std 32 the encodings are so high in
    # frequency that a prompt point's code matches no image position, and the decoder learns to ignore prompts.
    with torch.no_grad():
        sam.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    sam.to(device).train()
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    loader = DataLoader(
        PromptedScenes("train", cfg.max_steps * cfg.batch, cfg),
        batch_size=cfg.batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        shuffle=False,
    )
    val = DataLoader(PromptedScenes("val", 64, cfg), batch_size=16, num_workers=workers)
    start = time.perf_counter()
    budget = cfg.minutes * 60
    step = 0
    for step, batch in enumerate(loader, 1):
        elapsed = time.perf_counter() - start
        # Cosine decay over the time budget, so a slower machine still ends at a low learning rate.
        progress = min(1.0, max(elapsed / budget, step / cfg.max_steps))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / 50) * 0.5 * (1 + np.cos(np.pi * progress))
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = loss_fn(predict(sam, batch, boxes=step % 2 == 0), batch["targets"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % cfg.log_every == 0:
            print(f"step {step} {elapsed:.0f}s loss {loss.item():.4f}", flush=True)
        if progress >= 1.0:
            break
    seconds = round(time.perf_counter() - start)
    metrics = {**evaluate(sam, val, device), "steps": step, "seconds": seconds, "device": str(device)}
    out.mkdir(parents=True, exist_ok=True)
    sam.cpu().save_pretrained(out)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("playground/tiny_sam"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="scene-generating loader processes")
    for name, default in asdict(TinySamConfig()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, dest=name)
    args = vars(p.parse_args())
    out, device, workers = args.pop("out"), args.pop("device"), args.pop("workers")
    print(json.dumps(train(out, TinySamConfig(**args), device=device, workers=workers)))


if __name__ == "__main__":
    main()
