"""Upload to dashboard, and studies per hour with several users at once (issue 14, item 4).

The web app is built in this process (``create_app`` with one worker thread, SQLite, files on
disk, the bundled models) and driven through Flask's test client as a browser would: sign in,
POST the upload (the zip's bytes), poll ``status.json`` every 0.1 s until the study is done,
then load the dashboard page, its ``data.json`` and the slice image it shows first. Reported:
seconds from the upload's start to the dashboard's last byte, split into upload (the request
that stores the files), queue + job (until ``status.json`` says done) and dashboard (the three
requests). The app's worker pool is warmed first, as ``liverseg serve`` does at start
(``--no-warm-up``: the first study pays the Predictor build and model load instead); later
studies are what users of a running server see. HTTP transport is left out (loopback).

``--burst N``: after those, N users upload the same scan at once (N uploads posted back to back),
and each study's upload → dashboard time, the whole burst's wall time and the throughput
(studies per hour = N / wall × 3600) are reported. With ``--workers 2 --threads 1`` two jobs run
side by side, one core each; with ``--workers 1 --threads 2`` they queue and each gets both
cores. Compare the two on the same machine.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/web_speed.py --threads 2 [--input path.zip] [--studies 2]
    .venv/bin/python benchmarks/web_speed.py --workers 2 --threads 1 --studies 1 --burst 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIVERSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_INPUT = DATA / "labeled" / "3Dircadb1.17" / "PATIENT_DICOM.zip"
PASSWORD = "speed-test-password-1"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if not m:
        raise RuntimeError("the page has no CSRF token")
    return m.group(1)


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--studies", type=int, default=2, help="uploads one after another (the first one is cold)")
    ap.add_argument("--workers", type=int, default=1, help="job worker threads of the app")
    ap.add_argument("--burst", type=int, default=0, help="then this many uploads at once (studies per hour)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="upload at once instead of after the pool's warm-up (what `liverseg serve --no-warm-up` does)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.input.is_file():
        sys.stderr.write(f"no input at {args.input}; pass --input or set LIVERSEG_SHARED_DATA\n")
        return 2
    from liverseg.inference import Predictor
    from liverseg.web import create_app
    from liverseg.web.auth import create_user

    payload = args.input.read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="liverseg-web-speed-") as tmp:
        # no job time limit: the server's (40 s + 7.5 s per MiB) stopped a slice's first job on the
        # overloaded 2-core development machine; a measurement must finish to say how long it took
        app = create_app(data_dir=Path(tmp) / "data", workers=args.workers, secure_cookies=False, job_timeout_s=None,
                         predictor_factory=lambda: Predictor(threads=args.threads))
        warm_s = None
        if not args.no_warm_up:  # as `liverseg serve` does once its jobs start; the first upload comes after it
            t_w = time.perf_counter()
            app.extensions["liverseg"].pool.warm_up().join()
            warm_s = round(time.perf_counter() - t_w, 2)
            sys.stderr.write(f"warm-up {warm_s} s\n")
        create_user(app.extensions["liverseg"].store, name="speed", password=PASSWORD)
        client = app.test_client()
        page = client.get("/login").text
        client.post("/login", data={"username": "speed", "password": PASSWORD, "csrf_token": _csrf(page)})
        for n in range(args.studies):
            load_before = [round(v, 2) for v in os.getloadavg()]
            token = _csrf(client.get("/upload").text)
            t0 = time.perf_counter()
            r = client.post("/upload", data={"csrf_token": token, "note": "", "files": [(io.BytesIO(payload), args.input.name)]},
                            headers={"Accept": "application/json"}, content_type="multipart/form-data")
            if r.status_code != 202:
                sys.stderr.write(f"upload refused: {r.status_code} {r.get_data(as_text=True)[:300]}\n")
                return 1
            study_id = r.get_json()["id"]
            t_uploaded = time.perf_counter()
            while True:
                status = client.get(f"/studies/{study_id}/status.json").get_json()
                if status["status"] in ("done", "failed"):
                    break
                time.sleep(0.1)
            t_done = time.perf_counter()
            if status["status"] != "done":
                sys.stderr.write(f"study failed: {status.get('error')}\n")
                return 1
            dash = client.get(f"/studies/{study_id}")
            data = client.get(f"/studies/{study_id}/data.json")
            png = client.get(f"/studies/{study_id}/slice/0.png?overlay=1")  # the first slice render loads the volumes
            t_dash = time.perf_counter()
            report = client.get(f"/studies/{study_id}/files/report.json").get_json() or {}
            timings = report.get("run", {}).get("timings_s") or {}
            rows.append({
                "study": n + 1, "upload_s": round(t_uploaded - t0, 2), "queue_and_job_s": round(t_done - t_uploaded, 2),
                "dashboard_s": round(t_dash - t_done, 2), "upload_to_dashboard_s": round(t_dash - t0, 2),
                "dashboard_status": [dash.status_code, data.status_code, png.status_code], "job_timings_s": timings,
                "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
            })
            sys.stderr.write(json.dumps(rows[-1]) + "\n")
        burst = _burst(client, payload, args.input.name, args.burst) if args.burst else None
        app.extensions["liverseg"].pool.stop()
    sys.stdout.write("| study | upload s | queue + job s | dashboard s | upload → dashboard s | load average (1 min) |\n")
    sys.stdout.write("|---|---|---|---|---|---|\n")
    for r in rows:
        first = (" (cold worker)" if args.no_warm_up else " (after the warm-up)") if r["study"] == 1 else ""
        sys.stdout.write(f"| {r['study']}{first} | {r['upload_s']:.2f} | "
                         f"{r['queue_and_job_s']:.2f} | {r['dashboard_s']:.2f} | {r['upload_to_dashboard_s']:.2f} | "
                         f"{r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f} |\n")
    if burst:
        sys.stdout.write(f"\n{args.burst} uploads at once, {args.workers} worker(s) × {args.threads} thread(s): "
                         f"{burst['wall_s']:.1f} s for all, **{burst['studies_per_hour']:.0f} studies per hour**; "
                         f"upload → dashboard per study {', '.join(f'{t:.1f}' for t in burst['upload_to_dashboard_s'])} s "
                         f"(load average {burst['load_average_before'][0]:.1f} → {burst['load_average_after'][0]:.1f})\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"studies": rows, "burst": burst, "workers": args.workers,
                                               "threads": args.threads, "warm_up_s": warm_s}, indent=2))
    return 0


def _burst(client, payload: bytes, name: str, n: int) -> dict:  # noqa: ANN001
    """``n`` uploads posted back to back, then each study polled until done and its dashboard loaded."""
    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    started, ids = [], []
    for _ in range(n):
        token = _csrf(client.get("/upload").text)
        started.append(time.perf_counter())
        r = client.post("/upload", data={"csrf_token": token, "note": "", "files": [(io.BytesIO(payload), name)]},
                        headers={"Accept": "application/json"}, content_type="multipart/form-data")
        if r.status_code != 202:
            raise RuntimeError(f"upload refused: {r.status_code} {r.get_data(as_text=True)[:300]}")
        ids.append(r.get_json()["id"])
    finished: dict[int, float] = {}
    while len(finished) < n:
        for i, sid in enumerate(ids):
            if i in finished:
                continue
            status = client.get(f"/studies/{sid}/status.json").get_json()
            if status["status"] == "failed":
                raise RuntimeError(f"study {sid} failed: {status.get('error')}")
            if status["status"] == "done":
                client.get(f"/studies/{sid}")
                client.get(f"/studies/{sid}/data.json")
                finished[i] = time.perf_counter()
        time.sleep(0.1)
    wall = max(finished.values()) - t0
    out = {"n": n, "wall_s": round(wall, 2), "studies_per_hour": round(n / wall * 3600, 1),
           "upload_to_dashboard_s": [round(finished[i] - started[i], 2) for i in range(n)],
           "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    sys.stderr.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
