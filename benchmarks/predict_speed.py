"""End-to-end prediction speed and memory on the real CTs in ../shared/data.

For each scan (default: 3D-IRCADb 17, 512 × 512 × 119 DICOM) and each setting (without and
with mirroring TTA), one fresh subprocess reads the scan and predicts it with the bundled
models, reporting the time of every step and its peak resident memory (``ru_maxrss``, which
includes the Python + torch runtime). A 2D slice (a JPEG of the MSD liver set) is timed the
same way, warm (the median of several predictions after the first).

Then the network forward of every stage is timed in PyTorch and in ONNX Runtime on one
window of the stage's patch size (the networks are exported with ``torch.onnx.export`` into
a temporary folder), to decide which engine the Predictor should use on CPU.

Like ``liverseg predict``, the runs use ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: with
OpenMP threads spinning, a loaded 2-core machine made torch's forward up to 30× slower.

Targets (issue 5): a whole CT ≤ 15 s and ≤ 3 GB without TTA; a slice ≤ 0.3 s.

Usage::

    .venv/bin/python benchmarks/predict_speed.py                         # bundled models, 2 threads
    .venv/bin/python benchmarks/predict_speed.py --model path/to/bundle --model-2d path/to/2d-bundle
    .venv/bin/python benchmarks/predict_speed.py --cases all --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIVERSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
CASES = {
    "3Dircadb1.17": "labeled/3Dircadb1.17/PATIENT_DICOM.zip",
    "3Dircadb1.7": "labeled/3Dircadb1.7/PATIENT_DICOM.zip",
    "chaos-ct-sample": "labeled/chaos-ct-sample/DICOM_anon",
    "lits-117-crop": "labeled/lits-117-crop/volume-117.nii.gz",
    "totalseg-example": "unlabeled/totalsegmentator-example/example_ct.nii.gz",
}
SLICE = "slices2d/msd-liver-jpg/images"


# ---------------------------------------------------------------------------- one measurement (child)

def _child(args: argparse.Namespace) -> None:
    """Read + predict one input; print one JSON line with timings and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from liverseg.inference import Predictor
    from liverseg.io import read_volume

    predictor = Predictor(args.model, model_2d=args.model_2d, threads=args.threads, tta=args.tta,
                          overlap=args.overlap, engine=args.engine)
    t0 = time.perf_counter()
    predictor.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ct = read_volume(args.one)
    read_s = time.perf_counter() - t0
    repeats = max(1, args.repeats)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = predictor.predict(ct)
        runs.append((time.perf_counter() - t0, pred))
    if repeats > 1:  # warm timing: drop the first run
        runs = runs[1:]
    total, pred = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    out = {
        "input": args.one,
        "shape": list(ct.shape),
        "spacing_mm": list(ct.spacing) if ct.spacing else None,
        "tta": args.tta,
        "engine": args.engine,
        "threads": args.threads,
        "load_model_s": round(load_s, 3),
        "read_s": round(read_s, 3),
        "predict_s": round(total, 3),
        "end_to_end_s": round(read_s + total, 3),
        "stages_s": pred.timings_s,
        "roi": pred.roi,
        "liver_voxels": int((pred.labels.array > 0).sum()),
        "tumor_voxels": int((pred.labels.array == 2).sum()),
        "warnings": pred.warnings,
        "model": {k: pred.model[k] for k in ("name", "sha256", "kind")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_import_mb": round(rss_start_kb / 1024, 1),
    }
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")


def _measure(args: argparse.Namespace, path: Path, *, tta: bool, repeats: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(path), "--model", args.model, "--model-2d", args.model_2d,
           "--threads", str(args.threads), "--overlap", str(args.overlap), "--engine", args.engine,
           "--repeats", str(repeats)] + (["--tta"] if tta else [])
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `liverseg predict` does
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"input": str(path), "tta": tta, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------- torch vs ONNX Runtime

def _engines(args: argparse.Namespace) -> list[dict[str, Any]]:
    import warnings

    import numpy as np
    import onnxruntime as ort
    import torch

    from liverseg.models.bundle import load_bundle

    torch.set_num_threads(args.threads)
    rows = []
    for source in (args.model, args.model_2d):
        bundle = load_bundle(source)
        for stage in bundle.stages:
            net = bundle.build(stage)
            x = torch.randn(1, 1, *stage.plan.patch_size)
            with torch.no_grad():
                net(x)
                times = []
                for _ in range(args.engine_repeats):
                    t0 = time.perf_counter()
                    ref = net(x)
                    times.append(time.perf_counter() - t0)
            torch_s = statistics.median(times)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "net.onnx"
                t0 = time.perf_counter()
                with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
                    warnings.simplefilter("ignore")
                    old = sys.stdout
                    sys.stdout = devnull
                    try:
                        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                                          opset_version=17)
                    finally:
                        sys.stdout = old
                export_s = time.perf_counter() - t0
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                xn = x.numpy()
                y = sess.run(None, {"x": xn})[0]
                times = []
                for _ in range(args.engine_repeats):
                    t0 = time.perf_counter()
                    sess.run(None, {"x": xn})
                    times.append(time.perf_counter() - t0)
            rows.append({
                "bundle": bundle.name, "stage": stage.name, "architecture": stage.architecture,
                "patch": list(stage.plan.patch_size), "torch_s": round(torch_s, 4),
                "onnxruntime_s": round(statistics.median(times), 4), "export_s": round(export_s, 1),
                "max_abs_diff": float(np.abs(y - ref.numpy()).max()),
            })
    return rows


