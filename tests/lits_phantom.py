"""Test helper: a tiny LiTS-layout folder (volume-N.nii.gz + segmentation-N.nii.gz) of phantoms."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from liverseg.testing import phantom


def write_lits_phantom(root: Path, *, n: int = 3, shape=(20, 64, 64), spacing=(3.0, 2.0, 2.0)) -> Path:
    """Write ``n`` phantom cases in the LiTS layout under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ct, lab = phantom(shape=shape, spacing=spacing, seed=i, lesions=((7.0, None),), noise_hu=5.0)
        for arr, name in ((ct.array, f"volume-{i}.nii.gz"), (lab.array, f"segmentation-{i}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
            sitk.WriteImage(img, str(root / name))
    return root
