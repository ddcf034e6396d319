"""Follow-up comparisons in the web app: pick an earlier study, compare, look at both scans side by side.

Pages (session cookie + CSRF): ``GET /studies/<id>/compare`` lists the user's earlier finished
studies (the same patient when the DICOM headers say so) and ``POST`` starts a comparison with
this study as the follow-up; ``GET /comparisons/<cid>`` shows the response, the rules' inputs,
the lesion change table and the two scans side by side, scrolled together in the baseline's
(registered) space, from PNG slices rendered per request. REST (Bearer tokens):
``POST /api/comparisons`` ``{"baseline": id, "followup": id}`` → 202, ``GET /api/comparisons/<cid>``.

A comparison runs in a background thread (one at a time per server; a 512×512×119 scan takes
about half a minute on two busy cores, see the README), with its state in
``<data_dir>/comparisons/<cid>/meta.json`` and its files (``liverseg.analysis.compare``'s
comparison.json, lesion_changes.csv, lesion_pairs.png, comparison.html, comparison.pdf) and
the transform (``transform.tfm``) beside it, written all or nothing. Only the owner of both
studies may compare them or see the result; anyone else gets 404, as for studies. Each study
is compared as its newest mask version (corrections included). Deleting a study (or its user)
deletes the comparisons made from it (:func:`delete_comparisons_of`, called by the views).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, send_file, url_for

from liverseg.web.api import token_required
from liverseg.web.store import Study
from liverseg.web.views import ctx, login_required

__all__ = ["bp", "api_bp", "ComparisonRunner", "run_comparison", "COMPARISONS_DIR", "COMPARISON_FILES"]

log = logging.getLogger(__name__)

bp = Blueprint("compare", __name__)
api_bp = Blueprint("compare_api", __name__, url_prefix="/api")

COMPARISONS_DIR = "comparisons"
META = "meta.json"
TRANSFORM = "transform.tfm"
#: Downloadable files of a comparison: name -> (label, MIME type).
COMPARISON_FILES: dict[str, tuple[str, str]] = {
    "comparison.pdf": ("Comparison (PDF)", "application/pdf"),
    "comparison.html": ("Comparison (HTML)", "text/html"),
    "comparison.json": ("Comparison (JSON)", "application/json"),
    "lesion_changes.csv": ("Lesion changes (CSV)", "text/csv"),
    "lesion_pairs.png": ("Lesions side by side (PNG)", "image/png"),
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def comparison_dir(data_dir: Path, cid: str) -> Path:
    if not cid.isalnum():
        raise ValueError(f"invalid comparison id {cid!r}")
    return Path(data_dir) / COMPARISONS_DIR / cid


def _read_meta(data_dir: Path, cid: str) -> dict[str, Any] | None:
    try:
        return json.loads((comparison_dir(data_dir, cid) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_meta(data_dir: Path, cid: str, meta: dict[str, Any]) -> None:
    path = comparison_dir(data_dir, cid) / META
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the job


def _newest_mask(data_dir: Path, study: Study) -> tuple[Path, dict[str, Any] | None, int]:
    """The newest mask version's file, its report.json, and its number."""
    from liverseg.web.corrections import list_versions, version_dir

    versions = list_versions(data_dir, study)
    number = versions[-1].number if versions else 1
    folder = version_dir(data_dir, study.id, number)
    report = None
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return folder / "mask.nii.gz", report, number


def _scan_of(data_dir: Path, study: Study, cache: Any) -> Any:
    from liverseg.analysis.compare import Scan, _read_mask, dicom_patient_id
    from liverseg.web.uploads import input_path

    ct, _ = cache.get(study.id)
    mask_path, report, _ = _newest_mask(data_dir, study)
    labels = _read_mask(mask_path, like=ct)
    return Scan(labels=labels, ct=ct, name=f"study {study.id}", patient_id=dicom_patient_id(input_path(data_dir, study.id)),
                report=report, source=study.id)


