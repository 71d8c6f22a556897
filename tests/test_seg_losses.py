"""LISA mask losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from segllava.losses import SegLossWeights, dice_loss, seg_mask_loss, sigmoid_ce_loss

LN3 = math.log(3.0)

# Mask P (2×2): logits [[0, ln3], [-ln3, 0]] -> p = sigmoid = [[.5, .75], [.25, .5]]; targets [[1, 1], [0, 0]].
#   BCE per pixel: -ln .5, -ln .75, -ln(1-.25), -ln(1-.5) = ln2, ln(4/3), ln(4/3), ln2
#   mean = (2·ln2 + 2·ln(4/3)) / 4 = ln(8/3) / 2
#   Dice: Σp·t = .5 + .75 = 1.25, Σp = 2, Σt = 2
#   1 − (2·1.25/1000 + 1e-6) / (2/1000 + 2/1000 + 1e-6) = 1 − .002501/.004001 = .0015/.004001
P_LOGITS = torch.tensor([[[0.0, LN3], [-LN3, 0.0]]])
P_TARGET = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
P_BCE = math.log(8 / 3) / 2
P_DICE = 0.0015 / 0.004001

# Mask A (3×3): logits all 0 -> p = .5 everywhere; targets = identity (3 ones).
#   BCE: every pixel −ln .5 = ln2, so the mean is ln2.
#   Dice: Σp·t = 1.5, Σp = 4.5, Σt = 3: 1 − (3/1000 + 1e-6)/(7.5/1000 + 1e-6) = .0045/.007501
A_LOGITS = torch.zeros(3, 3)
A_TARGET = torch.eye(3)
A_BCE = math.log(2)
A_DICE = 0.0045 / 0.007501

# Mask B (3×3): targets have 4 ones (top-left 2×2); logits +ln3 on them (p=.75), −ln3 elsewhere (p=.25).
#   BCE: every pixel is −ln .75 = ln(4/3).
#   Dice: Σp·t = 4·.75 = 3, Σp = 3 + 5·.25 = 4.25, Σt = 4: 1 − (6/1000 + 1e-6)/(8.25/1000 + 1e-6) = .00225/.008251
B_TARGET = torch.zeros(3, 3)
B_TARGET[:2, :2] = 1.0
B_LOGITS = torch.where(B_TARGET.bool(), LN3, -LN3)
B_BCE = math.log(4 / 3)
B_DICE = 0.00225 / 0.008251


def _close(got: torch.Tensor, want: float) -> None:
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_single_mask_2x2() -> None:
    _close(sigmoid_ce_loss(P_LOGITS, P_TARGET), P_BCE)
    _close(dice_loss(P_LOGITS, P_TARGET), P_DICE)


def test_mask_set_is_mean_over_masks_3x3() -> None:
    logits, targets = torch.stack([A_LOGITS, B_LOGITS]), torch.stack([A_TARGET, B_TARGET])
    _close(sigmoid_ce_loss(logits, targets), (A_BCE + B_BCE) / 2)
    _close(dice_loss(logits, targets), (A_DICE + B_DICE) / 2)


def test_dice_scale_and_eps_are_parameters() -> None:
    # scale=1, eps=0 on mask P: 1 − 2·1.25/(2 + 2) = .375
    _close(dice_loss(P_LOGITS, P_TARGET, scale=1.0, eps=0.0), 0.375)
    # No positive pixels and eps=1: 1 − 1/(Σp/1000 + 1) with Σp = 2, i.e. 1 − 1/1.002
    _close(dice_loss(P_LOGITS, torch.zeros(1, 2, 2), eps=1.0), 1 - 1 / 1.002)


def test_low_precision_logits_are_upcast() -> None:
    _close(sigmoid_ce_loss(A_LOGITS[None].bfloat16(), A_TARGET[None]), A_BCE)


def test_batch_loss_weights_each_mask_equally() -> None:
    preds = [P_LOGITS.clone().requires_grad_(), torch.stack([A_LOGITS, B_LOGITS]).requires_grad_()]
    gts = [P_TARGET, torch.stack([A_TARGET, B_TARGET])]
    bce, dice = seg_mask_loss(preds, gts)
    # 3 masks in total: (P + A + B)/3, not the mean of the per-item means (P + (A + B)/2)/2.
    _close(bce, (P_BCE + A_BCE + B_BCE) / 3)
    _close(dice, (P_DICE + A_DICE + B_DICE) / 3)
    (bce + dice).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds)


def test_items_without_masks_do_not_count() -> None:
    preds = [torch.zeros(0, 3, 3), P_LOGITS]
    bce, dice = seg_mask_loss(preds, [torch.zeros(0, 3, 3), P_TARGET])
    _close(bce, P_BCE)
    _close(dice, P_DICE)


def test_no_masks_gives_zeros_that_keep_the_graph() -> None:
    pred = torch.zeros(0, 2, 2, requires_grad=True)
    bce, dice = seg_mask_loss([pred], [torch.zeros(0, 2, 2)])
    assert bce.item() == 0.0 and dice.item() == 0.0
    assert bce.requires_grad and dice.requires_grad
    (bce + dice).backward()
    assert pred.grad is not None and pred.grad.shape == (0, 2, 2)
    bce, dice = seg_mask_loss([], [])
    assert bce.item() == 0.0 and dice.item() == 0.0


def test_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        sigmoid_ce_loss(P_LOGITS, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="1 predicted vs 2"):
        seg_mask_loss([P_LOGITS], [P_TARGET, P_TARGET])


def test_loss_weights_defaults() -> None:
    w = SegLossWeights()
    assert (w.ce, w.bce, w.dice) == (1.0, 2.0, 0.5)
    total = w.combine(torch.tensor(1.0), torch.tensor(0.25), torch.tensor(0.5))
    assert total.item() == pytest.approx(1.0 + 2.0 * 0.25 + 0.5 * 0.5)
