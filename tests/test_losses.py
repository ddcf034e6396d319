"""Loss tests: known values, MONAI agreement, partial (liver-only) labels, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch

from liverseg.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_labels


def _labels(b: int = 2, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(b, 1, n, n, n, dtype=torch.long)
    t[:, :, 1:5, 1:5, 1:5] = 1
    t[:, :, 2:4, 2:4, 2:4] = 2
    flip = torch.rand(t.shape, generator=g) < 0.1
    return torch.where(flip, torch.zeros_like(t), t)


def _logits_for(target: torch.Tensor, c: int, scale: float) -> torch.Tensor:
    return torch.nn.functional.one_hot(target[:, 0], c).movedim(-1, 1).float() * scale


def test_uniform_logits_give_known_ce_and_dice():
    # uniform prediction: CE = ln C; 2 classes, foreground fraction f: Dice = 2*0.5*f / (0.5 + f)
    t = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    t[..., :2] = 1  # half the voxels
    loss_ce = DiceCELoss(num_classes=2, lambda_dice=0.0)
    assert float(loss_ce(torch.zeros(1, 2, 4, 4, 4), t)) == pytest.approx(math.log(2), rel=1e-6)
    loss_dice = DiceCELoss(num_classes=2, lambda_ce=0.0, smooth=0.0)
    # p = 0.5 everywhere, |G| = 32, |P| = 32, I = 16 -> Dice 0.5
    assert float(loss_dice(torch.zeros(1, 2, 4, 4, 4), t)) == pytest.approx(0.5, rel=1e-6)


def test_matches_monai_dicece_when_fully_annotated():
    from monai.losses import DiceCELoss as MonaiDiceCE

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = _labels()
    ours = DiceCELoss(num_classes=3)(logits, target)
    ref = MonaiDiceCE(softmax=True, to_onehot_y=True, include_background=False, batch=True)(logits, target)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("batch_dice,include_background", [(False, True), (False, False), (True, True)])
def test_matches_monai_dicece_per_sample_and_with_background(batch_dice, include_background):
    # batch_dice=False, include_background=True is MONAI's default DiceCELoss: the calibration loop's loss
    from monai.losses import DiceCELoss as MonaiDiceCE

    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = _labels()
    ours = DiceCELoss(num_classes=3, batch_dice=batch_dice, include_background=include_background)(logits, target)
    ref = MonaiDiceCE(softmax=True, to_onehot_y=True, include_background=include_background, batch=batch_dice)(
        logits, target)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    default = DiceCELoss(num_classes=3)(logits, target)
    assert abs(float(ours) - float(default)) > 1e-5  # the options change the value


def test_perfect_prediction_near_zero_and_wrong_prediction_large():
    target = _labels()
    loss = DiceCELoss(num_classes=3)
    assert float(loss(_logits_for(target, 3, 30.0), target)) < 1e-3
    wrong = (target + 1) % 3
    assert float(loss(_logits_for(wrong, 3, 30.0), target)) > 10


def test_liver_only_samples_do_not_penalise_tumor_on_liver():
    # a liver-only case: its label says "liver" where a real (unannotated) tumor may lie
    target = torch.zeros(1, 1, 6, 6, 6, dtype=torch.long)
    target[..., 1:5, 1:5, 1:5] = 1
    says_liver = _logits_for(target, 3, 20.0)
    says_tumor = _logits_for(target * 2, 3, 20.0)  # calls every liver voxel tumor
    loss = DiceCELoss(num_classes=3)
    unknown = torch.tensor([False])
    known = torch.tensor([True])
    # marginal loss: tumor and liver both count as "liver or tumor"
    assert float(loss(says_tumor, target, unknown)) == pytest.approx(float(loss(says_liver, target, unknown)), abs=1e-4)
    assert float(loss(says_tumor, target, unknown)) < 1e-3
    # a fully annotated case is penalised for calling liver tumor
    assert float(loss(says_tumor, target, known)) > 5
    # background is still taught for liver-only samples
    says_bg = _logits_for(torch.zeros_like(target), 3, 20.0)
    assert float(loss(says_bg, target, unknown)) > 5


def test_mixed_batch_is_weighted_mean_of_groups():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = _labels()
    ann = torch.tensor([True, False])
    loss = DiceCELoss(num_classes=3, lambda_ce=0.0)
    mixed = loss(logits, target, ann)
    a = loss(logits[:1], target[:1], ann[:1])
    u = loss(logits[1:], target[1:], ann[1:])
    assert float(mixed) == pytest.approx(0.5 * float(a) + 0.5 * float(u), rel=1e-5)
    # CE is a voxel mean over the whole batch: also the mean of the two halves
    ce = DiceCELoss(num_classes=3, lambda_dice=0.0)
    assert float(ce(logits, target, ann)) == pytest.approx(
        0.5 * float(ce(logits[:1], target[:1], ann[:1])) + 0.5 * float(ce(logits[1:], target[1:], ann[1:])), rel=1e-5
    )


def test_two_class_loss_counts_tumor_as_liver():
    target = _labels()
    loss = DiceCELoss(num_classes=2)
    assert float(loss(_logits_for((target > 0).long(), 2, 30.0), target)) < 1e-3


def test_gradients_flow_for_liver_only_samples():
    logits = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    DiceCELoss(num_classes=3)(logits, _labels(b=1), torch.tensor([False])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_deep_supervision_weights_and_levels():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(3)
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(2 * w[1]) and w[1] == pytest.approx(2 * w[2])
    with pytest.raises(ValueError, match="levels"):
        deep_supervision_weights(0)
    target = _labels(n=8)
    low = downsample_labels(target, (4, 4, 4))
    assert low.shape == (2, 1, 4, 4, 4) and set(low.unique().tolist()) <= {0, 1, 2}
    base = DiceCELoss(num_classes=3)
    torch.manual_seed(2)
    outs = [torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    ds = DeepSupervisionLoss(base)(outs, target)
    expect = sum(wi * float(base(o, downsample_labels(target, o.shape[2:]))) for wi, o in zip(w, outs))
    assert float(ds) == pytest.approx(expect, rel=1e-5)
    # a single tensor is scored as is
    assert float(DeepSupervisionLoss(base)(outs[0], target)) == pytest.approx(float(base(outs[0], target)))


def test_2d_inputs_work():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:6, 2:6] = 1
    assert float(DiceCELoss(num_classes=3)(_logits_for(target, 3, 30.0), target)) < 1e-3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        DiceCELoss(num_classes=4)
    with pytest.raises(ValueError, match="lambda"):
        DiceCELoss(num_classes=3, lambda_ce=0.0, lambda_dice=0.0)
    with pytest.raises(ValueError, match="channels"):
        DiceCELoss(num_classes=3)(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        DiceCELoss(num_classes=3)(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5, dtype=torch.long))


def test_synthetic_tumor_voxels_in_liver_only_samples_are_supervised():
    """In a liver-only sample, label-2 voxels (synthetic tumors) must be pushed to tumor."""
    import torch

    from liverseg.training.losses import DiceCELoss

    loss = DiceCELoss(num_classes=3)
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    target[..., 0, :, :] = 2  # synthetic tumor
    target[..., 1, :, :] = 1  # liver of unknown tumor status
    unannotated = torch.tensor([False])
    liver_says = torch.zeros(1, 3, 2, 2, 2)
    liver_says[:, 1] = 5.0
    tumor_says = torch.zeros(1, 3, 2, 2, 2)
    tumor_says[:, 2] = 5.0
    # calling the synthetic tumor "liver" costs more than calling it "tumor"
    assert float(loss(liver_says, target, unannotated)) > float(loss(tumor_says, target, unannotated)) + 0.5
    # on label-1 voxels liver and tumor remain equally acceptable (marginal)
    only_liver = torch.ones_like(target)
    assert abs(float(loss(liver_says, only_liver, unannotated)) - float(loss(tumor_says, only_liver, unannotated))) < 1e-5