def run_comparison(cid: str, *, data_dir: Path, store: Any, cache: Any) -> dict[str, Any]:
    """Run comparison ``cid`` (its meta.json names the studies) and record the outcome in meta.json.

    A refusal (:class:`~liverseg.analysis.compare.ComparisonRefused`) is ``status: refused`` with the
    reason; an unreadable input ``failed`` with its message; anything else ``failed`` with
    "internal error (Type)". Never raises.
    """
    import SimpleITK as sitk

    from liverseg.analysis.compare import ComparisonRefused, compare, write_outputs
    from liverseg.errors import InputError

    meta = _read_meta(data_dir, cid) or {}
    meta.update(status="running", started_at=_now())
    _write_meta(data_dir, cid, meta)
    folder = comparison_dir(data_dir, cid)
    try:
        base = store.study(meta["baseline"], user_id=meta["user_id"])
        fu = store.study(meta["followup"], user_id=meta["user_id"])
        if base is None or fu is None:
            raise InputError("a study of this comparison was deleted")
        result = compare(_scan_of(data_dir, base, cache), _scan_of(data_dir, fu, cache))
        write_outputs(result, folder / "result")
        sitk.WriteTransform(result.registration.transform, str(folder / TRANSFORM))
        meta.update(status="done", response=result.response, counts=result.kinds(), seconds=round(result.seconds, 2),
                    error=None, code=None)
    except ComparisonRefused as exc:
        meta.update(status="refused", error=str(exc), code=exc.code)
    except InputError as exc:
        meta.update(status="failed", error=str(exc), code="input")
    except Exception as exc:  # noqa: BLE001 - the server goes on; the reason is stored
        log.error("comparison %s failed (%s)", cid, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        meta.update(status="failed", error=f"internal error ({type(exc).__name__})", code="internal")
    meta["finished_at"] = _now()
    _write_meta(data_dir, cid, meta)
    log.info("comparison %s: %s", cid, meta["status"])
    return meta


class ComparisonRunner:
    """One background thread running comparisons in submission order (``app.extensions['liverseg_compare']``)."""

    def __init__(self, *, data_dir: Path, store: Any, cache: Any) -> None:
        self.data_dir, self.store, self.cache = data_dir, store, cache
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="liverseg-compare")
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def submit(self, cid: str) -> concurrent.futures.Future:
        fut = self._pool.submit(run_comparison, cid, data_dir=self.data_dir, store=self.store, cache=self.cache)
        with self._lock:
            self._futures[cid] = fut
        return fut

    def is_running(self, cid: str) -> bool:
        with self._lock:
            fut = self._futures.get(cid)
        return fut is not None and not fut.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted comparison has finished (tests, shutdown)."""
        with self._lock:
            futures = list(self._futures.values())
        concurrent.futures.wait(futures, timeout=timeout)


def runner() -> ComparisonRunner:
    app = current_app
    r = app.extensions.get("liverseg_compare")
    if r is None:
        c = ctx()
        r = app.extensions.setdefault("liverseg_compare", ComparisonRunner(data_dir=c.data_dir, store=c.store, cache=c.cache))
    return r


# --------------------------------------------------------------------------- shared by pages and API


def _own_comparison(cid: str) -> dict[str, Any]:
    """The caller's comparison meta (404 for a missing one or another user's)."""
    meta = _read_meta(ctx().data_dir, cid) if cid.isalnum() else None
    if meta is None or meta.get("user_id") != g.user.id:
        abort(404)
    store = ctx().store
    if any(store.study(meta.get(k, ""), user_id=g.user.id) is None for k in ("baseline", "followup")):
        # a study it compares was deleted: what was derived from it goes too
        shutil.rmtree(comparison_dir(ctx().data_dir, cid), ignore_errors=True)
        abort(404)
    if meta.get("status") in ("queued", "running") and not runner().is_running(cid):
        # left behind by a server that stopped: say so instead of waiting forever
        meta.update(status="failed", error="interrupted (the server restarted); start the comparison again",
                    code="interrupted")
        _write_meta(ctx().data_dir, cid, meta)
        for leftover in comparison_dir(ctx().data_dir, cid).glob(".result.*"):  # a half-written result
            shutil.rmtree(leftover, ignore_errors=True)
    return meta


def start_comparison(user_id: int, baseline_id: str, followup_id: str) -> tuple[dict[str, Any] | None, str, int]:
    """Queue a comparison of two of the user's finished studies: ``(meta, error, HTTP status)``."""
    c = ctx()
    ids = [baseline_id, followup_id]
    if not all(isinstance(i, str) and i.isalnum() for i in ids):
        return None, "give two study ids: {\"baseline\": ID, \"followup\": ID}", 400
    studies = [c.store.study(i, user_id=user_id) for i in ids]
    if any(s is None for s in studies):
        return None, "not found", 404
    if baseline_id == followup_id:
        return None, "the baseline and the follow-up are the same study; choose two different studies", 400
    if any(s.status != "done" for s in studies):  # type: ignore[union-attr]
        return None, "both studies must be finished (status done) before they can be compared", 409
    cid = secrets.token_hex(8)
    folder = comparison_dir(c.data_dir, cid)
    folder.mkdir(parents=True, mode=0o700)
    meta = {"id": cid, "user_id": user_id, "baseline": baseline_id, "followup": followup_id,
            "created_at": _now(), "status": "queued", "error": None}
    _write_meta(c.data_dir, cid, meta)
    runner().submit(cid)
    return meta, "", 202


