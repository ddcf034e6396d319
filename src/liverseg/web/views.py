"""The HTML pages and the JSON/PNG endpoints their scripts call (session cookie + CSRF)."""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from liverseg.errors import InputError, ResourceError, TooLargeError
from liverseg.web import auth
from liverseg.web.jobs import analysis_of
from liverseg.web.store import Study, User
from liverseg.web.uploads import new_study_id, parse_pixel_size, save_upload, study_dir, write_study_options
from liverseg.web.viewer import WINDOW_PRESETS

if TYPE_CHECKING:
    from liverseg.web.corrections import MaskVersion

__all__ = ["bp", "OUTPUT_FILES", "ctx", "create_study", "delete_study_files", "study_json", "history_rows"]

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

#: Downloadable outputs: name -> (label, MIME type).
OUTPUT_FILES: dict[str, tuple[str, str]] = {
    "mask.nii.gz": ("Mask (NIfTI)", "application/gzip"),
    "seg.dcm": ("DICOM SEG", "application/dicom"),
    "lesions.csv": ("Lesions (CSV)", "text/csv"),
    "report.json": ("Report (JSON)", "application/json"),
    "report.html": ("Report (HTML)", "text/html"),
    "report.pdf": ("Report (PDF)", "application/pdf"),
    "overlay.png": ("Overlay (PNG)", "image/png"),
    "montage.png": ("Montage (PNG)", "image/png"),
    "mask.png": ("Mask (PNG)", "image/png"),
}


def ctx() -> Any:
    return current_app.extensions["liverseg"]


# --------------------------------------------------------------------------- sessions


def _session_user() -> User | None:
    """The signed-in user: the cookie's session id must be live in the store (sign-out deletes it there)."""
    sid = session.get("sid")
    if not isinstance(sid, str) or not sid:
        session.clear()
        return None
    user = ctx().store.session_user(sid)
    if user is None or session.get("epoch") != user.session_epoch:
        session.clear()
        return None
    return user


def _safe_next(nxt: str) -> str | None:
    """``nxt`` when it is a path on this site, else None (``//host``, ``/\\host``, schemes, control characters).

    Browsers drop tabs and newlines inside URLs, so ``/%09/evil.example`` would become
    ``//evil.example``; any control character, space or backslash is refused.
    """
    from urllib.parse import urlsplit

    if not nxt.startswith("/") or nxt.startswith("//") or len(nxt) > 2000:
        return None
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F or ch == "\\" for ch in nxt):
        return None
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc:
        return None
    return nxt


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-case and a full stop (the rest untouched, unlike str.capitalize)."""
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = _session_user()
        if user is None:
            if request.accept_mimetypes.best == "application/json" or request.path.endswith((".json", ".png")):
                abort(401)
            return redirect(url_for("pages.login", next=request.full_path if request.query_string else request.path))
        g.user = user
        return view(*args, **kwargs)

    return wrapped


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    @login_required
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not g.user.is_admin:
            abort(404)
        return view(*args, **kwargs)

    return wrapped


@bp.app_template_filter("num")
def _num(value: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals and thin thousands separators; an em dash for None."""
    if value is None:
        return "—"
    try:
        return f"{float(value):,.{digits}f}".replace(",", "\u2009")
    except (TypeError, ValueError):
        return "—"


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"current_user": getattr(g, "user", None)}


def _own_study(study_id: str) -> Study:
    """The caller's study, or 404 (another user's study is indistinguishable from a missing one)."""
    if not study_id.isalnum():
        abort(404)
    study = ctx().store.study(study_id, user_id=g.user.id)
    if study is None:
        abort(404)
    return study


# --------------------------------------------------------------------------- shared with the API


