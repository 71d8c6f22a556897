"""LISA's mask losses: per-mask BCE and scaled Dice, averaged over every mask in the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SegLossWeights:
    """LISA's defaults: ``loss = ce·CE + bce·BCE + dice·Dice``."""

    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5

    def combine(self, ce: torch.Tensor, bce: torch.Tensor, dice: torch.Tensor) -> torch.Tensor:
        return self.ce * ce + self.bce * bce + self.dice * dice


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape or logits.ndim < 2:
        raise ValueError(
            f"need logits/targets of equal shape [num_masks, ...], got {logits.shape} / {targets.shape}"
        )


def _per_mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[M, ...] -> [M]: mean over pixels. Computed in float32: bf16 BCE over ~10^6 pixels is too coarse."""
    _check(logits, targets)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(1)


def _per_mask_dice(logits: torch.Tensor, targets: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
    """[M, ...] -> [M]. The ``/scale`` only changes the result via eps's relative weight; kept to match LISA."""
    _check(logits, targets)
    p = logits.float().sigmoid().flatten(1) / scale
    t = targets.float().flatten(1)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) / scale + eps)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, mean over each mask's pixels, then mean over the masks of ``[M, H, W]`` inputs."""
    return _per_mask_bce(logits, targets).mean()


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6
) -> torch.Tensor:
    """``1 − (2Σ(p/scale·t) + eps)/(Σp/scale + Σt/scale + eps)`` per mask (p = sigmoid), mean over masks."""
    return _per_mask_dice(logits, targets, scale, eps).mean()


def seg_mask_loss(
    pred_masks: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bce, dice) over all masks of a batch, each mask weighted equally (sum of per-mask losses / #masks).

    Items are ``[M_i, H_i, W_i]`` logits / targets at the item's own resolution; items may have no masks
    (VQA samples). With no mask at all both losses are zeros that still depend on the logits, so every rank
    runs the same backward graph (DeepSpeed/ZeRO hangs otherwise).
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predicted vs {len(gt_masks)} ground-truth mask sets")
    bce = [_per_mask_bce(p, t) for p, t in zip(pred_masks, gt_masks)]
    dice = [_per_mask_dice(p, t, 1000.0, 1e-6) for p, t in zip(pred_masks, gt_masks)]
    num_masks = sum(b.numel() for b in bce)
    if num_masks == 0:
        zero = torch.zeros((), device=pred_masks[0].device if pred_masks else None)
        for p in pred_masks:
            zero = zero + p.float().sum() * 0.0
        return zero, zero.clone()
    return torch.cat(bce).sum() / num_masks, torch.cat(dice).sum() / num_masks
