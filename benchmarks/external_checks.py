"""Checks of the bundled models on real data that has no expert 3D mask here.

* TotalSegmentator's example CT (``example_ct_sm.nii.gz``: 30 slices at 3 mm, non-contrast,
  stored in RAS order) against TotalSegmentator's own prediction for it (liver = label 5):
  agreement with a strong model, **not** accuracy against an expert.
* The MSD liver JPEG slices (256 x 256, lossy, some flipped or mirrored augmentations) against
  their binary liver masks: the 2D upload path end to end (JPEG → 8-bit display input → 2D model;
  per source and window: benchmarks/evaluate_2d.py).

    .venv/bin/python benchmarks/external_checks.py --data ../shared/data --json external.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="the workplace's shared data folder")
    ap.add_argument("--model", default="liver-tumor-3d")
    ap.add_argument("--model-2d", default="liver-tumor-2d")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    from PIL import Image

    from liverseg.analysis.metrics import dice
    from liverseg.inference import Predictor
    from liverseg.io import read_volume

    data = Path(args.data)
    predictor = Predictor(args.model, model_2d=args.model_2d, threads=args.threads)
    out: dict = {"model": args.model, "model_2d": args.model_2d}

    ts = data / "unlabeled" / "totalsegmentator-example"
    ct = read_volume(ts / "example_ct_sm.nii.gz")
    ref = read_volume(ts / "example_seg_totalsegmentator_prediction.nii.gz").array == 5
    t = time.perf_counter()
    pred = predictor.predict(ct).labels.array
    out["totalsegmentator_example_ct_sm"] = {
        "shape": list(ct.shape),
        "seconds": round(time.perf_counter() - t, 2),
        "liver_dice_vs_totalsegmentator": dice(pred > 0, ref),
        "liver_ml_liverseg": float((pred > 0).sum() * np.prod(ct.spacing) / 1000),
        "liver_ml_totalsegmentator": float(ref.sum() * np.prod(ct.spacing) / 1000),
    }

    msd = data / "slices2d" / "msd-liver-jpg"
    per, preds, refs = {}, [], []
    for image_path in sorted((msd / "images").glob("*.jpg")):
        vol = read_volume(image_path)
        p = predictor.predict(vol).labels.array[0] > 0
        r = np.asarray(Image.open(msd / "masks" / image_path.name).convert("L")) > 127
        per[image_path.stem] = dice(p, r)
        preds.append(p)
        refs.append(r)
    out["msd_jpeg_slices"] = {
        "n": len(per),
        "liver_dice_global": dice(np.stack(preds), np.stack(refs)),
        "liver_dice_median": float(np.median(list(per.values()))),
        "per_slice": per,
    }
    text = json.dumps(out, indent=2, default=float)
    sys.stdout.write(text + "\n")
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