def comparison_json(meta: dict[str, Any], *, with_result: bool = False) -> dict[str, Any]:
    d = {k: meta.get(k) for k in ("id", "baseline", "followup", "created_at", "status", "error", "code", "response",
                                  "counts", "seconds", "finished_at")}
    if meta.get("status") == "done":
        folder = comparison_dir(ctx().data_dir, meta["id"]) / "result"
        d["files"] = [n for n in COMPARISON_FILES if (folder / n).is_file()]
        if with_result:
            try:
                d["result"] = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                d["result"] = None
    return d


def _send(meta: dict[str, Any], name: str, *, as_attachment: bool) -> Any:
    if name not in COMPARISON_FILES or meta.get("status") != "done":
        abort(404)
    path = comparison_dir(ctx().data_dir, meta["id"]) / "result" / name
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype=COMPARISON_FILES[name][1], as_attachment=as_attachment,
                     download_name=f"liverseg-comparison-{meta['id']}-{name}", max_age=0)


def _patient_key(study_id: str) -> str | None:
    from liverseg.analysis.compare import dicom_patient_id
    from liverseg.web.uploads import input_path

    try:
        return dicom_patient_id(input_path(ctx().data_dir, study_id))
    except (OSError, ValueError):
        return None


def candidates(study: Study) -> tuple[list[dict[str, Any]], int]:
    """Earlier finished studies of the same user to compare ``study`` with, and how many were hidden
    because their DICOM PatientID differs from this study's. Each row's lesion count is that of the
    study's newest mask version (the one a comparison uses), its number in ``version``."""
    from liverseg.web.corrections import shown_numbers

    own = _patient_key(study.id)
    out, hidden = [], 0
    for s in ctx().store.studies(user_id=g.user.id):
        if s.id == study.id or s.status != "done" or s.created_at >= study.created_at:
            continue
        other = _patient_key(s.id)
        if own is not None and other is not None and other != own:
            hidden += 1
            continue
        numbers, correction = shown_numbers(ctx().data_dir, s, store=ctx().store)
        out.append({"study": s, "same_patient": own is not None and other == own,
                    "patient_unknown": own is None or other is None,
                    "lesion_count": numbers.get("lesion_count"), "version": correction.number if correction else 1})
    out.sort(key=lambda x: (not x["same_patient"], x["study"].created_at), reverse=False)
    return out, hidden


# --------------------------------------------------------------------------- pages