def create_study(user: User, files: list[Any], note: str, pixel_size_mm: Any = None) -> Study:
    """Store an upload as a new queued study and wake the workers (InputError on bad content).

    ``pixel_size_mm``: the form's optional pixel size (mm) for an 8-bit slice, so that its areas
    come out in mm² (ignored with a warning in the report for inputs that carry their own).
    """
    from liverseg.web.app import MAX_NOTE_CHARS

    c = ctx()
    pixel_size = parse_pixel_size(pixel_size_mm)
    note = (note or "").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise InputError(
            f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS} are kept with a study. Shorten it"
        )
    study_id = new_study_id()
    saved = save_upload(files, data_dir=c.data_dir, study_id=study_id, max_files=c.max_files,
                        max_bytes=c.max_upload_bytes)
    try:
        write_study_options(c.data_dir, study_id, pixel_size_mm=pixel_size)
        study = c.store.add_study(
            study_id=study_id, user_id=user.id, note=note, input_name=saved.input_name, input_kind=saved.kind,
            input_format=saved.format, n_files=saved.n_files, n_bytes=saved.n_bytes,
        )
    except BaseException:
        shutil.rmtree(study_dir(c.data_dir, study_id), ignore_errors=True)
        raise
    c.pool.wake()
    return study


def upload_error_status(exc: Exception) -> int:
    """The HTTP status of a refused upload: 413 too large, 507 the server's disk is full, else 400."""
    if isinstance(exc, TooLargeError):
        return 413
    if isinstance(exc, ResourceError):
        return 507
    return 400


def delete_study_files(study_id: str) -> None:
    c = ctx()
    c.cache.drop(study_id)
    c.store.delete_study(study_id)
    shutil.rmtree(study_dir(c.data_dir, study_id), ignore_errors=True)
    from liverseg.web.compare import delete_comparisons_of  # what was derived from the study goes with it

    delete_comparisons_of(c.data_dir, study_id)


def available_files(study_id: str, version: int | None = None) -> list[str]:
    """Downloadable files of a mask version (the newest when None): outputs, then the 3D meshes."""
    from liverseg.web.corrections import list_versions, version_files

    if version is None:
        study = ctx().store.study(study_id)
        versions = list_versions(ctx().data_dir, study) if study is not None else []
        version = versions[-1].number if versions else 1
    return version_files(ctx().data_dir, study_id, version)


def study_json(study: Study, *, with_report: bool = False) -> dict[str, Any]:
    """A study as the API and the pages' scripts see it."""
    job = study.job
    d: dict[str, Any] = {
        "id": study.id,
        "created_at": study.created_at,
        "note": study.note,
        "input_name": study.input_name,
        "input_format": study.input_format,
        "n_files": study.n_files,
        "status": study.status,
        "stage": job.stage if job else "",
        "progress": round(job.progress, 4) if job else 0.0,
        "error": job.error if job else None,
        "attempts": job.attempts if job else 0,
        "started_at": job.started_at if job else None,
        "finished_at": job.finished_at if job else None,
        "summary": {
            "liver_volume_ml": study.liver_volume_ml,
            "lesion_count": study.lesion_count,
            "tumor_volume_ml": study.tumor_volume_ml,
            "tumor_burden_pct": study.tumor_burden_pct,
        },
    }
    if study.status == "done":
        from liverseg.web.corrections import list_versions, version_files, version_report
        from liverseg.web.jobs import summarize_report

        c = ctx()
        versions = list_versions(c.data_dir, study)
        d["files"] = version_files(c.data_dir, study.id, versions[-1].number)
        d["mask_version"] = versions[-1].number  # the newest mask: corrections are versions 2, 3, ...
        d["versions"] = [v.to_json(version_files(c.data_dir, study.id, v.number)) for v in versions]
        if versions[-1].number > 1:
            report = version_report(c.data_dir, study, versions[-1], c.store)
            d["summary"] = summarize_report(report)
        if with_report:
            d["report"] = report if versions[-1].number > 1 else c.store.result(study.id)
    return d


def send_output(study: Study, name: str, *, as_attachment: bool = True) -> Any:
    """One output of the mask version in ``?version=N`` (the newest by default), meshes included."""
    from liverseg.web.corrections import send_version_file

    return send_version_file(ctx().data_dir, study, name, version=request.args.get("version"),
                             as_attachment=as_attachment)


