"""Mask versions: the model's mask and the radiologist's corrections, each with all its outputs.

A study's folder keeps every version; none is ever overwritten::

    studies/<id>/output/              version 1: what the model's job wrote (run_case)
    studies/<id>/versions/<n>/        version n >= 2: a corrected mask, re-measured (remeasure_case),
                                      with version.json (who, when, based on which version)
    studies/<id>/versions/.<name>     a save in progress (reservation, staging folder); never listed
    studies/<id>/viewer/ct.nii.gz     the CT as the job read it, as NIfTI for the page's viewer (a cache)

A version is published by one ``rename`` of a complete folder that already holds its
``version.json``, so ``versions/<n>/`` appears whole or not at all; ``version.json`` is the
version's "complete" mark (there is no database row for versions). What a killed save leaves
behind (dot-named entries, a numbered folder without ``version.json``) is never listed or
served, and :func:`clean_incomplete_versions` removes it when the app starts.

A version's report.pdf is drawn on its first download (:func:`ensure_report_pdf`): the job
(``run_case(..., pdf=False)``) and a save (``remeasure_case(..., pdf=False)``) skip it, so a study
is done about 2 s sooner; it is listed as soon as the folder's report.json is there.

The newest version is the one shown and downloaded unless another is asked for
(``?version=N``). Saving a correction (``PUT /studies/<id>/mask`` from the page with its
CSRF header, ``PUT /api/studies/<id>/mask`` with a token) takes a NIfTI on the study's grid:
anything else is refused with the reason (HTTP 400), and nothing is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flask import Blueprint, abort, g, jsonify, request, send_file

from liverseg.errors import InputError, LiversegError, ResourceError, is_disk_full
from liverseg.web.api import _own, token_required
from liverseg.web.store import Study
from liverseg.web.uploads import output_dir, study_dir
from liverseg.web.views import OUTPUT_FILES, _own_study, ctx, login_required, study_json

__all__ = ["MaskVersion", "bp", "api_bp", "list_versions", "resolve_version", "version_dir", "version_files",
           "version_report", "shown_numbers", "save_correction", "clean_incomplete_versions", "viewer_ct_path",
           "file_mime", "file_label", "ensure_report_pdf", "MAX_VERSIONS"]

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
#: Most versions kept per study (each is a full set of outputs, a few MB).
MAX_VERSIONS = 200
#: Grid tolerances between a sent mask and the scan: spacing (relative), origin (mm), direction (cosines).
SPACING_RTOL, ORIGIN_ATOL_MM, DIRECTION_ATOL = 1e-3, 0.05, 1e-3

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _study_lock(study_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(study_id, threading.Lock())


#: The report's PDF and the file it is drawn from, in a version's folder.
PDF_FILE, REPORT_FILE = "report.pdf", "report.json"

#: folder -> [lock, number of requests holding or waiting for it]; an entry goes when its count is 0
_pdf_locks: dict[str, list[Any]] = {}
_pdf_guard = threading.Lock()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder`` (one per folder in this process; forgotten once no request needs it)."""
    key = os.path.abspath(folder)
    with _pdf_guard:
        entry = _pdf_locks.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _pdf_guard:
            entry[1] -= 1
            if entry[1] == 0:
                _pdf_locks.pop(key, None)


def ensure_report_pdf(folder: Path) -> Path:
    """``folder``'s report.pdf, drawn from its report.json first when it is not there yet.

    One request draws it (:func:`liverseg.reporting.pdf.write_report_pdf_from_folder`,
    written under a temporary name and renamed); others asking for the same folder meanwhile
    wait for it and get the same file. One server per data folder (``lock.DataDirLock``), so
    the lock is this process's.

    Raises:
        liverseg.errors.InputError: the folder has no readable report.json (a study deleted meanwhile).
        OSError: the PDF could not be written (a full disk, the folder removed meanwhile).
    """
    from liverseg.reporting import pdf as report_pdf

    path = folder / PDF_FILE
    if path.is_file():
        return path
    with _folder_lock(folder):
        if path.is_file():  # drawn by the request this one waited for
            return path
        t0 = time.perf_counter()
        report_pdf.write_report_pdf_from_folder(folder, name=PDF_FILE)
        log.info("report.pdf drawn on first download in %.2f s", time.perf_counter() - t0)
    return path


