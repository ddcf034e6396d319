"""Where a predicted liver is wrong, axial slice by axial slice (issue 12: what keeps liver Dice down).

Reads a predicted and a reference mask on the same grid (NIfTI; liver = label > 0, so tumor counts
as liver) such as ``benchmarks/evaluate_3d.py`` leaves in ``OUT/pred`` and ``OUT/ref``, and prints:
the liver Dice, the false and missed voxels in all, how many of each lie more than ``--far`` voxels
from the other mask, and every axial slice with more than ``--min-voxels`` false or missed voxels
(reference, predicted, false, missed). Also the Dice the prediction would have without the false
voxels of a slice range (``--drop-slices A B``): what fixing that region alone is worth.

Usage::

    .venv/bin/python benchmarks/liver_errors_by_slice.py runs/eval/pred/3Dircadb1.17.nii.gz \\
        runs/eval/ref/3Dircadb1.17.nii.gz --drop-slices 104 115
"""

from __future__ import annotations

import argparse
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj) > 0


def _dice(p: np.ndarray, r: np.ndarray) -> float:
    n = int(p.sum()) + int(r.sum())
    return 1.0 if n == 0 else 2.0 * int((p & r).sum()) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred", help="predicted mask (NIfTI)")
    ap.add_argument("ref", help="reference mask (NIfTI, same grid)")
    ap.add_argument("--min-voxels", type=int, default=2000, help="list slices with more false or missed voxels")
    ap.add_argument("--far", type=float, default=5.0, help="'far' = more than this many voxels from the other mask")
    ap.add_argument("--drop-slices", type=int, nargs=2, metavar=("A", "B"), default=None,
                    help="also the Dice without the false voxels of axial slices A..B (inclusive)")
    args = ap.parse_args(argv)
    p, r = _load(args.pred), _load(args.ref)
    if p.shape != r.shape:
        print(f"the masks differ in shape: {p.shape} against {r.shape}", file=sys.stderr)
        return 2
    z = int(np.argmin(p.shape))  # the axial axis: the shortest one of a CT (NIfTI x, y, z order)
    other = tuple(i for i in range(3) if i != z)
    fp, fn = p & ~r, r & ~p
    far_fp = int((fp & (ndimage.distance_transform_edt(~r) > args.far)).sum())
    far_fn = int((fn & (ndimage.distance_transform_edt(~p) > args.far)).sum())
    print(f"liver Dice {_dice(p, r):.4f}; false {int(fp.sum())} voxels ({far_fp} more than {args.far:g} voxels from "
          f"the reference), missed {int(fn.sum())} ({far_fn} more than {args.far:g} from the prediction)")
    rz, pz, fpz, fnz = (m.sum(axis=other) for m in (r, p, fp, fn))
    print("| slice | reference | predicted | false | missed |\n|---|---|---|---|---|")
    for k in range(p.shape[z]):
        if fpz[k] > args.min_voxels or fnz[k] > args.min_voxels:
            print(f"| {k} | {rz[k]} | {pz[k]} | {fpz[k]} | {fnz[k]} |")
    if args.drop_slices:
        a, b = args.drop_slices
        keep = np.ones(p.shape[z], bool)
        keep[a:b + 1] = False
        region = np.broadcast_to(np.expand_dims(~keep, other), p.shape)
        fixed = p & ~(fp & region)
        print(f"without the false voxels of slices {a}-{b} ({int((fp & region).sum())}): liver Dice "
              f"{_dice(fixed, r):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