# --------------------------------------------------------------------------- login


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    status = 200
    if request.method == "POST":
        name = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        address = request.remote_addr or "?"
        limiter = ctx().limiter
        wait = limiter.retry_after(name, address)
        if wait > 0:
            error = f"Too many failed sign-ins. Try again in {int(wait // 60) + 1} min."
            status = 429
        else:
            user = ctx().store.user_by_name(name)
            if auth.check_password(user, password):
                assert user is not None
                limiter.succeeded(name, address)
                old_sid = session.get("sid")
                if isinstance(old_sid, str) and old_sid:
                    ctx().store.delete_session(old_sid)
                session.clear()
                session.permanent = True
                sid = secrets.token_urlsafe(32)
                ctx().store.add_session(user.id, sid, lifetime_s=current_app.permanent_session_lifetime.total_seconds())
                session["sid"] = sid
                session["uid"] = user.id
                session["epoch"] = user.session_epoch
                log.info("user %d signed in", user.id)
                nxt = _safe_next(request.args.get("next", "")) or url_for("pages.history")
                return redirect(nxt)
            limiter.failed(name, address)
            time.sleep(0.2)
            error = "Wrong user name or password."
            status = 401
    return render_template("login.html", error=error), status


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    sid = session.get("sid")
    if isinstance(sid, str) and sid:
        ctx().store.delete_session(sid)  # the cookie, even if kept or replayed, is worthless now
    session.clear()
    return redirect(url_for("pages.login"))


@bp.route("/")
@login_required
def index() -> Any:
    return redirect(url_for("pages.history"))


# --------------------------------------------------------------------------- upload and jobs


@bp.route("/upload", methods=["GET", "POST"])
@login_required
def upload() -> Any:
    c = ctx()
    if request.method == "GET":
        return render_template("upload.html", max_files=c.max_files, max_gb=c.max_upload_bytes / 1024**3)
    wants_json = request.accept_mimetypes.best == "application/json"
    files = request.files.getlist("files")
    try:
        study = create_study(g.user, files, request.form.get("note", ""), request.form.get("pixel_size_mm"))
    except (InputError, ResourceError) as exc:
        code = upload_error_status(exc)
        if wants_json:
            return jsonify(error=str(exc)), code
        return render_template("upload.html", error=str(exc), max_files=c.max_files,
                               max_gb=c.max_upload_bytes / 1024**3), code
    url = url_for("pages.study", study_id=study.id)
    if wants_json:
        return jsonify(id=study.id, status=study.status, url=url), 202
    return redirect(url, code=303)


@bp.route("/studies/<study_id>")
@login_required
def study(study_id: str) -> Any:
    from liverseg.web.corrections import file_label, resolve_version, version_report

    s = _own_study(study_id)
    if s.status != "done":
        return render_template("job.html", study=s)
    c = ctx()
    version, versions = resolve_version(c.data_dir, s, request.args.get("version"))
    files = available_files(s.id, version.number)
    return render_template("study.html", study=s, vm=_view_model(s, version_report(c.data_dir, s, version, c.store)),
                           version=version, versions=versions,
                           files=[(n, file_label(n)) for n in files if not n.startswith("mesh-")],
                           mesh_files=[n for n in files if n.startswith("mesh-")],
                           viewer_installed=(Path(current_app.static_folder or "") / "vendor" / "niivue.umd.js").is_file())


@bp.route("/studies/<study_id>/status.json")
@login_required
def study_status(study_id: str) -> Any:
    return jsonify(study_json(_own_study(study_id)))


@bp.route("/studies/<study_id>/retry", methods=["POST"])
@login_required
def retry(study_id: str) -> Any:
    s = _own_study(study_id)
    if s.status == "failed":
        ctx().cache.drop(s.id)
        ctx().store.requeue(s.id)
        ctx().pool.wake()
    return redirect(url_for("pages.study", study_id=s.id), code=303)


@bp.route("/studies/<study_id>/delete", methods=["POST"])
@login_required
def delete(study_id: str) -> Any:
    s = _own_study(study_id)
    delete_study_files(s.id)
    flash("The study and its files were deleted.", "info")
    return redirect(url_for("pages.history"), code=303)


@bp.route("/studies/<study_id>/files/<name>")
@login_required
def download(study_id: str, name: str) -> Any:
    return send_output(_own_study(study_id), name, as_attachment=request.args.get("inline") != "1")


# --------------------------------------------------------------------------- dashboard data