@dataclasses.dataclass(frozen=True)
class MaskVersion:
    """One mask of a study: version 1 is the model's; later ones are corrections."""

    number: int
    kind: str  # "model" or "correction"
    created_at: str | None
    edited_by: str | None = None
    based_on: int | None = None
    changed_voxels: int | None = None
    source: str | None = None  # "viewer" or "api" for corrections
    note: str = ""

    def to_json(self, files: list[str] | None = None) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = d.pop("number")
        if files is not None:
            d["files"] = files
        return d


def version_dir(data_dir: Path, study_id: str, number: int) -> Path:
    """The folder of version ``number`` (1: the job's ``output/``)."""
    if number == 1:
        return output_dir(data_dir, study_id)
    return study_dir(data_dir, study_id) / VERSIONS_DIR / str(int(number))


def _version_number(name: str) -> int | None:
    """The number a folder name under ``versions/`` stands for (``"3"`` -> 3), or None (``.reserve-3``, ...)."""
    return int(name) if name.isascii() and name.isdigit() else None


def list_versions(data_dir: Path, study: Study) -> list[MaskVersion]:
    """The study's complete mask versions, oldest first (empty while the job has not finished).

    A correction counts only once its folder holds ``version.json``: a save in progress or one
    killed half-way is never listed, so never shown or served.
    """
    if study.status != "done":
        return []
    job = study.job
    out = [MaskVersion(1, "model", job.finished_at if job else None)]
    root = study_dir(data_dir, study.id) / VERSIONS_DIR
    if root.is_dir():
        numbers = sorted(n for p in root.iterdir() if (n := _version_number(p.name)) is not None and n >= 2
                         and (p / VERSION_FILE).is_file())
        for n in numbers:
            try:
                meta = json.loads((root / str(n) / VERSION_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("study %s: version %d has an unreadable %s; skipped", study.id, n, VERSION_FILE)
                continue
            out.append(MaskVersion(n, "correction", meta.get("created_at"), meta.get("edited_by"), meta.get("based_on"),
                                   meta.get("changed_voxels"), meta.get("source"), meta.get("note") or ""))
    return out


def resolve_version(data_dir: Path, study: Study, requested: str | None) -> tuple[MaskVersion, list[MaskVersion]]:
    """The version asked for (``?version=N``; the newest when None or empty) and all versions; 404 if unknown."""
    versions = list_versions(data_dir, study)
    if not versions:
        abort(404)
    if requested in (None, "", "latest"):
        return versions[-1], versions
    if not str(requested).isdigit():
        abort(404)
    for v in versions:
        if v.number == int(requested):
            return v, versions
    abort(404)


def version_report(data_dir: Path, study: Study, version: MaskVersion, store: Any) -> dict[str, Any]:
    """report.json of ``version`` (version 1's is the one in the store)."""
    if version.number == 1:
        return store.result(study.id) or {}
    try:
        return json.loads((version_dir(data_dir, study.id, version.number) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def shown_numbers(data_dir: Path, study: Study, *, store: Any) -> tuple[dict[str, Any], MaskVersion | None]:
    """The key numbers of the version a study shows by default (its newest), and that version if it is a correction.

    Returns:
        ``(summary, correction)``: ``summary`` has ``liver_volume_ml`` (mL), ``lesion_count``,
        ``tumor_volume_ml`` (mL) and ``tumor_burden_pct`` (% of the liver volume): the store's
        (the model's) numbers while the study has no correction, else those of the newest
        version's ``report.json`` (None where it cannot be read); ``correction`` is that newest
        version, or None when the numbers are the model's.
    """
    from liverseg.web.jobs import summarize_report

    model = {"liver_volume_ml": study.liver_volume_ml, "lesion_count": study.lesion_count,
             "tumor_volume_ml": study.tumor_volume_ml, "tumor_burden_pct": study.tumor_burden_pct}
    versions = list_versions(data_dir, study)
    if not versions or versions[-1].number == 1:
        return model, None
    return summarize_report(version_report(data_dir, study, versions[-1], store)), versions[-1]


def _output_names() -> dict[str, tuple[str, str]]:
    return OUTPUT_FILES


def version_files(data_dir: Path, study_id: str, number: int) -> list[str]:
    """Downloadable files of a version: the usual outputs, then ``meshes.json`` and the ``mesh-*.ply`` surfaces."""
    from liverseg.reporting.meshes import mesh_file_names

    folder = version_dir(data_dir, study_id, number)
    if not folder.is_dir():
        return []
    pdf_possible = (folder / REPORT_FILE).is_file()  # report.pdf is drawn on its first download
    names = [n for n in _output_names() if (folder / n).is_file() or (n == PDF_FILE and pdf_possible)]
    return names + mesh_file_names([p.name for p in folder.iterdir() if p.is_file()])


def file_mime(name: str) -> str | None:
    """The MIME type of a downloadable output, or None when ``name`` is not one."""
    from liverseg.reporting.meshes import is_mesh_file

    known = _output_names()
    if name in known:
        return known[name][1]
    if is_mesh_file(name):
        return "application/json" if name.endswith(".json") else "application/octet-stream"
    return None


def file_label(name: str) -> str:
    """How the downloads list names a file (``Lesion 2 surface (PLY)``)."""
    known = _output_names()
    if name in known:
        return known[name][0]
    if name == "meshes.json":
        return "3D surfaces (JSON index)"
    stem = name[len("mesh-"):-len(".ply")]
    return f"{stem.replace('-', ' ').capitalize()} surface (PLY)"


def send_version_file(data_dir: Path, study: Study, name: str, *, version: str | None, as_attachment: bool) -> Any:
    """Send one output of a version (the newest by default); 404 for anything else."""
    if study.status != "done" or file_mime(name) is None or "/" in name or name.startswith("."):
        abort(404)
    v, _ = resolve_version(data_dir, study, version)
    path = version_dir(data_dir, study.id, v.number) / name
    if name == PDF_FILE and not path.is_file() and (path.parent / REPORT_FILE).is_file():
        _draw_pdf_or_abort(data_dir, study, path.parent)
    if not path.is_file():
        abort(404)
    tag = "" if v.number == 1 else f"-v{v.number}"
    return send_file(path, mimetype=file_mime(name), as_attachment=as_attachment,
                     download_name=f"liverseg-{study.id}{tag}-{name}", max_age=0)


def _draw_pdf_or_abort(data_dir: Path, study: Study, folder: Path) -> None:
    """Draw ``folder``'s report.pdf for a download; abort 404 when the study went meanwhile, 507/500 on failure."""
    try:
        ensure_report_pdf(folder)
    except Exception as exc:
        if ctx().store.study(study.id) is None:  # deleted while the PDF was drawn: nothing to serve
            shutil.rmtree(study_dir(data_dir, study.id), ignore_errors=True)
            abort(404)
        if isinstance(exc, OSError) and is_disk_full(exc):
            log.error("study %s: the disk is full; report.pdf could not be drawn", study.id)
            abort(507, description="the server's disk is full, so the report's PDF could not be made; download "
                                   "report.html instead, or try again later")
        # the type only: the message may name the server's folders
        log.error("study %s: report.pdf could not be drawn (%s)", study.id, type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        abort(500, description=f"the report's PDF could not be made ({type(exc).__name__}); download report.html "
                               "instead, or try again, and report it if it happens again")
    if ctx().store.study(study.id) is None:  # deleted while drawing: what the drawing wrote goes too
        shutil.rmtree(study_dir(data_dir, study.id), ignore_errors=True)
        abort(404)


# --------------------------------------------------------------------------- the viewer's CT


def viewer_ct_path(data_dir: Path, study_id: str, cache: Any) -> Path:
    """``viewer/ct.nii.gz``: the CT as the job read it (HU, int16), written once from the volume cache."""
    from liverseg.io import write_volume

    path = study_dir(data_dir, study_id) / "viewer" / "ct.nii.gz"
    if path.is_file():
        return path
    with _study_lock(study_id):
        if not path.is_file():
            ct, _ = cache.get(study_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_volume(ct, path)  # atomic (temporary name, then renamed)
    return path


# --------------------------------------------------------------------------- saving a correction


def _check_grid(mask: Any, ct: Any) -> None:
    """InputError naming the difference when ``mask`` is not on ``ct``'s grid."""
    if mask.shape != ct.shape:
        raise InputError(
            f"the mask has {mask.shape[2]} x {mask.shape[1]} x {mask.shape[0]} voxels (x, y, z) but the scan has "
            f"{ct.shape[2]} x {ct.shape[1]} x {ct.shape[0]}; save the mask on the scan's grid (start from the "
            "study's mask.nii.gz)")
    if ct.spacing is not None and mask.spacing is not None and not np.allclose(
            mask.spacing, ct.spacing, rtol=SPACING_RTOL, atol=1e-6):
        raise InputError(
            f"the mask's voxel size {tuple(round(s, 4) for s in mask.spacing[::-1])} mm (x, y, z) differs from the "
            f"scan's {tuple(round(s, 4) for s in ct.spacing[::-1])} mm; save the mask on the scan's grid")
    if not np.allclose(mask.origin, ct.origin, atol=ORIGIN_ATOL_MM):
        raise InputError(
            f"the mask's origin {tuple(round(o, 2) for o in mask.origin)} mm differs from the scan's "
            f"{tuple(round(o, 2) for o in ct.origin)} mm (LPS); save the mask on the scan's grid")
    if not np.allclose(np.asarray(mask.direction), np.asarray(ct.direction), atol=DIRECTION_ATOL):
        raise InputError("the mask's orientation (direction cosines) differs from the scan's; save the mask on the "
                         "scan's grid, without reorienting it")


def read_mask_file(path: Path, ct: Any) -> np.ndarray:
    """The labels (uint8, (z, y, x)) of a sent NIfTI mask, checked against the scan ``ct``'s grid and values.

    Raises:
        InputError: not a NIfTI, unreadable, another grid, or values other than 0, 1, 2.
    """
    from liverseg.io import read_volume, sniff_format

    try:
        fmt = sniff_format(path)
    except InputError as exc:
        raise InputError(f"the mask must be a NIfTI file (.nii or .nii.gz): {_unnamed(str(exc), path)}") from None
    if fmt not in ("nifti", "nifti-gz"):
        raise InputError(f"the mask must be a NIfTI file (.nii or .nii.gz); this is {fmt}")
    named = path.with_name("mask.nii.gz" if fmt == "nifti-gz" else "mask.nii")
    if named != path:
        path = path.rename(named)
    try:
        mask = read_volume(path, force=True)
    except InputError as exc:
        raise InputError(_unnamed(str(exc), path)) from None
    _check_grid(mask, ct)
    arr = np.asarray(mask.array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise InputError("the mask holds fractional values; only 0 (background), 1 (liver) and 2 (tumor) are "
                             "allowed")
    values = np.unique(arr)
    bad = values[~np.isin(values, (0, 1, 2))]
    if bad.size:
        raise InputError(f"the mask holds values {[int(v) if float(v).is_integer() else float(v) for v in bad[:8]]}; "
                         "only 0 (background), 1 (liver) and 2 (tumor) are allowed")
    return arr.astype(np.uint8)


def _unnamed(message: str, path: Path) -> str:
    """A reader's message about the received file, naming it "the mask" instead of the server's temporary path."""
    return message.replace(str(path), "the mask").replace(f"{path.name}: ", "the mask: ").replace(path.name, "the mask")


def _next_number(root: Path) -> int:
    taken = [int(p.name.split("-")[-1]) for p in root.iterdir()
             if p.name.isdigit() or (p.name.startswith(".reserve-") and p.name.split("-")[-1].isdigit())]
    return max([1, *taken]) + 1


def save_correction(
    *,
    data_dir: Path,
    study: Study,
    store: Any,
    cache: Any,
    mask_path: Path,
    edited_by: str,
    based_on: int | None = None,
    source: str = "api",
    note: str = "",
) -> MaskVersion:
    """Store the mask in ``mask_path`` as the study's next version and re-measure everything from it.

    The original (version 1) and earlier corrections are never touched; the new version's
    folder appears complete or not at all.

    Raises:
        InputError: the file is not a NIfTI mask on the study's grid with values 0/1/2, or ``based_on``
            is not one of the study's versions.
        ResourceError: the disk is full (nothing is kept).
    """
    from liverseg.inference.remeasure import remeasure_case
    from liverseg.io import read_volume
    from liverseg.web.uploads import input_path

    versions = list_versions(data_dir, study)
    if not versions:
        raise InputError("the study has no result yet; wait until its analysis is done, then correct its mask")
    if len(versions) >= MAX_VERSIONS:
        raise InputError(f"the study has {len(versions)} mask versions, the most kept; start a new study to go on")
    numbers = [v.number for v in versions]
    base = versions[-1].number if based_on is None else int(based_on)
    if base not in numbers:
        raise InputError(f"based_on={based_on} is not a version of this study (versions: {numbers})")
    ct, _ = cache.get(study.id)
    labels = read_mask_file(mask_path, ct)
    base_mask = read_volume(version_dir(data_dir, study.id, base) / "mask.nii.gz", force=True).array
    changed = int(np.count_nonzero(base_mask.reshape(labels.shape) != labels)) if base_mask.size == labels.size else None
    run_info = dict(version_report(data_dir, study, versions[0], store).get("run") or {})  # the model's run
    root = study_dir(data_dir, study.id) / VERSIONS_DIR
    root.mkdir(exist_ok=True)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with _study_lock(study.id):
        number = _next_number(root)
        while True:  # across processes: the reservation folder is made atomically
            try:
                (root / f".reserve-{number}").mkdir()
                break
            except FileExistsError:
                number += 1
        try:
            edit = {"version": number, "edited_by": edited_by, "created_at": created, "based_on": base,
                    "changed_voxels": changed, "source": source, "note": note}
            out = root / str(number)
            staging = root / f".staging-{number}"  # dot-named: never listed; removed at start if left
            try:
                remeasure_case(ct=ct, labels=labels, out_dir=staging, source_path=input_path(data_dir, study.id),
                               run_info=run_info, edit=edit, pdf=False)  # drawn on its first download
                fd, tmp = tempfile.mkstemp(dir=staging, prefix=".version-")
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(edit, fh, indent=2)
                os.chmod(tmp, 0o644)
                os.replace(tmp, staging / VERSION_FILE)
                os.rename(staging, out)  # the version counts from here on: one rename of a complete folder
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if is_disk_full(exc):
                    raise ResourceError("the server's disk is full, so the corrected mask could not be saved; "
                                        "nothing was changed. Try again later") from exc
                raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            (root / f".reserve-{number}").rmdir()
    log.info("study %s: mask version %d saved (%s voxels changed)", study.id, number, changed)
    return MaskVersion(number, "correction", created, edited_by, base, changed, source, note)


# --------------------------------------------------------------------------- leftovers of killed saves


def clean_incomplete_versions(data_dir: Path) -> list[Path]:
    """Remove what saves killed half-way left under ``studies/*/versions/``; return the removed paths.

    Removed: every dot-named entry there (``.reserve-<n>`` reservations, ``.staging-<n>``
    folders, remeasure_case's ``.<name>.partial-*`` folders, temporary files) and every
    numbered folder without ``version.json`` (a version is complete only with it). Kept, always:
    the study folders, ``output/`` (version 1), every complete version, and anything else: a
    numbered folder whose ``version.json`` is unreadable (logged), a link with a number's name,
    names that are neither dot-named nor numbers.

    Run it only while no save can be under way: when the server starts, which holds the data
    folder's lock (:class:`liverseg.web.lock.DataDirLock`), before it serves requests. One log
    line per study names what was removed.
    """
    studies = Path(data_dir) / "studies"
    removed: list[Path] = []
    if not studies.is_dir():
        return removed
    for study in sorted(studies.iterdir()):
        root = study / VERSIONS_DIR
        if study.is_symlink() or root.is_symlink() or not root.is_dir():
            continue
        gone: list[Path] = []
        for entry in sorted(root.iterdir()):
            number = _version_number(entry.name)
            if entry.name.startswith("."):
                pass  # a reservation, a staging or partial folder, a temporary file
            elif number is not None and number >= 2 and entry.is_dir() and not entry.is_symlink():
                marker = entry / VERSION_FILE
                if marker.is_file():
                    try:
                        json.loads(marker.read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        log.warning("study %s: mask version folder %s has an unreadable %s; kept, not shown. Check "
                                    "or remove it by hand", study.name, entry.name, VERSION_FILE)
                    continue  # a complete version
                if marker.exists() or marker.is_symlink():
                    continue  # not a file we wrote; leave it to a person
            else:
                continue  # not ours
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                log.warning("study %s: could not remove the unfinished mask version leftover %s (%s); it is not "
                            "shown. Remove it by hand", study.name, entry.name, type(exc).__name__)
                continue
            gone.append(entry)
        if gone:
            log.warning("study %s: removed %d leftover(s) of interrupted mask version saves: %s", study.name,
                        len(gone), ", ".join(p.name for p in gone))
            removed += gone
    return removed


# --------------------------------------------------------------------------- routes

bp = Blueprint("corrections", __name__)
api_bp = Blueprint("corrections_api", __name__, url_prefix="/api")


def _received_mask(tmp_dir: Path) -> Path:
    """The request's NIfTI (a multipart ``file`` field or the raw body) saved under ``tmp_dir``."""
    up = request.files.get("file") or request.files.get("mask")
    path = tmp_dir / "received"
    if up is not None:
        up.save(path)
    else:
        with open(path, "wb") as fh:
            shutil.copyfileobj(request.stream, fh, 1 << 20)
    if path.stat().st_size == 0:
        raise InputError("no mask was sent: PUT a NIfTI file (.nii or .nii.gz) as the body or as the form field 'file'")
    return path


def _put_mask(study: Study, *, user_name: str, source: str) -> Any:
    c = ctx()
    if study.status != "done":
        return jsonify(error=f"the study is {study.status}; its mask can be corrected once the analysis is done"), 409
    based_on = request.args.get("based_on") or None
    if based_on is not None and not based_on.isdigit():
        return jsonify(error=f"based_on must be a version number; got {based_on!r}"), 400
    note = (request.args.get("note") or "").strip()
    if len(note) > 500:
        return jsonify(error=f"the note has {len(note)} characters; at most 500"), 400
    tmp_root = c.data_dir / "tmp"
    tmp_root.mkdir(exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=tmp_root, prefix="mask-"))
    try:
        try:
            mask_path = _received_mask(tmp_dir)
            version = save_correction(data_dir=c.data_dir, study=study, store=c.store, cache=c.cache,
                                      mask_path=mask_path, edited_by=user_name,
                                      based_on=int(based_on) if based_on else None, source=source, note=note)
        except ResourceError as exc:
            return jsonify(error=str(exc)), 507
        except InputError as exc:
            return jsonify(error=str(exc)), 400
        except OSError as exc:
            if is_disk_full(exc):
                return jsonify(error="the server's disk is full, so the corrected mask could not be saved"), 507
            raise
        except LiversegError as exc:
            return jsonify(error=f"the corrected mask could not be measured: {exc}"), 400
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    body = study_json(study, with_report=False)
    body["version"] = version.to_json(version_files(c.data_dir, study.id, version.number))
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = f"/api/studies/{study.id}/versions/{version.number}/files/mask.nii.gz"
    return resp


@bp.route("/studies/<study_id>/mask", methods=["PUT"])
@login_required
def page_put_mask(study_id: str) -> Any:
    return _put_mask(_own_study(study_id), user_name=g.user.name, source="viewer")


@bp.route("/studies/<study_id>/viewer/ct.nii.gz")
@login_required
def page_viewer_ct(study_id: str) -> Any:
    s = _own_study(study_id)
    if s.status != "done":
        abort(404)
    c = ctx()
    resp = send_file(viewer_ct_path(c.data_dir, s.id, c.cache), mimetype="application/gzip", max_age=0)
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@bp.route("/studies/<study_id>/versions/<int:number>/files/<name>")
@login_required
def page_version_file(study_id: str, number: int, name: str) -> Any:
    """A version's file for the viewer (inline; the path ends in the file's name, as NiiVue wants)."""
    return send_version_file(ctx().data_dir, _own_study(study_id), name, version=str(number),
                             as_attachment=request.args.get("download") == "1")


@api_bp.route("/studies/<study_id>/mask", methods=["PUT"])
@token_required
def api_put_mask(study_id: str) -> Any:
    return _put_mask(_own(study_id), user_name=g.user.name, source="api")


@api_bp.route("/studies/<study_id>/versions", methods=["GET"])
@token_required
def api_versions(study_id: str) -> Any:
    s = _own(study_id)
    c = ctx()
    return jsonify(versions=[v.to_json(version_files(c.data_dir, s.id, v.number)) for v in list_versions(c.data_dir, s)])


@api_bp.route("/studies/<study_id>/versions/<n>/files/<name>", methods=["GET"])
@token_required
def api_version_file(study_id: str, n: str, name: str) -> Any:
    if not n.isdigit():
        abort(404)
    return send_version_file(ctx().data_dir, _own(study_id), name, version=n, as_attachment=True)
