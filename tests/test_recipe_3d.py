"""The 3D recipe's levers: liver-only cases taught as tumor-free, contrast-phase augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverseg.preprocessing import Plan
from liverseg.testing.phantom import phantom
from liverseg.training import CachedCase, PatchDataset
from liverseg.training.augment import Augmenter
from liverseg.training.cache import _bbox, _sample_coords, _tumor_coords
from liverseg.training.config import StageConfig

PLAN = Plan(spacing_mm=(2.5, 1.5, 1.5), clip_hu=(-100, 250), mean_hu=90, std_hu=40, patch_size=(16, 32, 32))


def _liver_only_case() -> CachedCase:
    ct, lab = phantom(shape=(24, 64, 64), spacing=(2.5, 1.5, 1.5), lesions=(), seed=1)
    rng = np.random.default_rng(0)
    label = lab.array
    return CachedCase(
        case_id="h", image=ct.array, label=label, spacing_mm=(2.5, 1.5, 1.5), tumor_annotated=False,
        liver_bbox=_bbox(label > 0), tumor_bbox=None,
        liver_coords=_sample_coords(label > 0, rng, 5000), tumor_coords=_tumor_coords(label == 2, rng, 5000),
    )


def test_liver_only_cases_are_supervised_as_tumor_free_when_asked() -> None:
    case = _liver_only_case()
    marginal = PatchDataset([case], plan=PLAN, samples_per_epoch=8, augment=False, seed=0)
    tumor_free = PatchDataset([case], plan=PLAN, samples_per_epoch=8, augment=False, seed=0, liver_only_tumor_free=True)
    assert not any(bool(marginal[i]["tumor_annotated"]) for i in range(8))
    assert all(bool(tumor_free[i]["tumor_annotated"]) for i in range(8))
    assert torch.equal(marginal[3]["image"], tumor_free[3]["image"])  # only the supervision changes


def test_stage_config_checks_liver_only() -> None:
    assert StageConfig(name="net", architecture="nnformer-liver-3d", liver_only="tumor_free").liver_only == "tumor_free"
    with pytest.raises(ValueError, match="liver_only must be 'marginal' or 'tumor_free'"):
        StageConfig(name="net", architecture="nnformer-liver-3d", liver_only="healthy")


def _hu_ramp() -> tuple[torch.Tensor, torch.Tensor]:
    hu = torch.linspace(-1024, 1500, 16 * 32 * 32).reshape(1, 16, 32, 32)
    return hu, torch.zeros_like(hu)


def test_contrast_phase_is_off_unless_enabled() -> None:
    hu, lab = _hu_ramp()
    assert Augmenter(patch_size=(16, 32, 32)).contrast_phase(hu, lab, np.random.default_rng(0)) is hu


@pytest.mark.parametrize("scale", [0.35, 1.3])
def test_contrast_curve_is_monotone_and_keeps_air_fat_and_bone(scale) -> None:
    hu, lab = _hu_ramp()
    aug = Augmenter(patch_size=(16, 32, 32), contrast_phase=True, phase_probability=1.0, liver_shift_probability=0.0,
                    global_shift_hu=0.0, enhancement_scale=(scale, scale))
    out = aug.contrast_phase(hu, lab, np.random.default_rng(0)).flatten()
    x = hu.flatten()
    assert torch.all(out[1:] >= out[:-1])  # no tissue changes order
    keep = (x <= 40) | (x >= 1000)
    assert torch.allclose(out[keep], x[keep], atol=1e-3)
    portal_liver = torch.argmin((x - 110).abs())
    assert out[portal_liver] == pytest.approx(40 + 70 * scale, abs=1.0)


def test_liver_shift_moves_the_liver_not_the_far_background() -> None:
    hu = torch.full((1, 16, 32, 32), 100.0)
    lab = torch.zeros_like(hu)
    lab[0, 4:12, 8:24, 8:24] = 1
    aug = Augmenter(patch_size=(16, 32, 32), contrast_phase=True, phase_probability=0.0, liver_shift_probability=1.0,
                    liver_shift_hu=(-40.0, -40.0), global_shift_hu=0.0)
    out = aug.contrast_phase(hu, lab, np.random.default_rng(0))
    assert out[0, 8, 16, 16] == pytest.approx(60.0, abs=0.5)  # deep inside the liver: the full shift
    assert out[0, 0, 0, 0] == pytest.approx(100.0, abs=1e-3)  # far away: untouched
    edge = out[0, 8, 16, 7:10]  # across the outline: a smooth ramp, not a step
    assert 60.5 < float(edge[1]) < 99.5 or 60.5 < float(edge[0]) < 99.5


def test_contrast_phase_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="enhancement_scale"):
        Augmenter(patch_size=(8, 8, 8), enhancement_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="phase_probability"):
        Augmenter(patch_size=(8, 8, 8), phase_probability=1.5)


def test_init_new_modules_gives_a_plain_head_bundle_the_refined_head() -> None:
    from liverseg.errors import TrainingError
    from liverseg.models import build_model
    from liverseg.training.trainer import _load_init_weights

    from tiny_bundles import TINY_3D

    torch.manual_seed(0)
    plain = build_model("nnformer-liver-3d", **TINY_3D).state_dict()
    refined = build_model("nnformer-liver-3d", **TINY_3D, refine_head=True)
    fresh = {k: v.clone() for k, v in refined.state_dict().items() if k.startswith("refine.")}
    _load_init_weights(refined, plain, new_modules=["refine"], source="plain")
    after = refined.state_dict()
    # every weight the bundle has is taken from it; the new head keeps its own initialisation
    for k, v in plain.items():
        if not k.startswith("heads.0."):
            assert torch.equal(after[k], v), k
    assert fresh and all(torch.equal(after[k], v) for k, v in fresh.items())
    with pytest.raises(RuntimeError):  # without init_new_modules the bundle must match exactly
        _load_init_weights(refined, plain, new_modules=[], source="plain")
    with pytest.raises(TrainingError, match="outside init_new_modules"):  # a missing weight elsewhere
        _load_init_weights(refined, {k: v for k, v in plain.items() if not k.startswith("decoder.")},
                           new_modules=["refine"], source="plain")
    with pytest.raises(TrainingError, match="name no weights"):  # nothing new: a typo or the wrong network
        _load_init_weights(build_model("nnformer-liver-3d", **TINY_3D), plain, new_modules=["refine"],
                           source="plain")


def test_stage_config_checks_init_new_modules() -> None:
    with pytest.raises(ValueError, match="needs init_weights"):
        StageConfig(name="net", architecture="nnformer-liver-3d-refine", init_new_modules=["refine"])
    with pytest.raises(ValueError, match="list of module names"):
        StageConfig(name="net", architecture="nnformer-liver-3d-refine", init_weights="b", init_new_modules="refine")
    StageConfig(name="net", architecture="nnformer-liver-3d-refine", init_weights="b", init_new_modules=["refine"])


def test_light_intensity_preset_only_scales_and_shifts() -> None:
    # the calibration loop's intensity set: image * (1 + s) + o, never noise, blur or gamma
    img = torch.linspace(-2.0, 2.0, 16 * 16 * 16).reshape(1, 16, 16, 16)
    aug = Augmenter(patch_size=(16, 16, 16), intensity_preset="light", light_scale=0.1, light_offset=0.35)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(20):
        out = aug.intensity(img.clone(), rng)
        a, b = np.polyfit(img.flatten().numpy(), out.flatten().numpy(), 1)
        resid = out.flatten().numpy() - (a * img.flatten().numpy() + b)
        assert np.abs(resid).max() < 1e-4  # exactly affine: no noise, blur or gamma
        assert 0.9 - 1e-5 <= a <= 1.1 + 1e-5 and abs(b) <= 0.35 * 1.1 + 1e-5
        changed += not torch.allclose(out, img)
    assert changed >= 10  # p 0.5 each: most draws change the image
    heavy = Augmenter(patch_size=(16, 16, 16))
    outs = [heavy.intensity(img.clone(), rng) for _ in range(20)]
    nonaffine = 0
    for out in outs:
        a, b = np.polyfit(img.flatten().numpy(), out.flatten().numpy(), 1)
        nonaffine += np.abs(out.flatten().numpy() - (a * img.flatten().numpy() + b)).max() > 1e-3
    assert nonaffine >= 1  # the default (nnU-Net) set is not just an affine change
    with pytest.raises(ValueError, match="intensity_preset"):
        Augmenter(patch_size=(8, 8, 8), intensity_preset="heavy")


def test_stage_augment_options_reach_the_augmenter() -> None:
    opts = {"spatial_probability": 0.2, "rotation_deg": [5.7, 5.7], "scale_range": [0.9, 1.1],
            "intensity_preset": "light"}
    stage = StageConfig(name="net", architecture="unet-3d-baseline", augment_options=dict(opts))
    assert stage.augment_options["rotation_deg"] == (5.7, 5.7)
    ds = PatchDataset([_liver_only_case()], plan=PLAN, samples_per_epoch=2, augment_options=stage.augment_options)
    assert ds.augmenter.intensity_preset == "light" and ds.augmenter.spatial_probability == 0.2
    assert ds[0]["image"].shape == (1, 16, 32, 32)
    with pytest.raises(ValueError, match="unknown augment_options"):
        StageConfig(name="net", architecture="unet-3d-baseline", augment_options={"gamma": 0.5})
    with pytest.raises(ValueError, match="two numbers"):
        StageConfig(name="net", architecture="unet-3d-baseline", augment_options={"rotation_deg": 5})
