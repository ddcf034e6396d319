"""Accuracy of the bundled models on labelled cases (the numbers in the model cards).

For each case: read CT + expert labels (``liverseg.training.find_cases``), predict with the
3D bundle end to end (cascade, postprocessing, back to the input grid), score with the LiTS
metrics (``liverseg.analysis.metrics.case_metrics``), and time the prediction. With
``--slices N`` it also scores the 2D bundle on N evenly spaced axial slices through each
case's liver (each slice predicted on its own, as a user uploading one DICOM slice would).

    .venv/bin/python benchmarks/evaluate_bundle.py --data ../shared/data/labeled \\
        --cases 3Dircadb1.17 --slices 12 --json eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def _parse(items: list[str], kind: type) -> dict[str, tuple]:
    out = {}
    for item in items:
        cid, _, values = item.partition("=")
        out[cid] = tuple(kind(a) for a in values.split(","))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="labelled dataset folder (any layout find_cases knows)")
    ap.add_argument("--cases", nargs="*", default=None, help="case ids to score (default: all)")
    ap.add_argument("--model", default="liver-tumor-3d")
    ap.add_argument("--model-2d", default="liver-tumor-2d")
    ap.add_argument("--slices", type=int, default=0, help="also score the 2D model on N slices per case")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--axes-override", nargs="*", default=[], metavar="CASE=A,B,C")
    ap.add_argument("--spacing-override", nargs="*", default=[], metavar="CASE=Z,Y,X")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from liverseg.analysis.metrics import case_metrics, dice
    from liverseg.inference import Predictor
    from liverseg.io import Volume
    from liverseg.training.datasets import find_cases

    axes, spacing = _parse(args.axes_override, int), _parse(args.spacing_override, float)
    cases = [c.with_axes(axes[c.case_id]) if c.case_id in axes else c for c in find_cases(args.data)]
    cases = [c.with_spacing(spacing[c.case_id]) if c.case_id in spacing else c for c in cases]
    if args.cases:
        cases = [c for c in cases if c.case_id in set(args.cases)]
    predictor = Predictor(args.model, model_2d=args.model_2d, tta=args.tta, threads=args.threads)
    results = {"model": args.model, "model_2d": args.model_2d, "tta": args.tta, "cases": {}}
    for case in cases:
        ct, ref = case.load()
        t = time.perf_counter()
        pred = predictor.predict(ct)
        seconds = time.perf_counter() - t
        m = case_metrics(pred.labels.array, ref.array, ct.spacing)
        row = {
            "shape": list(ct.shape),
            "spacing_mm": list(ct.spacing),
            "tumor_annotated": case.tumor_annotated,
            "seconds": round(seconds, 2),
            "liver_dice": m["liver"]["dice"],
            "liver_assd_mm": m["liver"].get("assd_mm"),
            "tumor_dice": m["tumor"]["dice"] if case.tumor_annotated else None,
            "tumor_burden_abs_error": m["tumor_burden"]["abs_error"] if case.tumor_annotated else None,
            "detection": {k: v for k, v in m["detection"].items() if k != "ref_iou"} if case.tumor_annotated else None,
        }
        if args.slices:
            zs = np.where((ref.array > 0).any(axis=(1, 2)))[0]
            picks = np.unique(np.linspace(zs.min(), zs.max(), args.slices + 2)[1:-1].round().astype(int))
            pl, rl, per = [], [], []
            t2 = time.perf_counter()
            for z in picks:
                sl = Volume(array=ct.array[z : z + 1], spacing=ct.spacing, modality="CT", is_hu=True)
                p2 = predictor.predict(sl).labels.array[0]
                r2 = ref.array[z]
                pl.append(p2)
                rl.append(r2)
                per.append(dice(p2 > 0, r2 > 0))
            row["slices"] = {
                "n": int(len(picks)),
                "seconds_per_slice": round((time.perf_counter() - t2) / len(picks), 3),
                "liver_dice_mean": float(np.mean([d for d in per if d is not None])),
                "liver_dice_global": dice(np.stack(pl) > 0, np.stack(rl) > 0),
                "tumor_dice_global": dice(np.stack(pl) == 2, np.stack(rl) == 2) if case.tumor_annotated else None,
            }
        results["cases"][case.case_id] = row
        sys.stdout.write(json.dumps({case.case_id: row}, default=float) + "\n")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