# ---------------------------------------------------------------------------- report

def _markdown(results: list[dict[str, Any]], engines: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Machine: {meta['cpu']} ({meta['cores']} cores), {meta['threads']} torch threads, torch {meta['torch']}, "
        f"onnxruntime {meta['onnxruntime']}; models {meta['models']}; load average {meta['load_average']}.",
        "",
        "| input | shape (z, y, x) | TTA | read s | localize s | segment s | resample + postprocess s | predict s | "
        "read + predict s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {Path(r['input']).name} | | {'yes' if r['tta'] else 'no'} | failed: {r['error']} |||||||")
            continue
        st = r["stages_s"]
        lines.append(
            f"| {r['label']} | {' × '.join(map(str, r['shape']))} | {'yes' if r['tta'] else 'no'} | {r['read_s']:.2f} | "
            f"{st.get('localize', 0):.2f} | {st.get('segment', 0):.2f} | "
            f"{st.get('resample', 0) + st.get('postprocess', 0):.2f} | {r['predict_s']:.2f} | "
            f"{r['end_to_end_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    if engines:
        lines += ["", "Network forward, one window (median):", "",
                  "| stage | patch | PyTorch s | ONNX Runtime s | export s | max abs diff |", "|---|---|---|---|---|---|"]
        for e in engines:
            lines.append(f"| {e['bundle']}/{e['stage']} | {' × '.join(map(str, e['patch']))} | {e['torch_s']:.3f} | "
                         f"{e['onnxruntime_s']:.3f} | {e['export_s']:.0f} | {e['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (engine comparison)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="liver-tumor-3d", help="3D bundle name or folder")
    ap.add_argument("--model-2d", default="liver-tumor-2d", help="2D bundle name or folder")
    ap.add_argument("--cases", default="3Dircadb1.17", help=f"comma-separated names from {list(CASES)}, or 'all'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--no-tta", action="store_true", help="skip the TTA runs")
    ap.add_argument("--no-engines", action="store_true", help="skip the PyTorch vs ONNX Runtime comparison")
    ap.add_argument("--engine-repeats", type=int, default=5)
    ap.add_argument("--engines-only", action="store_true", help="only the PyTorch vs ONNX Runtime comparison")
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _child(args)
        return 0
    if not DATA.is_dir():
        sys.stderr.write(f"no data at {DATA}; set LIVERSEG_SHARED_DATA\n")
        return 2
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    results: list[dict[str, Any]] = []
    for name in names if not args.engines_only else []:
        for tta in (False,) if args.no_tta else (False, True):
            r = _measure(args, DATA / CASES[name], tta=tta)
            r["label"] = name
            results.append(r)
            sys.stderr.write(f"{name} tta={tta}: {json.dumps(r)}\n")
    if not args.engines_only:
        slice_path = sorted((DATA / SLICE).glob("*.jpg"))[0]
        r = _measure(args, slice_path, tta=False, repeats=6)
        r["label"] = f"slice {slice_path.name} (warm)"
        results.append(r)
        sys.stderr.write(f"slice: {json.dumps(r)}\n")
    engines = [] if args.no_engines else _engines(args)
    import onnxruntime
    import torch

    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "models": f"{args.model} + {args.model_2d}", "load_average": [round(v, 1) for v in os.getloadavg()]}
    md = _markdown(results, engines, meta)
    sys.stdout.write(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "engines": engines}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
