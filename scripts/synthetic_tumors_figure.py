"""Make docs/synthetic_tumors.png: synthetic liver lesions on real livers beside real lesions.

Top row: real lesions (3D-IRCADb 17, the LiTS crop). Lower rows: lesions painted by
:class:`liverseg.training.SyntheticTumors` into real tumor-free livers (CHAOS, IRCADb 7,
tumor-free slices of IRCADb 17), at several sizes. Abdominal window (W 400, L 40). Each
panel is shown twice: plain, and with the lesion outline, so the plain one can be judged by
eye.

    .venv/bin/python scripts/synthetic_tumors_figure.py [--data ../shared/data] [--out docs/synthetic_tumors.png]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from liverseg.training import SyntheticTumors, find_cases  # noqa: E402

WINDOW = (-160.0, 240.0)  # W 400, L 40


def _liver_view(ct: np.ndarray, lab: np.ndarray, z: int, margin: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Axial slice z cropped to the liver's in-plane box (+ margin) of that slice."""
    m = lab[z] > 0
    ys, xs = np.nonzero(m)
    y0, y1 = max(0, ys.min() - margin), min(m.shape[0], ys.max() + margin)
    x0, x1 = max(0, xs.min() - margin), min(m.shape[1], xs.max() + margin)
    return ct[z, y0:y1, x0:x1], lab[z, y0:y1, x0:x1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "synthetic_tumors.png")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cases = {c.case_id: c for c in find_cases(args.data / "labeled", spacing_overrides={"lits-117": (1.6, 1.6, 1.6)})}
    loaded = {k: cases[k].load() for k in ("3Dircadb1.17", "3Dircadb1.7", "chaos-ct-sample", "lits-117")}

    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    # real lesions: IRCADb 17 (largest and a small cross-section), LiTS crop
    ct, lab = (v.array for v in loaded["3Dircadb1.17"])
    area = (lab == 2).sum(axis=(1, 2))
    z_big = int(np.argmax(area))
    liver_area = (lab > 0).sum(axis=(1, 2))
    # a small lesion section on a slice with plenty of liver around it
    small = np.flatnonzero((area > 0) & (area < 0.05 * liver_area))
    z_small = int(small[np.argmax(liver_area[small])]) if len(small) else z_big
    panels.append(("real: IRCADb 17", *_liver_view(ct, lab, z_big)))
    panels.append(("real: IRCADb 17 (small section)", *_liver_view(ct, lab, z_small)))
    ct, lab = (v.array for v in loaded["lits-117"])
    area = (lab == 2).sum(axis=(1, 2))
    panels.append(("real: LiTS 117 (crop)", *_liver_view(ct, lab, int(np.argmax(area)), margin=5)))

    # synthetic lesions at several sizes on tumor-free livers
    rng = np.random.default_rng(args.seed)
    hosts = ["chaos-ct-sample", "3Dircadb1.7", "3Dircadb1.17", "chaos-ct-sample", "3Dircadb1.7", "chaos-ct-sample"]
    radii = [2.0, 5.0, 9.0, 14.0, 22.0, 30.0]
    for host, r in zip(hosts, radii):
        ct_v, lab_v = loaded[host]
        ct, lab = ct_v.array, lab_v.array
        spacing = ct_v.spacing
        # a box around the liver's middle, away from any real tumor
        livz = np.flatnonzero((lab > 0).any(axis=(1, 2)))
        zc = int(livz[len(livz) // 2 + int(rng.integers(-len(livz) // 6, len(livz) // 6 + 1))])
        half = int(np.ceil(45.0 / spacing[0]))
        z0, z1 = max(0, zc - half), min(ct.shape[0], zc + half + 1)
        sub_ct, sub_lab = ct[z0:z1].astype(np.float32), lab[z0:z1].copy()
        sub_lab[sub_lab == 2] = 0  # never paint over a real lesion (IRCADb 17)
        synth = SyntheticTumors(probability=1.0, max_count=1, radius_mm=(r, r))
        for _ in range(20):
            img2, lab2, info = synth.generate(sub_ct, (sub_lab > 0).astype(np.uint8), spacing, rng, force=True)
            if info:
                break
        z = info[0].centre[0]
        lab2 = np.where((lab2 == 2), 2, np.where(sub_lab > 0, 1, 0)).astype(np.uint8)
        title = f"synthetic: {host}, {info[0].diameter_mm:.0f} mm, {info[0].delta_hu:+.0f} HU"
        panels.append((title, *_liver_view(img2, lab2, z)))

    n = len(panels)
    cols = 3
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.0 * cols * 2 / 1.3, 3.6 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for i, (title, img, lab) in enumerate(panels):
        r, c = divmod(i, cols)
        a0, a1 = axes[r, 2 * c], axes[r, 2 * c + 1]
        a0.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
        a0.set_title(title, fontsize=8)
        a1.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
        if (lab == 2).any():
            a1.contour(lab == 2, levels=[0.5], colors="yellow", linewidths=0.7)
        a1.contour(lab > 0, levels=[0.5], colors="cyan", linewidths=0.5)
        a1.set_title("outline (cyan liver, yellow lesion)", fontsize=7)
    fig.suptitle("Real liver lesions (top row) and synthetic ones (liverseg.training.SyntheticTumors); W400 L40", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
