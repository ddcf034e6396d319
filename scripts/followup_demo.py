"""Write a known-answer follow-up pair from 3D-IRCADb 17 for `liverseg compare` (README, "Comparing two scans").

The baseline is the case's CT and expert mask; the follow-up is the same patient rotated (4° about z,
2° about x), shifted (5, -8, 6) mm, resampled to 2.0 × 0.8 × 0.8 mm, with its smaller lesion erased
from the mask (it becomes liver). Usage::

    .venv/bin/python scripts/followup_demo.py ../shared/data/labeled/3Dircadb1.17 /tmp/followup-demo
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from liverseg.io import write_mask, write_volume
from liverseg.testing.moved import rigidly_moved
from liverseg.training.datasets import find_cases


def main(case_folder: str, out: str) -> None:
    (case,) = find_cases(case_folder)
    ct, lab = case.load()
    ct2, lab2 = rigidly_moved(ct, lab, rotation_deg=(4, 0, 2), shift_mm=(5, -8, 6), spacing=(2.0, 0.8, 0.8))
    arr = np.asarray(lab2.array).copy()
    comp, _ = ndimage.label(arr == 2, structure=np.ones((3, 3, 3)))
    arr[comp == int(np.argmin(np.bincount(comp.ravel())[1:])) + 1] = 1
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    write_volume(ct, o / "baseline_ct.nii.gz")
    write_mask(ct, lab, o / "baseline_mask.nii.gz")
    write_volume(ct2, o / "followup_ct.nii.gz")
    write_mask(ct2, lab2.with_array(arr), o / "followup_mask.nii.gz")


if __name__ == "__main__":
    main(*sys.argv[1:3])
