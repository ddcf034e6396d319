"""Planning: fingerprint -> Plan; and the preprocessed cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg.preprocessing import Plan
from liverseg.testing.phantom import TISSUE_HU, phantom
from liverseg.training import fingerprint, find_cases, load_plan, make_plan, prepare_cache, save_plan


def _write_lits(root: Path, n: int = 2, spacing=(2.5, 1.5, 1.5)) -> None:
    for i in range(n):
        ct, lab = phantom(shape=(16, 48, 48), spacing=spacing, lesions=((5.0, None),) if i == 0 else (), seed=i)
        aff = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        nib.save(nib.Nifti1Image(ct.array.transpose(2, 1, 0).copy(), aff), str(root / f"volume-{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab.array.transpose(2, 1, 0).copy(), aff), str(root / f"segmentation-{i}.nii.gz"))


@pytest.fixture()
def lits(tmp_path: Path) -> Path:
    _write_lits(tmp_path)
    return tmp_path


def test_fingerprint_and_plan(lits: Path, tmp_path: Path) -> None:
    cases = find_cases(lits)
    fp = fingerprint(cases, progress=False)
    assert fp["n_cases"] == 2 and fp["n_with_tumor"] == 1
    assert fp["median_spacing_mm"] == pytest.approx([2.5, 1.5, 1.5])
    hu = fp["foreground_hu"]
    # liver (90 HU) and lesions (35 HU) with 10 HU noise
    assert TISSUE_HU["lesion"] - 20 < hu["p00_5"] < TISSUE_HU["liver"] < hu["p99_5"] < TISSUE_HU["liver"] + 40
    assert hu["std_clipped"] <= hu["std"]
    plan = make_plan(fp, memory_budget_mb=100)
    assert plan.spacing_mm == (2.5, 1.5, 1.5)
    assert plan.clip_hu == (hu["p00_5"], hu["p99_5"])
    assert all(p % d == 0 for p, d in zip(plan.patch_size, (16, 32, 32)))
    assert np.prod(plan.patch_size) * plan.batch_size * 2000 <= 100e6
    path = save_plan(plan, tmp_path / "out" / "plan.json", fingerprint=fp)
    assert load_plan(path) == plan
    assert json.loads(path.read_text())["plan"]["patch_size"] == list(plan.patch_size)


def test_plan_rules() -> None:
    fp = {
        "median_spacing_mm": [5.0, 0.8, 0.8], "spacing_p10_mm": [2.5, 0.7, 0.7],
        "median_size_mm": [250, 400, 400], "liver_bbox_size_mm": [160, 170, 190],
        "foreground_hu": {"p00_5": -5.0, "p99_5": 200.0, "mean": 110.0, "std": 30.0, "median": 112.0},
    }
    p = make_plan(fp, memory_budget_mb=4000)
    assert p.spacing_mm[0] == 2.5  # anisotropic: z from the 10th percentile (nnU-Net)
    small = make_plan(fp, spacing_mm=(2.5, 1.5, 1.5), memory_budget_mb=500)
    big = make_plan(fp, spacing_mm=(2.5, 1.5, 1.5), memory_budget_mb=8000)
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    roi = make_plan(fp, spacing_mm=(2.5, 1.5, 1.5), roi="liver", memory_budget_mb=80000)
    assert roi.patch_size[0] * 2.5 <= 160 + 40  # sized to the liver box + margins
    p2 = make_plan(fp, dims=2)
    assert p2.spacing_mm is None and p2.patch_size == (256, 256)
    assert make_plan(fp, patch_size=(48, 96, 96), batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="dims"):
        make_plan(fp, dims=4)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        make_plan(fp, memory_budget_mb=0)


def test_cache_resamples_reuses_and_crops(lits: Path, tmp_path: Path) -> None:
    cases = find_cases(lits)
    plan = Plan(spacing_mm=(5.0, 3.0, 3.0), clip_hu=(0, 200), mean_hu=90, std_hu=20, patch_size=(16, 32, 32))
    cache = tmp_path / "cache"
    first = prepare_cache(cases, plan=plan, cache_dir=cache, progress=False)
    c0 = first[0]
    assert c0.image.shape == (8, 24, 24) and c0.image.dtype == np.int16 and c0.label.dtype == np.uint8
    assert isinstance(c0.image, np.memmap)
    blob = pickle.dumps(c0)  # DataLoader workers / DDP processes get the path, not the voxels
    assert len(blob) < c0.image.nbytes
    back = pickle.loads(blob)
    assert isinstance(back.image, np.memmap) and np.array_equal(back.image, c0.image)
    assert c0.has_tumor and not first[1].has_tumor
    assert (c0.label[tuple(c0.tumor_coords.T)] == 2).all()
    assert (c0.label[tuple(c0.liver_coords.T)] > 0).all()
    (lo, hi), _, _ = c0.tumor_bbox
    assert (c0.label[lo:hi] == 2).any() and not (c0.label[:lo] == 2).any()
    stamp = (cache / "lits-0" / "image.npy").stat().st_mtime_ns
    again = prepare_cache(cases, plan=plan, cache_dir=cache, progress=False)
    assert (cache / "lits-0" / "image.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    np.testing.assert_array_equal(again[0].label, c0.label)
    roi = prepare_cache(cases, plan=plan, cache_dir=cache, roi="liver", roi_margin_mm=6.0, merge_tumor=True, progress=False)
    r0 = roi[0]
    assert set(np.unique(r0.label)) == {0, 1} and r0.merged_tumor and not r0.has_tumor
    assert r0.image.shape < c0.image.shape or np.prod(r0.image.shape) < np.prod(c0.image.shape)
    z0 = r0.crop_offset
    np.testing.assert_array_equal(
        r0.label > 0, c0.label[z0[0]:z0[0] + r0.shape[0], z0[1]:z0[1] + r0.shape[1], z0[2]:z0[2] + r0.shape[2]] > 0
    )
    with pytest.raises(ValueError, match="roi"):
        prepare_cache(cases, plan=plan, cache_dir=cache, roi="body")
