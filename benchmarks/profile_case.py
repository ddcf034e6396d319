"""cProfile of one case end to end (``run_case``), cold or warm, with the top costs.

Cold: a fresh process runs ``liverseg predict`` under cProfile (imports, model loading,
reading, prediction, every output file). Warm: one Predictor is built and run once on the
case, then the second ``run_case`` is profiled (what a web worker pays per study).

The top functions by own time (``tottime``) and a fixed list of pipeline steps by cumulative
time are printed; ``--out PREFIX`` also keeps ``PREFIX.cold.prof`` / ``PREFIX.warm.prof`` for
``python -m pstats``. cProfile inflates Python-heavy code (import machinery, highdicom) more than
numpy/torch kernels: compare runs with each other, not with wall times measured without it.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_case.py --threads 2 --out /tmp/prof
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_case.py --warm-only --input path/to/ct.nii.gz
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIVERSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_INPUT = DATA / "labeled" / "3Dircadb1.17" / "PATIENT_DICOM.zip"

#: pipeline steps reported by cumulative time (substring of pstats' "file:line(function)")
STEPS = [
    "pipeline.py", "(run_case)", "(read_volume)", "(predict)", "(_run_stage)", "sliding_window",
    "(_labels_from_probs)", "(postprocess_labels)", "(drop_unconfident_lesions)", "(analyze)", "(write_mask)",
    "(_write_dicom_seg)", "(write_report_files)", "(write_overlay_png)", "(write_montage_png)", "(render_html)",
    "(write_report_pdf)", "(load_bundle)", "(sha256_file)", "(_net)", "(extract_zip)", "{built-in method builtins.__import__}",
]


def _summary(stats_path: Path, *, top: int, wall_s: float, label: str) -> str:
    st = pstats.Stats(str(stats_path))
    lines = [f"## {label}: {wall_s:.1f} s wall, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", "",
             f"Top {top} by own time (tottime):", "", "| own s | cumulative s | calls | function |", "|---|---|---|---|"]
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    for (file, line, fn), (cc, nc, tt, ct, _callers) in rows:
        where = f"{Path(file).name}:{line}({fn})" if file != "~" else fn
        lines.append(f"| {tt:.2f} | {ct:.2f} | {nc} | `{where}` |")
    lines += ["", "Steps by cumulative time:", "", "| cumulative s | function |", "|---|---|"]
    seen: dict[str, float] = {}
    for (file, line, fn), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        name = f"{Path(file).name}:{line}({fn})" if file != "~" else fn
        if "liverseg" in file or file == "~":
            for step in STEPS:
                if step in name or (step.startswith("{") and fn == step):
                    seen[name] = max(seen.get(name, 0.0), ct)
    for name, ct in sorted(seen.items(), key=lambda kv: -kv[1])[:30]:
        if ct >= 0.05:
            lines.append(f"| {ct:.2f} | `{name}` |")
    return "\n".join(lines) + "\n"


def _cold(args: argparse.Namespace, prof: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "liverseg.cli", "predict", str(args.input),
               "-o", tmp, "--model", args.model]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def _warm(args: argparse.Namespace, prof: Path) -> float:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from liverseg.inference import Predictor, run_case

    predictor = Predictor(args.model, threads=args.threads).load()
    with tempfile.TemporaryDirectory() as tmp:
        run_case(args.input, Path(tmp) / "first", predictor=predictor)
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        run_case(args.input, Path(tmp) / "second", predictor=predictor)
        profiler.disable()
        wall = time.perf_counter() - t0
    profiler.dump_stats(str(prof))
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="a case (default: 3D-IRCADb 17's DICOM zip)")
    ap.add_argument("--model", default="liver-tumor-3d")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="keep PREFIX.cold.prof / PREFIX.warm.prof")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--cold-only", action="store_true")
    group.add_argument("--warm-only", action="store_true")
    args = ap.parse_args()
    if not args.input.exists():
        sys.stderr.write(f"no input at {args.input}; pass --input or set LIVERSEG_SHARED_DATA\n")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(args.out) if args.out else Path(tmp) / "profile"
        if not args.warm_only:
            wall = _cold(args, Path(f"{prefix}.cold.prof"))
            sys.stdout.write(_summary(Path(f"{prefix}.cold.prof"), top=args.top, wall_s=wall,
                                      label=f"cold `liverseg predict {args.input.name}` under cProfile"))
        if not args.cold_only:
            wall = _warm(args, Path(f"{prefix}.warm.prof"))
            sys.stdout.write(_summary(Path(f"{prefix}.warm.prof"), top=args.top, wall_s=wall,
                                      label=f"warm second `run_case` of {args.input.name} under cProfile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
