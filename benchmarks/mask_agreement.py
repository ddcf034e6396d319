"""Agreement of two ``liverseg predict`` output folders, case by case (issue 14: masks unchanged).

For each case folder present in both (``<case>/mask.nii.gz``): liver Dice (labels 1 + 2),
tumor Dice (label 2; both empty → 1), and the number of voxels whose label differs. Used to
check that a speed change leaves the masks as they were with the same weights
(done when: liver and tumor Dice ≥ 0.999). Exit code 1 when a case falls below ``--min-dice``.

Usage::

    PYTHONPATH=/path/to/old/src .venv/bin/liverseg predict CASES... -o /tmp/before
    .venv/bin/liverseg predict CASES... -o /tmp/after
    .venv/bin/python benchmarks/mask_agreement.py /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; both empty → 1."""
    n = int(a.sum()) + int(b.sum())
    return 1.0 if n == 0 else 2.0 * int(np.logical_and(a, b).sum()) / n


def agreement(before: np.ndarray, after: np.ndarray) -> dict[str, float | int]:
    """Liver (1 + 2) and tumor (2) Dice and the count of differing voxels of two label arrays."""
    if before.shape != after.shape:
        raise ValueError(f"masks differ in shape: {before.shape} vs {after.shape}")
    return {
        "liver_dice": dice(before > 0, after > 0),
        "tumor_dice": dice(before == 2, after == 2),
        "voxels_differing": int((before != after).sum()),
        "liver_voxels_before": int((before > 0).sum()),
        "tumor_voxels_before": int((before == 2).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--min-dice", type=float, default=0.999)
    args = ap.parse_args()
    import nibabel as nib

    def read(path: Path) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj)

    rows = {}
    for case in sorted(p.parent.name for p in args.before.glob("*/mask.nii.gz")):
        other = args.after / case / "mask.nii.gz"
        if other.is_file():
            rows[case] = agreement(read(args.before / case / "mask.nii.gz"), read(other))
    if not rows:
        sys.stderr.write(f"no case has a mask.nii.gz in both {args.before} and {args.after}\n")
        return 2
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    worst = min(min(r["liver_dice"], r["tumor_dice"]) for r in rows.values())
    return 0 if worst >= args.min_dice else 1


if __name__ == "__main__":
    sys.exit(main())
