"""Training losses: soft Dice + cross-entropy, partial (liver-only) labels, deep supervision.

The loss is nnU-Net's: cross-entropy plus a batch soft Dice over the foreground
channels (background left out of the Dice). Two additions:

* **Liver-only cases.** A case whose tumors were never annotated (``tumor_annotated``
  False) may hold tumors labelled as liver or as background-free liver. Teaching
  "liver" there would teach the network that tumor is liver. For such samples the
  loss is the *marginal* loss of the partial-label literature (Shi et al., "Marginal
  loss and exclusion loss for partially supervised multi-organ segmentation", MedIA
  2021): the probabilities of liver and tumor are summed into one "liver or tumor"
  class and the label's liver voxels (1 and 2) are its target. The network is then
  rewarded for calling a liver voxel either liver or tumor, and only the liver/background
  boundary is taught. Voxels labelled tumor in such a sample can only be synthetic tumors
  painted in during training (the case has no tumor labels of its own): they are known
  tumor and keep their full cross-entropy term, so synthetic tumors teach on every case.
* **Deep supervision.** A list of logits (full, 1/2, 1/4 resolution ...) is scored
  against the label downsampled by nearest neighbour, with weights halving per level
  and normalised to sum to 1.

>>> import torch
>>> loss = DiceCELoss(num_classes=3)
>>> logits = torch.zeros(2, 3, 4, 4, 4)
>>> target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
>>> round(float(loss(logits, target)), 4) > 0
True
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss", "DeepSupervisionLoss", "deep_supervision_weights", "downsample_labels"]


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... for ``levels`` outputs, normalised to sum to 1.

    >>> deep_supervision_weights(3)
    [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    if levels < 1:
        raise ValueError(f"levels must be at least 1; got {levels}")
    w = [0.5**i for i in range(levels)]
    s = sum(w)
    return [x / s for x in w]


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels (B, 1, *spatial) int resized to ``size`` by nearest neighbour (no new label values)."""
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    return F.interpolate(target.float(), size=size, mode="nearest-exact").to(target.dtype)


class DiceCELoss(nn.Module):
    """Cross-entropy + (1 - batch soft Dice over the foreground classes), with partial labels.

    Args:
        num_classes: channels of the logits: 2 (background, liver) or 3 (+ tumor).
        lambda_ce: weight of the cross-entropy term.
        lambda_dice: weight of the Dice term.
        smooth: added to the Dice numerator and denominator (as MONAI's ``smooth_nr``/``smooth_dr``).
        batch_dice: sum the Dice over the batch before dividing (nnU-Net's batch Dice, default);
            ``False``: each sample's Dice, averaged (MONAI's default ``batch=False``).
        include_background: the Dice term includes the background channel (MONAI's default);
            default ``False``: foreground classes only.

    Call with ``logits`` (B, C, *spatial), ``target`` (B, 1, *spatial) or (B, *spatial)
    integer labels 0/1/2, and optionally ``tumor_annotated`` (B,) bool. Samples with
    ``tumor_annotated`` False get the marginal loss (liver + tumor probabilities merged,
    see the module docstring); with ``num_classes=2`` tumor labels count as liver.
    For fully annotated batches the value equals MONAI's
    ``DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)``;
    with ``batch_dice=False, include_background=True`` it equals MONAI's defaults
    (``DiceCELoss(softmax=True, to_onehot_y=True)``), the calibration loop's loss.
    """

    def __init__(self, *, num_classes: int, lambda_ce: float = 1.0, lambda_dice: float = 1.0, smooth: float = 1e-5,
                 batch_dice: bool = True, include_background: bool = False) -> None:
        super().__init__()
        if num_classes not in (2, 3):
            raise ValueError(f"num_classes must be 2 (background, liver) or 3 (+ tumor); got {num_classes}")
        if lambda_ce < 0 or lambda_dice < 0 or lambda_ce + lambda_dice == 0:
            raise ValueError(f"lambda_ce and lambda_dice must be >= 0, not both 0; got {lambda_ce}, {lambda_dice}")
        self.num_classes = num_classes
        self.lambda_ce = float(lambda_ce)
        self.lambda_dice = float(lambda_dice)
        self.smooth = float(smooth)
        self.batch_dice = bool(batch_dice)
        self.include_background = bool(include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, tumor_annotated: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels; this loss expects {self.num_classes}")
        if target.ndim == logits.ndim - 1:
            target = target[:, None]
        if target.shape[0] != logits.shape[0] or target.shape[2:] != logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        target = target[:, 0].long()
        if self.num_classes == 2:
            target = (target > 0).long()
        b = logits.shape[0]
        if tumor_annotated is None or self.num_classes == 2:
            annotated = torch.ones(b, dtype=torch.bool, device=logits.device)
        else:
            annotated = torch.as_tensor(tumor_annotated, dtype=torch.bool, device=logits.device).reshape(b)

        logits = logits.float()
        logp = F.log_softmax(logits, dim=1)
        prob = logp.exp()
        ce_terms = []
        dice_terms = []
        weights = []
        if annotated.any():
            lp, p, t = logp[annotated], prob[annotated], target[annotated]
            ce_terms.append(F.nll_loss(lp, t, reduction="sum"))
            dice_terms.append(self._dice_loss(p, F.one_hot(t, self.num_classes).movedim(-1, 1).to(p.dtype)))
            weights.append(int(annotated.sum()))
        if (~annotated).any():
            # marginal: classes {background} and {liver, tumor}; voxels labelled tumor in such a
            # sample (synthetic tumors painted into the liver) are known tumor and keep full CE
            lp, p, t3 = logp[~annotated], prob[~annotated], target[~annotated]
            t = (t3 > 0).long()
            lp2 = torch.stack([lp[:, 0], torch.logsumexp(lp[:, 1:], dim=1)], dim=1)
            p2 = torch.stack([p[:, 0], p[:, 1:].sum(dim=1)], dim=1)
            known_tumor = t3 == 2
            nll = -torch.where(known_tumor, lp[:, 2], lp2.gather(1, t[:, None])[:, 0])
            ce_terms.append(nll.sum())
            dice_terms.append(self._dice_loss(p2, F.one_hot(t, 2).movedim(-1, 1).to(p2.dtype)))
            weights.append(int((~annotated).sum()))
        ce = sum(ce_terms) / target.numel()
        dice = sum(w * d for w, d in zip(weights, dice_terms)) / b
        return self.lambda_ce * ce + self.lambda_dice * dice

    def _dice_loss(self, prob: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Mean of 1 - soft Dice over the channels (foreground, or all with ``include_background``)
        and, without ``batch_dice``, over the samples; batch Dice sums over batch and space."""
        spatial = list(range(2, prob.ndim))
        dims = [0] + spatial if self.batch_dice else spatial
        first = 0 if self.include_background else 1
        p, g = prob[:, first:], onehot[:, first:]
        inter = (p * g).sum(dims)
        denom = p.sum(dims) + g.sum(dims)
        return (1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)).mean()


class DeepSupervisionLoss(nn.Module):
    """Applies a loss to each output of a deep-supervised network and sums with halving weights.

    Args:
        loss: the per-level loss, called as ``loss(logits, target, tumor_annotated)``.

    Call with a tensor (one output) or a list of tensors, highest resolution first; the
    target is resized to each output's size by nearest neighbour.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, tumor_annotated: torch.Tensor | None = None
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, tumor_annotated)
        outputs = list(outputs)
        if target.ndim == outputs[0].ndim - 1:
            target = target[:, None]
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            total = total + w * self.loss(out, downsample_labels(target, out.shape[2:]), tumor_annotated)
        return total