def _view_model(study: Study, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the dashboard shows of ``report`` (a mask version's report.json; the model's when None)."""
    report = report if report is not None else (ctx().store.result(study.id) or {})
    a = analysis_of(report)
    shape = a.get("shape") or [1, 0, 0]
    lesions = []
    for les in a.get("lesions") or []:
        lesions.append({
            "id": les.get("id"),
            "volume_ml": les.get("volume_ml"),
            "area_mm2": les.get("axial_area_mm2"),
            "area_px": les.get("axial_area_px"),
            "diameter_mm": les.get("longest_axial_diameter_mm"),
            "short_axis_mm": les.get("short_axis_mm"),
            "diameter_px": les.get("longest_axial_diameter_px"),
            "short_axis_px": les.get("short_axis_px"),
            "slice": les.get("diameter_slice"),
            "slice_range": les.get("slice_range"),
            "mean_hu": les.get("mean_hu"),
            "std_hu": les.get("std_hu"),
            "measurable": les.get("measurable"),
            "target": bool(les.get("is_target_candidate")),
            "touches_scan_end": les.get("touches_scan_end"),
            "confidence": les.get("confidence"),
            "confidence_level": les.get("confidence_level"),
            "centroid_voxel": les.get("centroid_voxel"),
        })
    # start on the slice of the largest lesion, else the middle of the scan
    start = shape[0] // 2
    if lesions:
        biggest = max(lesions, key=lambda x: (x["volume_ml"] or 0, x["area_px"] or 0))
        if biggest["slice"] is not None:
            start = int(biggest["slice"])
    return {
        "id": study.id,
        "shape": shape,
        "spacing_mm": a.get("spacing_mm"),
        "is_2d": bool(a.get("is_2d", shape[0] == 1)),
        "start_slice": start,
        "liver_volume_ml": a.get("liver_volume_ml"),
        "liver_area_mm2": a.get("liver_area_mm2"),
        "liver_area_px": a.get("liver_area_px"),
        "liver_voxel_count": a.get("liver_voxel_count"),
        "tumor_voxel_count": a.get("tumor_voxel_count"),
        "tumor_count": a.get("tumor_count", len(lesions)),
        "tumor_volume_ml": a.get("tumor_volume_ml"),
        "tumor_area_mm2": a.get("tumor_area_mm2"),
        "tumor_burden_percent": a.get("tumor_burden_percent"),
        "liver_is_lower_bound": a.get("liver_is_lower_bound"),
        "no_liver": any(f.get("code") == "no_liver" for f in a.get("flags") or [] if isinstance(f, dict))
        or a.get("liver_voxel_count") == 0,
        "lesions": lesions,
        "flags": a.get("flags") or [],
        "notes": a.get("notes") or [],
        "reasons": a.get("reasons") or {},
        "presets": {k: {"width": w, "level": lv} for k, (w, lv) in WINDOW_PRESETS.items()},
        "is_hu": (study.input_format or "") not in ("png", "jpeg"),
    }


@bp.route("/studies/<study_id>/data.json")
@login_required
def study_data(study_id: str) -> Any:
    from liverseg.web.corrections import resolve_version, version_report

    s = _own_study(study_id)
    if s.status != "done":
        abort(404)
    version, _ = resolve_version(ctx().data_dir, s, request.args.get("version"))
    return jsonify(_view_model(s, version_report(ctx().data_dir, s, version, ctx().store)))


def _float_arg(name: str, default: float, lo: float, hi: float) -> float:
    try:
        v = float(request.args.get(name, default))
    except ValueError:
        abort(400)
    if not (lo <= v <= hi):
        abort(400)
    return v


@bp.route("/studies/<study_id>/slice/<int:z>.png")
@login_required
def slice_png(study_id: str, z: int) -> Any:
    from liverseg.reporting import render_slice_png

    s = _own_study(study_id)
    if s.status != "done":
        abort(404)
    ct, labels = ctx().cache.get(s.id)
    if not 0 <= z < ct.shape[0]:
        abort(404)
    width = _float_arg("w", 400.0, 1.0, 10000.0)
    level = _float_arg("l", 40.0, -2000.0, 4000.0)
    overlay = request.args.get("overlay", "1") == "1"
    opacity = _float_arg("opacity", 0.4, 0.0, 1.0)
    png = render_slice_png(
        ct, labels, z, window=(width, level), opacity=opacity,
        show_liver=overlay and request.args.get("liver", "1") == "1",
        show_tumor=overlay and request.args.get("tumor", "1") == "1",
    )
    resp = current_app.response_class(png, mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=600"
    return resp


# --------------------------------------------------------------------------- history


def history_rows(studies: list[Study]) -> list[tuple[Study, MaskVersion | None]]:
    """Each study with the numbers of the version it shows (the newest), and that version when it is a correction.

    The store keeps the model's numbers; a study with a saved correction lists its newest
    version's liver volume (mL), lesion count, tumor volume (mL) and burden (%) instead, as
    its dashboard and ``study_json`` do.
    """
    import dataclasses

    from liverseg.web.corrections import shown_numbers

    c = ctx()
    rows: list[tuple[Study, MaskVersion | None]] = []
    for s in studies:
        summary, correction = shown_numbers(c.data_dir, s, store=c.store)
        rows.append((dataclasses.replace(s, **summary) if correction is not None else s, correction))
    return rows


@bp.route("/history")
@login_required
def history() -> Any:
    q = request.args.get("q", "").strip()[:200]
    studies = ctx().store.studies(user_id=g.user.id, search=q)
    return render_template("history.html", rows=history_rows(studies), q=q)


# --------------------------------------------------------------------------- account and admin


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account() -> Any:
    token = None
    error = None
    store = ctx().store
    if request.method == "POST":
        action = request.form.get("action")
        if action == "password":
            if not auth.check_password(g.user, request.form.get("current", "")):
                error = "The current password is wrong."
            elif request.form.get("new", "") != request.form.get("confirm", ""):
                error = "The two new passwords differ."
            else:
                try:
                    auth.set_password(store, g.user, request.form.get("new", ""))
                except ValueError as exc:
                    error = _sentence(str(exc))
                else:
                    initial = ctx().data_dir / auth.INITIAL_PASSWORD_FILE
                    if initial.is_file() and initial.read_text(encoding="utf-8").split("\n", 1)[0] == g.user.name:
                        initial.unlink()
                    session.clear()
                    flash("Password changed. Sign in with the new password.", "info")
                    return redirect(url_for("pages.login"), code=303)
        elif action == "token":
            token = auth.new_token()
            store.add_token(g.user.id, token)
        elif action == "revoke":
            store.revoke_tokens(g.user.id)
            flash("All your API tokens were revoked.", "info")
    return render_template("account.html", token=token, error=error, n_tokens=store.count_tokens(g.user.id)), (
        400 if error else 200)


@bp.route("/admin/users", methods=["GET", "POST"])
@admin_required
def users() -> Any:
    store = ctx().store
    error = None
    shown_password = None
    if request.method == "POST":
        action = request.form.get("action")
        target = store.user_by_id(int(request.form.get("user_id", "0") or 0)) if action != "add" else None
        if action == "add":
            name = request.form.get("username", "").strip()
            password = auth.random_password()
            try:
                auth.create_user(store, name=name, password=password, is_admin=request.form.get("is_admin") == "1")
            except ValueError as exc:
                error = _sentence(str(exc))
            else:
                shown_password = (name, password)
        elif target is None:
            abort(404)
        elif action == "reset":
            password = auth.random_password()
            auth.set_password(store, target, password)
            store.revoke_tokens(target.id)
            shown_password = (target.name, password)
        elif action == "toggle_admin":
            if target.id == g.user.id:
                error = "You cannot remove your own admin rights."
            else:
                store.set_admin(target.id, not target.is_admin)
        elif action == "delete":
            if target.id == g.user.id:
                error = "You cannot delete your own account."
            else:
                for sid in store.delete_user(target.id):
                    ctx().cache.drop(sid)
                    shutil.rmtree(study_dir(ctx().data_dir, sid), ignore_errors=True)
                    from liverseg.web.compare import delete_comparisons_of

                    delete_comparisons_of(ctx().data_dir, sid)
                flash(f"User {target.name} and their studies were deleted.", "info")
        else:
            abort(400)
    return render_template("users.html", users=store.users(), error=error, shown_password=shown_password), (
        400 if error else 200)
