"""Choose the 2D bundle's whole-liver rule (config.json ``liver_confidence.drop_below``).

A 2D network sometimes draws a faint liver-like speck on a slice that holds no liver (above the
dome, below the tip). The Predictor's rule (:func:`liverseg.analysis.confidence.drop_unconfident_liver`)
reports "no liver" when the predicted liver's mean foreground probability is below a threshold.
This script predicts every slice of the chosen sources **with the rule off**, keeps each slice's
predicted area, overlap and mean foreground probability, and prints, for each threshold, the mean
per-slice liver Dice of every source (a slice with no liver in both prediction and reference
scores 1, as in ``benchmarks/evaluate_2d.py``).

Choose the threshold on the model's *training* sources and read the held-out ones only to report:

* CURVAS PNG exports, split into the held-out volumes (``--held-out``, default 08–10) and the rest;
* every ``--every``-th axial slice (with or without liver) of the labelled 3D cases, rendered to
  8 bits in the W400/L40 window and per-slice min–max.

Usage::

    .venv/bin/python benchmarks/liver_confidence_2d.py --data ../shared/data --threads 2 --json sweep.json
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from pathlib import Path

import numpy as np

THRESHOLDS = (0.0, 0.55, 0.6, 0.62, 0.65, 0.7, 0.75)


def _slice_dice(row: dict, threshold: float) -> float:
    dropped = row["pred"] > 0 and row["confidence"] < threshold
    if dropped or row["pred"] == 0:
        return 1.0 if row["ref"] == 0 else 0.0
    return 2.0 * row["inter"] / (row["pred"] + row["ref"])


def sweep(rows: list[dict], thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, dict[float, float]]:
    """Mean per-slice liver Dice per source and threshold."""
    by_source: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    return {src: {t: float(np.mean([_slice_dice(r, t) for r in rs])) for t in thresholds}
            for src, rs in sorted(by_source.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="the workplace's shared data folder")
    ap.add_argument("--model-2d", default="liver-tumor-2d", help="2D bundle: bundled name or folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out", nargs="*", default=["curvas-08", "curvas-09", "curvas-10"])
    ap.add_argument("--cases", nargs="*", default=["3Dircadb1.7", "chaos-ct-sample", "3Dircadb1.17"],
                    help="labelled 3D cases to slice (3Dircadb1.17 is the 2D model's held-out case)")
    ap.add_argument("--every", type=int, default=3, help="every N-th axial slice of a 3D case")
    ap.add_argument("--json", default=None, help="write the per-slice rows and the sweep here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    from liverseg.inference import Predictor
    from liverseg.io import Volume, read_volume
    from liverseg.preprocessing.display import render_minmax, render_window
    from liverseg.training.datasets import find_cases
    from liverseg.training.slices2d import find_image_slices, load_image_slice

    data = Path(args.data)
    if not (data / "slices2d" / "curvas").is_dir() or not (data / "labeled").is_dir():
        sys.stderr.write(f"{data} has no slices2d/curvas or labeled: give --data the shared data folder\n")
        return 2
    # the rule off: the sweep needs every prediction as the network drew it
    predictor = Predictor("liver-tumor-3d", model_2d=args.model_2d, threads=args.threads, min_liver_confidence=0.0)
    rows: list[dict] = []

    def add(volume: Volume, ref: np.ndarray, source: str) -> None:
        pred = predictor.predict(volume, return_probabilities=True)
        fg = pred.labels.array[0] > 0
        ref_fg = np.asarray(ref) > 0
        conf = float((1.0 - pred.probabilities[0, 0].astype(np.float32))[fg].mean()) if fg.any() else 0.0
        rows.append({"source": source, "pred": int(fg.sum()), "ref": int(ref_fg.sum()),
                     "inter": int((fg & ref_fg).sum()), "confidence": conf})

    held = set(args.held_out)
    for item in find_image_slices(data / "slices2d" / "curvas"):
        _, ref = load_image_slice(item)
        add(read_volume(item.image_path), ref, "curvas held-out" if item.group in held else "curvas training")
    for case in find_cases(data / "labeled"):
        if case.case_id not in args.cases:
            continue
        ct, ref_vol = case.load()
        for z in range(0, ct.shape[0], max(1, args.every)):
            hu = ct.array[z].astype(np.float32)
            for name, px in (("W400/L40", render_window(hu, width_hu=400, level_hu=40)), ("min-max", render_minmax(hu))):
                add(Volume(array=np.asarray(px, np.uint8)[None], spacing=None, modality="CT", is_hu=False),
                    ref_vol.array[z], f"{case.case_id} {name}")
    table = sweep(rows)
    lines = ["| source | slices | " + " | ".join(f"≥ {t:g}" if t else "rule off" for t in THRESHOLDS) + " |",
             "|---|---|" + "---|" * len(THRESHOLDS)]
    counts = collections.Counter(r["source"] for r in rows)
    for src, vals in table.items():
        lines.append(f"| {src} | {counts[src]} | " + " | ".join(f"{vals[t]:.3f}" for t in THRESHOLDS) + " |")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sweep": {s: {str(t): v for t, v in d.items()}
                                                                       for s, d in table.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
