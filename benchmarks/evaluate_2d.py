"""The 2D bundle per source and per window: the table in models/liver-tumor-2d/MODEL_CARD.md.

Every slice goes through ``Predictor.predict`` on its own, as a user uploading one image would
(8-bit pictures as ``read_volume`` reads a PNG/JPEG: no HU, no pixel size). Sources:

* ``curvas``: the held-out CURVAS volumes (``--curvas-volumes``, default 08, 09, 10: the ones
  ``configs/liver-tumor-2d.json`` holds out), their soft-tissue PNG exports as published;
* ``msd-jpeg``: the 20 MSD liver JPEG slices (a test set only; masks binary liver);
* ``3Dircadb1.17``, held out: every axial slice with liver, rendered to 8 bits in the abdomen
  (W400/L40), soft-tissue (W350/L50), liver (W150/L60) and full-range (per-slice min–max)
  windows, and once as the DICOM slice in HU (``HU`` row: the Predictor's HU path).

Per source: liver Dice (label 1 + 2) per slice, mean over slices (a slice with no liver in
both prediction and mask scores 1) and pooled over all its pixels; for 3Dircadb1.17 also tumor
Dice pooled over its slices that hold reference tumor (the only tumor annotation here);
seconds per slice (median, warm, after one warm-up prediction). CURVAS also gets the mean of
its per-volume means.

    .venv/bin/python benchmarks/evaluate_2d.py --data ../shared/data --threads 2 --json eval2d.json
    .venv/bin/python benchmarks/evaluate_2d.py --model-2d path/to/other-bundle   # compare a bundle
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

log = logging.getLogger("evaluate_2d")

#: the windows 3Dircadb1.17's slices are rendered in: name -> (width, level) HU, or "minmax"
WINDOWS: dict[str, tuple[float, float] | str] = {
    "abdomen W400/L40": (400.0, 40.0),
    "soft tissue W350/L50": (350.0, 50.0),
    "liver W150/L60": (150.0, 60.0),
    "full range (min-max)": "minmax",
}


def _dice(p: np.ndarray, r: np.ndarray) -> float:
    from liverseg.analysis.metrics import dice

    return float(dice(p, r))


class _Scorer:
    """Collects per-slice predictions of one source (or window) and summarises them."""

    def __init__(self) -> None:
        self.pred: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []
        self.groups: list[str] = []
        self.seconds: list[float] = []
        self.paths: set[str] = set()

    def add(self, pred: np.ndarray, ref: np.ndarray, seconds: float, group: str = "", path: str | None = None) -> None:
        self.pred.append(np.asarray(pred, np.uint8))
        self.ref.append(np.asarray(ref, np.uint8))
        self.groups.append(group)
        self.seconds.append(seconds)
        if path:
            self.paths.add(path)

    def summary(self, *, tumor: bool) -> dict:
        per = [_dice(p > 0, r > 0) for p, r in zip(self.pred, self.ref)]
        out = {
            "n_slices": len(per),
            "liver_dice_mean": float(np.mean(per)),
            "liver_dice_min": float(np.min(per)),
            "liver_dice_global": _dice(np.concatenate([p.ravel() for p in self.pred]) > 0,
                                       np.concatenate([r.ravel() for r in self.ref]) > 0),
            "seconds_per_slice_median": float(np.median(self.seconds)),
            "seconds_per_slice_max": float(np.max(self.seconds)),
            "input_path_2d": sorted(self.paths),
        }
        groups = sorted(set(self.groups) - {""})
        if groups:
            out["liver_dice_per_volume"] = {g: float(np.mean([d for d, gg in zip(per, self.groups) if gg == g]))
                                            for g in groups}
            out["liver_dice_mean_of_volumes"] = float(np.mean(list(out["liver_dice_per_volume"].values())))
        if tumor:
            with_tumor = [i for i, r in enumerate(self.ref) if (r == 2).any()]
            out["n_tumor_slices"] = len(with_tumor)
            if with_tumor:
                out["tumor_dice_tumor_slices"] = _dice(np.stack([self.pred[i] == 2 for i in with_tumor]),
                                                       np.stack([self.ref[i] == 2 for i in with_tumor]))
                out["tumor_dice_tumor_slices_mean"] = float(np.mean(
                    [_dice(self.pred[i] == 2, self.ref[i] == 2) for i in with_tumor]))
        return out


def _predict(predictor, volume) -> tuple[np.ndarray, float, str | None]:  # noqa: ANN001
    t = time.perf_counter()
    pred = predictor.predict(volume)
    return pred.labels.array[0], time.perf_counter() - t, pred.input_path_2d


def _image_volume(pixels: np.ndarray):  # noqa: ANN202
    """An 8-bit slice as ``read_volume`` gives a PNG: no HU, no spacing."""
    from liverseg.io import Volume

    return Volume(array=np.asarray(pixels, np.uint8)[None], spacing=None, modality="CT", is_hu=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="the workplace's shared data folder")
    ap.add_argument("--model-2d", default="liver-tumor-2d", help="2D bundle: bundled name or folder")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    ap.add_argument("--curvas-volumes", nargs="*", default=["curvas-08", "curvas-09", "curvas-10"])
    ap.add_argument("--ircadb-case", default="3Dircadb1.17")
    ap.add_argument("--every", type=int, default=1, help="use every N-th liver slice of the 3D case (default all)")
    ap.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (both flips: 4 passes)")
    ap.add_argument("--min-liver-confidence", type=float, default=None,
                    help="the whole-liver rule's threshold (default: the bundle's; 0 turns it off)")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from liverseg.inference import Predictor
    from liverseg.io import Volume, read_volume
    from liverseg.preprocessing.display import render_minmax, render_window
    from liverseg.training.datasets import find_cases
    from liverseg.training.slices2d import find_image_slices, load_image_slice

    data = Path(args.data)
    for sub in ("slices2d/curvas", "slices2d/msd-liver-jpg", "labeled"):
        if not (data / sub).is_dir():
            sys.stderr.write(f"{data / sub} is missing: give --data the shared data folder (../shared/data)\n")
            return 2
    predictor = Predictor("liver-tumor-3d", model_2d=args.model_2d, threads=args.threads, tta=args.tta,
                          min_liver_confidence=args.min_liver_confidence)
    bundle = predictor.bundle("2d")
    results: dict = {"model_2d": str(args.model_2d), "sha256": bundle.sha256, "threads": args.threads,
                     "tta": args.tta, "min_liver_confidence": predictor.liver_confidence_rule("2d"),
                     "torch_threads": torch.get_num_threads(), "sources": {}}

    # a warm-up prediction: the first one builds the network
    predictor.predict(_image_volume(np.zeros((256, 256), np.uint8)))

    curvas = _Scorer()
    for item in find_image_slices(data / "slices2d" / "curvas"):
        if item.group not in set(args.curvas_volumes):
            continue
        _, ref = load_image_slice(item)
        p, s, path = _predict(predictor, read_volume(item.image_path))
        curvas.add(p, ref, s, item.group, path)
    results["sources"]["curvas (held-out volumes)"] = curvas.summary(tumor=False)

    msd = _Scorer()
    for item in find_image_slices(data / "slices2d" / "msd-liver-jpg"):
        _, ref = load_image_slice(item)
        p, s, path = _predict(predictor, read_volume(item.image_path))
        msd.add(p, ref, s, "", path)
    results["sources"]["msd-jpeg"] = msd.summary(tumor=False)

    case = next((c for c in find_cases(data / "labeled") if c.case_id == args.ircadb_case), None)
    if case is None:
        sys.stderr.write(f"case {args.ircadb_case} not found under {data / 'labeled'}\n")
        return 2
    ct, ref_vol = case.load()
    zs = np.where((ref_vol.array > 0).any(axis=(1, 2)))[0][:: max(1, args.every)]
    for name, window in WINDOWS.items():
        sc = _Scorer()
        for z in zs:
            hu = ct.array[z].astype(np.float32)
            pixels = render_minmax(hu) if window == "minmax" else render_window(hu, width_hu=window[0], level_hu=window[1])
            p, s, path = _predict(predictor, _image_volume(pixels))
            sc.add(p, ref_vol.array[z], s, "", path)
        results["sources"][f"{args.ircadb_case} {name}"] = sc.summary(tumor=case.tumor_annotated)
    sc = _Scorer()
    for z in zs:
        sl = Volume(array=ct.array[z : z + 1], spacing=ct.spacing, modality="CT", is_hu=True)
        p, s, path = _predict(predictor, sl)
        sc.add(p, ref_vol.array[z], s, "", path)
    results["sources"][f"{args.ircadb_case} HU (DICOM slice)"] = sc.summary(tumor=case.tumor_annotated)

    lines = ["| source | slices | liver Dice (mean / pooled) | tumor Dice (tumor slices, pooled) | s / slice | input path |",
             "|---|---|---|---|---|---|"]
    for name, r in results["sources"].items():
        liver = f"{r['liver_dice_mean']:.3f} / {r['liver_dice_global']:.3f}"
        if "liver_dice_mean_of_volumes" in r:
            liver += f" (volumes {r['liver_dice_mean_of_volumes']:.3f})"
        tumor = f"{r['tumor_dice_tumor_slices']:.3f} ({r['n_tumor_slices']} slices)" if "tumor_dice_tumor_slices" in r else "–"
        lines.append(f"| {name} | {r['n_slices']} | {liver} | {tumor} | {r['seconds_per_slice_median']:.3f} | "
                     f"{'; '.join(r['input_path_2d'])} |")
    results["table_markdown"] = "\n".join(lines)
    sys.stdout.write(results["table_markdown"] + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