@bp.route("/studies/<study_id>/compare", methods=["GET", "POST"])
@login_required
def pick(study_id: str) -> Any:
    study = ctx().store.study(study_id, user_id=g.user.id) if study_id.isalnum() else None
    if study is None or study.status != "done":
        abort(404)
    if request.method == "POST":
        meta, error, code = start_comparison(g.user.id, request.form.get("baseline", ""), study.id)
        if meta is None:
            if code == 404:
                abort(404)
            rows, hidden = candidates(study)
            return render_template("compare_pick.html", study=study, rows=rows, hidden=hidden, error=error), code
        return redirect(url_for("compare.view", cid=meta["id"]), code=303)
    rows, hidden = candidates(study)
    return render_template("compare_pick.html", study=study, rows=rows, hidden=hidden, error=None)


@bp.route("/comparisons/<cid>")
@login_required
def view(cid: str) -> Any:
    from liverseg.reporting.comparison import KIND_WORDS

    meta = _own_comparison(cid)
    result = None
    if meta.get("status") == "done":
        result = comparison_json(meta, with_result=True).get("result")
    files = [(n, COMPARISON_FILES[n][0]) for n in comparison_json(meta).get("files", [])]
    return render_template("compare_view.html", meta=meta, result=result, files=files, kind_words=KIND_WORDS)


@bp.route("/comparisons/<cid>/status.json")
@login_required
def status(cid: str) -> Any:
    return jsonify(comparison_json(_own_comparison(cid)))


@bp.route("/comparisons/<cid>/files/<name>")
@login_required
def download(cid: str, name: str) -> Any:
    return _send(_own_comparison(cid), name, as_attachment=request.args.get("inline") != "1")


