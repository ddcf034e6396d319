"""Speed and memory of a whole case, cold and warm, on the real CTs in ../shared/data (issue 14).

For each input (default: a 3D DICOM zip, 3D-IRCADb 17 (512 × 512 × 119); a NIfTI,
TotalSegmentator's example CT; a 2D JPEG slice of the MSD liver set):

* **cold**: a fresh process runs ``liverseg predict INPUT -o TMP --threads N`` (Python start-up,
  imports, model loading and every output file included); wall time from launch to exit, and
  its peak RSS (``wait4``'s ``ru_maxrss``);
* **warm**: one process builds a :class:`~liverseg.inference.Predictor`, ``load()``s it and runs
  ``run_case`` once, then the *second* ``run_case`` is timed; peak RSS of that process.
  ``warm-nopdf`` does the same with ``run_case(..., pdf=False)``, what a web worker pays per study
  (its report.pdf is drawn on the first download).

Each line gives every stage of report.json's ``run.timings_s`` (read, load_model, localize +
segment = the network, resample, postprocess, analyze, write), the wall time, the ratio of the
whole to the network time, and the load average (``os.getloadavg``) before and after: the
development machine's 2 cores are shared, so compare ratios, not seconds, across runs.
``--tta`` adds runs with mirroring; ``--engines`` the PyTorch vs ONNX Runtime forward of each stage.

Like ``liverseg predict``, the runs use ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: with
OpenMP threads spinning, a loaded 2-core machine made torch's forward up to 30× slower.

Targets (issue 14): cold ``liverseg predict`` of the zip ≤ 12 s, ≤ 2 × its network time, peak
RSS ≤ 1.5 GB; warm ``Predictor`` + ``run_case`` ≤ 6 s.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_speed.py --threads 2 --json speed.json --markdown speed.md
    .venv/bin/python benchmarks/predict_speed.py --inputs 3Dircadb1.17 --runs cold     # one input, cold only
    .venv/bin/python benchmarks/predict_speed.py --engines --no-cases                  # only PyTorch vs ONNX Runtime
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
INPUTS = {
    "3Dircadb1.17": "labeled/3Dircadb1.17/PATIENT_DICOM.zip",
    "totalseg-example": "unlabeled/totalsegmentator-example/example_ct.nii.gz",
    "msd-slice": "slices2d/msd-liver-jpg/images",  # the first JPEG of the folder
    "3Dircadb1.7": "labeled/3Dircadb1.7/PATIENT_DICOM.zip",
    "chaos-ct-sample": "labeled/chaos-ct-sample/DICOM_anon",
    "lits-117-crop": "labeled/lits-117-crop/volume-117.nii.gz",
}
DEFAULT_INPUTS = "3Dircadb1.17,totalseg-example,msd-slice"
STAGES = ("read", "load_model", "localize", "segment", "resample", "postprocess", "analyze", "write")


def _input_path(name: str) -> Path:
    path = DATA / INPUTS[name]
    if path.is_dir() and name == "msd-slice":
        return sorted(path.glob("*.jpg"))[0]
    return path


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `liverseg predict` does
    return env


# ---------------------------------------------------------------------------- cold: `liverseg predict` in a fresh process

def _cold(args: argparse.Namespace, path: Path, *, tta: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="liverseg-speed-") as tmp:
        cmd = [sys.executable, "-m", "liverseg.cli", "predict", str(path), "-o", tmp, "--model", args.model,
               "--model-2d", args.model_2d, "--threads", str(args.threads), "--overlap", str(args.overlap),
               "--engine", args.engine] + (["--tta"] if tta else [])
        log_path = Path(tmp) / "predict.log"  # a file, not a pipe: wait4 must not wait on a full pipe
        before = _loadavg()
        with open(log_path, "w") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
            wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reports = list(Path(tmp).glob("*/report.json"))
        if proc.returncode != 0 or not reports:
            return {"error": log_path.read_text().strip().splitlines()[-1:], "wall_s": round(wall, 2)}
        doc = json.loads(reports[0].read_text())
        return _row(doc, wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, load_before=before)


# ---------------------------------------------------------------------------- warm: a second run_case in one process

def _warm_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from liverseg.inference import Predictor, run_case

    predictor = Predictor(args.model, model_2d=args.model_2d, threads=args.threads, tta=True if args.tta else None,
                          overlap=args.overlap, engine=args.engine).load()
    pdf = not args.no_pdf
    with tempfile.TemporaryDirectory(prefix="liverseg-speed-") as tmp:
        run_case(args.one, Path(tmp) / "first", predictor=predictor, pdf=pdf)
        t0 = time.perf_counter()
        doc = run_case(args.one, Path(tmp) / "second", predictor=predictor, pdf=pdf)
        wall = time.perf_counter() - t0
    doc["_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write("RESULT " + json.dumps({"run": doc["run"], "_wall_s": wall, "_peak_rss_mb": doc["_peak_rss_mb"]}) + "\n")


def _warm(args: argparse.Namespace, path: Path, *, tta: bool, pdf: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(path), "--model", args.model, "--model-2d", args.model_2d,
           "--threads", str(args.threads), "--overlap", str(args.overlap), "--engine", args.engine] + (
        ["--tta"] if tta else []) + ([] if pdf else ["--no-pdf"])
    before = _loadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    doc = json.loads(lines[-1][len("RESULT "):])
    return _row(doc, wall_s=doc["_wall_s"], peak_rss_mb=doc["_peak_rss_mb"], load_before=before)


def _row(doc: dict[str, Any], *, wall_s: float, peak_rss_mb: float, load_before: list[float]) -> dict[str, Any]:
    run = doc["run"]
    st = {k: float(v) for k, v in run.get("timings_s", {}).items()}
    network = st.get("localize", 0.0) + st.get("segment", 0.0)
    return {
        "shape": run.get("input_description", {}).get("shape_zyx"),
        "stages_s": {k: round(st.get(k, 0.0), 3) for k in STAGES},
        "network_s": round(network, 3),
        "wall_s": round(wall_s, 3),
        "whole_over_network": round(wall_s / network, 2) if network > 0 else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "model": run.get("model", {}).get("name"),
        "sha256": (run.get("model", {}).get("sha256") or "")[:12],
    }


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
        f"Machine: {meta['cpu']} ({meta['cores']} cores), {meta['threads']} torch threads, torch {meta['torch']}; "
        f"models {meta['models']}; load average {meta['load_average_start']} at the start, "
        f"{meta['load_average_end']} at the end.",
        "",
        "| input | shape (z, y, x) | run | TTA | wall s | network s | whole / network | read | load model | resample | "
        "postprocess | analyze | write | peak RSS MB | load average (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tta = "all axes" if r["tta"] else "model's own"
        if "error" in r:
            lines.append(f"| {r['label']} | | {r['run']} | {tta} | failed: {r['error']} |||||||||||")
            continue
        st = r["stages_s"]
        shape = " × ".join(map(str, r["shape"])) if r.get("shape") else ""
        lines.append(
            f"| {r['label']} | {shape} | {r['run']} | {tta} | {r['wall_s']:.2f} | {r['network_s']:.2f} | "
            f"{r['whole_over_network'] if r['whole_over_network'] is not None else '—'} | {st['read']:.2f} | "
            f"{st['load_model']:.2f} | {st['resample']:.2f} | {st['postprocess']:.2f} | {st['analyze']:.2f} | "
            f"{st['write']:.2f} | {r['peak_rss_mb']:.0f} | {r['load_average_before'][0]:.1f} → "
            f"{r['load_average_after'][0]:.1f} |"
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
    ap.add_argument("--inputs", default=DEFAULT_INPUTS, help=f"comma-separated names from {list(INPUTS)}, or 'all'")
    ap.add_argument("--runs", default="cold,warm",
                    help="comma-separated: 'cold', 'warm' (run_case with the PDF, as liverseg predict), "
                         "'warm-nopdf' (as a web job: the PDF is drawn on first download)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--tta", action="store_true", help="also measure with mirroring TTA")
    ap.add_argument("--no-cases", action="store_true", help="skip the case runs (e.g. with --engines)")
    ap.add_argument("--engines", action="store_true", help="also compare PyTorch and ONNX Runtime per stage")
    ap.add_argument("--engine-repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-pdf", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _warm_child(args)
        return 0
    if not DATA.is_dir():
        sys.stderr.write(f"no data at {DATA}; set LIVERSEG_SHARED_DATA\n")
        return 2
    names = list(INPUTS) if args.inputs == "all" else [c.strip() for c in args.inputs.split(",") if c.strip()]
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        sys.stderr.write(f"unknown inputs {unknown}; choose from {list(INPUTS)}\n")
        return 2
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    start = _loadavg()
    results: list[dict[str, Any]] = []
    for name in [] if args.no_cases else names:
        path = _input_path(name)
        for tta in (False, True) if args.tta else (False,):
            for run in runs:
                if run == "cold":
                    r = _cold(args, path, tta=tta)
                else:  # "warm": as liverseg predict writes (the PDF too); "warm-nopdf": as a web job does
                    r = _warm(args, path, tta=tta, pdf=run != "warm-nopdf")
                r.update(label=name if name != "msd-slice" else f"slice {path.name}", run=run, tta=tta)
                results.append(r)
                sys.stderr.write(f"{name} {run} tta={tta}: {json.dumps(r)}\n")
    engines = _engines(args) if args.engines else []
    import torch

    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "models": f"{args.model} + {args.model_2d}",
            "load_average_start": start, "load_average_end": _loadavg()}
    md = _markdown(results, engines, meta)
    sys.stdout.write(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "engines": engines}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
