"""False liver a 2D bundle draws on a range of a labelled volume's axial slices, per window (issue 13).

Each slice of ``--slices A B`` of the case is rendered to 8 bits in the abdomen (W400/L40), liver
(W150/L60) and full-range (per-slice min–max) windows, predicted on its own as an uploaded PNG would
be (``Predictor``, the bundle's whole-liver rule), and the predicted liver pixels outside the
reference liver are counted. Written for the dome of 3D-IRCADb 17 (slices 100–115), where the heart
was drawn as liver. Several bundles can be given to compare them on the same slices.

Usage::

    .venv/bin/python benchmarks/false_liver_2d.py --model-2d liver-tumor-2d runs/init-2d-wide2 --slices 100 115
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from liverseg.io import Volume  # noqa: E402
from liverseg.training.datasets import find_cases  # noqa: E402
from liverseg.training.render2d import render_minmax, render_window  # noqa: E402

WINDOWS = {"abdomen W400/L40": (400, 40), "liver W150/L60": (150, 60), "full range (min-max)": "minmax"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LIVERSEG_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--case", default="3Dircadb1.17")
    ap.add_argument("--model-2d", nargs="+", default=["liver-tumor-2d"], help="2D bundles (bundled name or folder)")
    ap.add_argument("--slices", type=int, nargs=2, default=[100, 115], metavar=("A", "B"), help="axial slices A..B")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # each 8-bit slice warns that it has no HU and no pixel size
    from liverseg.inference.predictor import Predictor

    case = next((c for c in find_cases(Path(args.data) / "labeled") if c.case_id == args.case), None)
    if case is None:
        sys.stderr.write(f"case {args.case} not found under {args.data}/labeled\n")
        return 2
    ct, ref = case.load()
    zs = range(max(0, args.slices[0]), min(ct.array.shape[0], args.slices[1] + 1))
    print(f"False liver pixels (predicted liver outside the reference liver) on {args.case} slices "
          f"{zs.start}-{zs.stop - 1}, per window; per slice in thousands\n")
    print("| bundle | window | false liver pixels | per slice (k) |\n|---|---|---|---|")
    for model in args.model_2d:
        predictor = Predictor("liver-tumor-3d", model_2d=model, threads=args.threads)
        for name, window in WINDOWS.items():
            per = []
            for z in zs:
                hu = ct.array[z].astype(np.float32)
                pixels = render_minmax(hu) if window == "minmax" else render_window(hu, width_hu=window[0],
                                                                                    level_hu=window[1])
                image = Volume(array=np.asarray(pixels, np.uint8)[None], spacing=None, modality="CT", is_hu=False)
                pred = predictor.predict(image).labels.array[0] > 0
                per.append(int((pred & ~(ref.array[z] > 0)).sum()))
            print(f"| {model} | {name} | {sum(per)} | {', '.join(str(round(n / 1000)) for n in per)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
