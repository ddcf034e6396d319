"""Time what a saved correction costs on a whole-CT grid: the surface meshes, and every output re-measured.

A synthetic 119 x 512 x 512 case (0.7 x 0.7 x 1.6 mm, the grid of 3D-IRCADb 1.17) with an ellipsoid
liver of about 3.3 L and three spherical lesions stands in for a real mask; the CT is noise.

    .venv/bin/python benchmarks/correction_speed.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from liverseg.inference.remeasure import remeasure_case
from liverseg.io import Volume
from liverseg.reporting.meshes import build_meshes


def synthetic_case() -> tuple[Volume, Volume]:
    shape, spacing = (119, 512, 512), (1.6, 0.7, 0.7)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    lab = np.zeros(shape, np.uint8)
    liver = ((z - 60) * 1.6 / 80) ** 2 + ((y - 250) * 0.7 / 90) ** 2 + ((x - 200) * 0.7 / 110) ** 2 <= 1
    lab[liver] = 1
    for (cz, cy, cx), r in (((60, 250, 200), 20), ((40, 230, 150), 8), ((80, 280, 250), 12)):
        ball = ((z - cz) * 1.6) ** 2 + ((y - cy) * 0.7) ** 2 + ((x - cx) * 0.7) ** 2 <= r * r
        lab[ball & liver] = 2
    rng = np.random.default_rng(0)
    hu = (rng.normal(0, 20, shape) + np.where(lab == 1, 60, np.where(lab == 2, 20, -100))).astype(np.int16)
    ct = Volume(array=hu, spacing=spacing, modality="CT", is_hu=True)
    return ct, ct.with_array(lab, is_hu=False, modality="SEG")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the timings here")
    args = ap.parse_args()
    ct, labels = synthetic_case()
    t0 = time.perf_counter()
    meshes = build_meshes(labels)
    t_mesh = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        doc = remeasure_case(ct=ct, labels=labels, out_dir=Path(tmp) / "v2",
                             run_info={"model": {"name": "benchmark", "sha256": "0" * 64}},
                             edit={"version": 2, "edited_by": "benchmark"})
        t_all = time.perf_counter() - t0
        sizes = {p.name: p.stat().st_size for p in (Path(tmp) / "v2").iterdir()}
    result = {
        "shape_zyx": list(ct.shape),
        "meshes_s": round(t_mesh, 2),
        "faces": {m.name: int(len(m.faces)) for m in meshes},
        "remeasure_s": round(t_all, 2),
        "remeasure_stages_s": doc["run"]["remeasure_timings_s"],
        "mesh_bytes": sum(v for k, v in sizes.items() if k.startswith("mesh")),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
