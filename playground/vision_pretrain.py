"""A stand-in for CLIP pretraining: teach the tiny vision tower what a patch shows and what the view holds.

Real LLaVA starts from a pretrained CLIP; a tower trained from scratch inside LLaVA does not
learn to see in minutes on a CPU. So the tower is first trained on dense labels over global views
and zoomed crops, then frozen:
- per patch: the target's colour and size class there, its pattern where it is big enough to be
  read, and the patch's own row and column (real CLIP features keep a patch's place too);
- in every patch, the scene: the cell of a 16 x 16 grid of the view that holds the target's
  centre, its colour, and its pattern where the view shows it large enough to read (else
  "unreadable"), as CLIP patch tokens carry scene-level information.

Why the scene heads: without them the tiny language model must first find the one patch the target
is in, which it learns slowly and unreliably. Full fine-tuning on the ROI question alone put 28%
of the small targets inside a ROI of 3/7 of the side after 300 steps; with the target's cell added
to every image token, 90% inside one of 5/16 after 200 steps. But the shared place made the
target's own patch harder to read: with the place alone in every patch, 150 steps of instruction
tuning taught System 1 the colour of 19% of large targets; with place and colour, the demo's
System 1 read the pattern of 76% of large targets; with all three, colour 100% and pattern 95%.
The result is a `CLIPVisionModel` directory that `tiny_base.py --vision-tower` drops into the
tiny LLaVA.

    python -m playground.vision_pretrain --out playground/tiny_tower --steps 2000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .tiny_base import CLIP_MEAN, CLIP_STD, TinyBaseConfig, vision_config
from .toyworld import COLORS, PATTERNS, make_scene
from .toyworld.world import ROI_CELLS, centre_cell

MIN_READABLE_SIDE = 12  # px at model resolution: below this the pattern (period side/3) is not labelled
WHERE_BINS = ROI_CELLS  # every patch learns the cell of the view that holds the target's centre
UNREADABLE = len(PATTERNS) + 1  # the scene pattern of a target too small to read in the view


@dataclass
class View:
    pixels: np.ndarray  # float32 [3, S, S], CLIP-normalised
    colour: np.ndarray  # int64 [G*G]: 0 = none, 1.. = colour
    pattern: np.ndarray  # int64 [G*G]: 0 = none, 1.. = pattern, -100 = unreadable
    size: np.ndarray  # int64 [G*G]: 0 = none, 1 = unreadable, 2 = readable
    where: np.ndarray  # int64 [2]: column and row of the target's centre cell; WHERE_BINS = absent
    scene_colour: int  # the target's colour if it is in the view, else 0
    scene_pattern: int  # its pattern if in the view and readable, UNREADABLE if too small, else 0


def _scene_arrays(index: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    scene = make_scene(random.Random(f"tower-{index}"))
    t = scene.target
    return (
        np.asarray(scene.image),
        scene.mask,
        list(COLORS).index(t.color) + 1,
        PATTERNS.index(t.pattern) + 1,
        max(t.bbox[2], t.bbox[3]),
    )


def _pad_square(arr: np.ndarray, fill) -> np.ndarray:
    h, w = arr.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, *arr.shape[2:]), dtype=arr.dtype)
    out[...] = fill
    oy, ox = (side - h) // 2, (side - w) // 2
    out[oy : oy + h, ox : ox + w] = arr
    return out


def make_view(
    scene: tuple, rng: random.Random, image_size: int, patch: int, *, global_view: bool | None = None
) -> View:
    """A global view (as LLaVA sees it) or a zoomed crop (as the ROI stage shows it), at random
    unless `global_view` says which."""
    rgb, mask, colour, pattern, obj_side = scene
    mean_rgb = tuple(int(255 * m) for m in CLIP_MEAN)
    rgb, mask = _pad_square(rgb, mean_rgb), _pad_square(mask, 0)
    side = rgb.shape[0]
    if global_view is None:
        global_view = rng.random() < 0.5
    if global_view:
        x0 = y0 = 0
        crop = side
    else:
        crop = rng.randint(max(64, obj_side + 8), side // 2)
        ys, xs = np.nonzero(mask)
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        if rng.random() < 0.15:  # a crop that may miss the target
            cx, cy = rng.uniform(0, side), rng.uniform(0, side)
        x0 = int(np.clip(cx - rng.uniform(0.2, 0.8) * crop, 0, side - crop))
        y0 = int(np.clip(cy - rng.uniform(0.2, 0.8) * crop, 0, side - crop))
    img = Image.fromarray(rgb[y0 : y0 + crop, x0 : x0 + crop]).resize((image_size, image_size), Image.BICUBIC)
    m = Image.fromarray(mask[y0 : y0 + crop, x0 : x0 + crop] * 255).resize(
        (image_size, image_size), Image.BOX
    )
    pixels = (np.asarray(img, dtype=np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    grid = image_size // patch
    cover = (
        (np.asarray(m, dtype=np.float32) / 255)
        .reshape(grid, patch, grid, patch)
        .mean(axis=(1, 3))
        .reshape(-1)
    )
    present = cover > 0.01
    readable = obj_side * image_size / crop >= MIN_READABLE_SIDE
    colour_lbl = np.where(present, colour, 0)
    pattern_lbl = np.where(present, pattern if readable else -100, 0)
    size_lbl = np.where(present, 2 if readable else 1, 0)
    where = np.full(2, WHERE_BINS, dtype=np.int64)
    ys, xs = np.nonzero(mask[y0 : y0 + crop, x0 : x0 + crop])
    if len(xs):
        centres = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
        where = np.array([centre_cell(c, crop) for c in centres], dtype=np.int64)
    return View(
        pixels.transpose(2, 0, 1).astype(np.float32),
        colour_lbl,
        pattern_lbl,
        size_lbl,
        where,
        colour if len(xs) else 0,
        (pattern if readable else UNREADABLE) if len(xs) else 0,
    )


class PatchHeads(nn.Module):
    def __init__(self, hidden: int, grid: int):
        super().__init__()
        self.colour = nn.Linear(hidden, len(COLORS) + 1)
        self.pattern = nn.Linear(hidden, len(PATTERNS) + 1)
        self.size = nn.Linear(hidden, 3)
        self.row = nn.Linear(hidden, grid)
        self.col = nn.Linear(hidden, grid)
        self.where_x = nn.Linear(hidden, WHERE_BINS + 1)
        self.where_y = nn.Linear(hidden, WHERE_BINS + 1)
        self.scene_colour = nn.Linear(hidden, len(COLORS) + 1)
        self.scene_pattern = nn.Linear(hidden, UNREADABLE + 1)

    def scene_losses(self, feats: torch.Tensor, views: list[View]) -> torch.Tensor:
        """Every patch predicts the view's answers to "where is the target", "what colour is it" and
        "what pattern is on it" (or that it cannot be read)."""
        n = feats.shape[1]
        where = torch.from_numpy(np.stack([v.where for v in views])).repeat_interleave(n, dim=0)
        colour = torch.tensor([v.scene_colour for v in views]).repeat_interleave(n)
        pattern = torch.tensor([v.scene_pattern for v in views]).repeat_interleave(n)
        flat = feats.flatten(0, 1)
        return (
            F.cross_entropy(self.where_x(flat), where[:, 0])
            + F.cross_entropy(self.where_y(flat), where[:, 1])
            + F.cross_entropy(self.scene_colour(flat), colour)
            + F.cross_entropy(self.scene_pattern(flat), pattern)
        )


def patch_rows_cols(batch: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.arange(grid * grid).expand(batch, -1)
    return index // grid, index % grid


@dataclass(frozen=True)
class TowerPretrainConfig:
    """The recipe of the committed tower; saved next to it as `pretrain_config.json`."""

    steps: int = 2000
    scenes: int = 2000
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0


@torch.no_grad()
def evaluate_tower(tower, heads: PatchHeads, *, scenes: int = 200, seed: int = 1) -> dict:
    """Patch accuracy of each head on held-out views, over the patches the target covers."""
    cfg = TinyBaseConfig()
    rng = random.Random(seed)
    bank = [_scene_arrays(10_000_000 + i) for i in range(scenes)]
    views = [make_view(scene, rng, cfg.image_size, cfg.patch_size) for scene in bank]
    feats = tower(
        pixel_values=torch.from_numpy(np.stack([v.pixels for v in views])), output_hidden_states=True
    )
    feats = feats.hidden_states[-2][:, 1:]
    result = {}
    for name in ("colour", "pattern", "size"):
        labels = torch.from_numpy(np.stack([getattr(v, name) for v in views]))
        pred = getattr(heads, name)(feats).argmax(-1)
        on_target = labels > 0
        result[f"{name}_acc_on_target"] = round((pred == labels)[on_target].float().mean().item(), 3)
    rows, cols = patch_rows_cols(feats.shape[0], cfg.image_size // cfg.patch_size)
    for name, labels in (("row", rows), ("col", cols)):
        result[f"{name}_acc"] = round(
            (getattr(heads, name)(feats).argmax(-1) == labels).float().mean().item(), 3
        )
    # "where": read off the mean patch feature, as a language model attending evenly would see it
    where = torch.from_numpy(np.stack([v.where for v in views]))
    present = where[:, 0] < WHERE_BINS
    pooled = feats.mean(1)
    for axis, head in ((0, heads.where_x), (1, heads.where_y)):
        err = (head(pooled).argmax(-1) - where[:, axis]).abs()[present]
        result[f"where_{'xy'[axis]}_within1"] = round((err <= 1).float().mean().item(), 3)
    colour = torch.tensor([v.scene_colour for v in views])
    pattern = torch.tensor([v.scene_pattern for v in views])
    for name, labels in (("colour", colour), ("pattern", pattern)):
        pred = getattr(heads, f"scene_{name}")(pooled).argmax(-1)
        result[f"scene_{name}_acc"] = round((pred == labels).float().mean().item(), 3)
    return result


def pretrain_tower(out: Path, recipe: TowerPretrainConfig) -> dict:
    from transformers import CLIPVisionModel

    cfg = TinyBaseConfig()
    steps, scenes, batch, lr, seed = recipe.steps, recipe.scenes, recipe.batch, recipe.lr, recipe.seed
    torch.manual_seed(seed)
    tower = CLIPVisionModel(vision_config(cfg))
    grid = cfg.image_size // cfg.patch_size
    heads = PatchHeads(cfg.vision_hidden, grid)
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.perf_counter()
    with Pool(2) as pool:
        bank = pool.map(_scene_arrays, range(scenes), chunksize=32)
    print(f"{scenes} scenes in {time.perf_counter() - start:.0f}s", flush=True)
    rng = random.Random(seed)
    log = {}
    for step in range(steps):
        views = [
            make_view(bank[rng.randrange(scenes)], rng, cfg.image_size, cfg.patch_size) for _ in range(batch)
        ]
        pixels = torch.from_numpy(np.stack([v.pixels for v in views]))
        feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        labels = {
            name: torch.from_numpy(np.stack([getattr(v, name) for v in views]))
            for name in ("colour", "pattern", "size")
        }
        losses = {
            "colour": F.cross_entropy(heads.colour(feats).flatten(0, 1), labels["colour"].reshape(-1)),
            # pattern only where the target is, so empty patches do not drown the signal
            "pattern": F.cross_entropy(
                heads.pattern(feats).flatten(0, 1),
                labels["pattern"].masked_fill(labels["size"] == 0, -100).reshape(-1),
            ),
            "size": F.cross_entropy(heads.size(feats).flatten(0, 1), labels["size"].reshape(-1)),
        }
        losses["scene"] = heads.scene_losses(feats, views)
        rows, cols = patch_rows_cols(batch, grid)
        losses["position"] = F.cross_entropy(
            heads.row(feats).flatten(0, 1), rows.reshape(-1)
        ) + F.cross_entropy(heads.col(feats).flatten(0, 1), cols.reshape(-1))
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log = {k: round(v.item(), 3) for k, v in losses.items()}
            print(f"step {step} {log} {time.perf_counter() - start:.0f}s", flush=True)
    tower.save_pretrained(out)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(recipe), indent=1))
    log.update(evaluate_tower(tower, heads))
    (out / "pretrain_metrics.json").write_text(json.dumps(log, indent=1))
    print(log)
    return log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("playground/tiny_tower"))
    for field in fields(TowerPretrainConfig):
        p.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    args = vars(p.parse_args())
    out = args.pop("out")
    pretrain_tower(out, TowerPretrainConfig(**args))


if __name__ == "__main__":
    main()