def _registered_volumes(meta: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(baseline CT, baseline labels, follow-up CT, follow-up labels), the follow-up on the baseline's grid."""
    import SimpleITK as sitk

    from liverseg.analysis.registration import Registration

    c = ctx()
    cache = current_app.extensions.setdefault("liverseg_compare_views", {})
    key = meta["id"]
    if key in cache:
        return cache[key]
    studies = [c.store.study(meta[k], user_id=meta["user_id"]) for k in ("baseline", "followup")]
    if any(s is None for s in studies):
        abort(404)
    b, f = (_scan_of(c.data_dir, s, c.cache) for s in studies)
    tf = sitk.AffineTransform(sitk.ReadTransform(str(comparison_dir(c.data_dir, key) / TRANSFORM)))
    reg = Registration(transform=tf, steps=[], used_ct=True, grid_mm=0.0, liver_dice_after=0.0,
                       liver_surface_mean_mm=None, liver_surface_p95_mm=None, liver_surface_max_mm=None,
                       followup_fov_covers_baseline_liver=0.0, seconds=0.0)
    value = (b.ct, b.labels, reg.resample_onto_baseline(f.ct, b.labels, labels=False),
             reg.resample_onto_baseline(f.labels, b.labels, labels=True))
    while len(cache) >= 2:  # a few volumes per comparison: keep the last two
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


@bp.route("/comparisons/<cid>/slice/<side>/<int:z>.png")
@login_required
def slice_png(cid: str, side: str, z: int) -> Any:
    from liverseg.reporting import render_slice_png
    from liverseg.web.views import _float_arg

    meta = _own_comparison(cid)
    if meta.get("status") != "done" or side not in ("baseline", "followup"):
        abort(404)
    b_ct, b_lab, f_ct, f_lab = _registered_volumes(meta)
    ct, lab = (b_ct, b_lab) if side == "baseline" else (f_ct, f_lab)
    if not 0 <= z < ct.shape[0]:
        abort(404)
    png = render_slice_png(ct, lab, z, window=(_float_arg("w", 400.0, 1.0, 10000.0), _float_arg("l", 40.0, -2000.0, 4000.0)),
                           opacity=_float_arg("opacity", 0.35, 0.0, 1.0), show_liver=request.args.get("overlay", "1") == "1",
                           show_tumor=request.args.get("overlay", "1") == "1")
    resp = current_app.response_class(png, mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=600"
    return resp


# --------------------------------------------------------------------------- REST


@api_bp.route("/comparisons", methods=["POST"])
@token_required
def api_create() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="send JSON: {\"baseline\": STUDY_ID, \"followup\": STUDY_ID}"), 400
    meta, error, code = start_comparison(g.user.id, str(body.get("baseline", "")), str(body.get("followup", "")))
    if meta is None:
        return jsonify(error=error), code
    resp = jsonify(comparison_json(meta))
    resp.status_code = 202
    resp.headers["Location"] = f"/api/comparisons/{meta['id']}"
    return resp


@api_bp.route("/comparisons/<cid>", methods=["GET"])
@token_required
def api_get(cid: str) -> Any:
    return jsonify(comparison_json(_own_comparison(cid), with_result=True))


@api_bp.route("/comparisons/<cid>/files/<name>", methods=["GET"])
@token_required
def api_file(cid: str, name: str) -> Any:
    return _send(_own_comparison(cid), name, as_attachment=True)


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI 3 entries of ``/api/comparisons`` (merged into ``/api/openapi.json``)."""
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def e(text: str) -> dict[str, Any]:
        return {**err, "description": text}

    cid = {"name": "cid", "in": "path", "required": True, "schema": {"type": "string"}}
    comparison = {"type": "object", "properties": {
        "id": {"type": "string"}, "baseline": {"type": "string"}, "followup": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "refused", "failed"]},
        "error": {"type": "string", "nullable": True, "description": "why it was refused or failed"},
        "code": {"type": "string", "nullable": True, "description": "refusal code: different_patient, "
                 "spacing_unknown, single_slice, different_body_region, no_overlap"},
        "response": {"type": "string", "nullable": True, "enum": ["CR", "PR", "SD", "PD", "non-CR/non-PD", "NED", None]},
        "counts": {"type": "object", "nullable": True, "description": "lesion changes by kind"},
        "files": {"type": "array", "items": {"type": "string", "enum": list(COMPARISON_FILES)}},
        "result": {"type": "object", "nullable": True, "description": "comparison.json (GET, status done)"},
    }}
    return {
        "/api/comparisons": {"post": {
            "summary": "Compare two of the caller's finished studies (the follow-up registered onto the baseline)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["baseline", "followup"],
                "properties": {"baseline": {"type": "string"}, "followup": {"type": "string"}}}}}},
            "responses": {"202": {"description": "queued; Location: /api/comparisons/{cid}",
                                  "content": {"application/json": {"schema": comparison}}},
                          "400": e("not two different study ids"), "401": e("no or unknown token"),
                          "404": e("no such study for this user"), "409": e("a study is not finished")},
        }},
        "/api/comparisons/{cid}": {"get": {
            "summary": "Status, and the result (comparison.json) when done", "parameters": [cid],
            "responses": {"200": {"description": "", "content": {"application/json": {"schema": comparison}}},
                          "401": e("no or unknown token"), "404": e("no such comparison for this user")},
        }},
        "/api/comparisons/{cid}/files/{name}": {"get": {
            "summary": "Download one file of a finished comparison",
            "parameters": [cid, {"name": "name", "in": "path", "required": True,
                                 "schema": {"type": "string", "enum": list(COMPARISON_FILES)}}],
            "responses": {"200": {"description": "the file"}, "401": e("no or unknown token"),
                          "404": e("no such comparison, not done, or no such file")},
        }},
    }


def delete_comparisons_of(data_dir: Path, study_id: str) -> int:
    """Remove the comparisons that use ``study_id`` (call when a study is deleted); returns how many."""
    root = Path(data_dir) / COMPARISONS_DIR
    n = 0
    if root.is_dir():
        for d in root.iterdir():
            meta = _read_meta(data_dir, d.name) if d.name.isalnum() else None
            if meta and study_id in (meta.get("baseline"), meta.get("followup")):
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n
