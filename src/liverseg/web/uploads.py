"""Turn an upload (one file, a DICOM folder's many files, or a zip) into a study's input on disk.

The content is sniffed at once (magic bytes, :func:`liverseg.io.detect.sniff_format`) so a
wrong file is refused with a clear message while the user still waits on the page; the
full check (:func:`liverseg.io.read_volume`) happens in the job. Zips are extracted here
with :func:`liverseg.io.archive.extract_zip`, which refuses ``../`` paths, links and bombs.

Files are staged under ``<data_dir>/tmp`` and moved into ``<data_dir>/studies/<id>/input``
with one rename, so a study folder is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterable

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename


from liverseg.errors import UPLOAD_DISK_FULL, InputError, NoImagesError, ResourceError, TooLargeError, is_disk_full
from liverseg.io.archive import ArchiveLimits, extract_zip
from liverseg.io.detect import sniff_format
from liverseg.io.limits import check_segmentable
from liverseg.io.read import peek_header

__all__ = ["SavedUpload", "TooManyFilesError", "EXPANSION_RATIO", "EXPANSION_FREE_BYTES", "save_upload", "study_dir", "input_path", "output_dir", "new_study_id"]

log = logging.getLogger(__name__)

_SINGLE_FORMATS = {"nifti", "nifti-gz", "metaimage", "nrrd", "dicom", "png", "jpeg"}
_SUFFIX = {"nifti": ".nii", "nifti-gz": ".nii.gz", "metaimage": ".mha", "nrrd": ".nrrd", "dicom": ".dcm",
           "png": ".png", "jpeg": ".jpg"}


#: An upload may decode to at most this many times its own size ...
EXPANSION_RATIO = 50
#: ... or to this many bytes, whichever is more (a real CT compresses 2-5 fold).
EXPANSION_FREE_BYTES = 64 * 2**20
#: Longest stored file name (characters); longer names are shortened, keeping the suffix.
_MAX_NAME = 120


class TooManyFilesError(TooLargeError):
    """More files in one upload than the configured cap (HTTP 413)."""


@dataclasses.dataclass(frozen=True)
class SavedUpload:
    """What was stored: ``kind`` is ``file`` or ``folder`` (a DICOM folder or an extracted zip)."""

    input_name: str
    kind: str
    format: str
    n_files: int
    n_bytes: int


def new_study_id() -> str:
    """A random, unguessable study id (16 hex characters)."""
    return secrets.token_hex(8)


def study_dir(data_dir: Path, study_id: str) -> Path:
    if not study_id.isalnum():
        raise ValueError(f"invalid study id {study_id!r}")
    return Path(data_dir) / "studies" / study_id


#: per-study prediction options given at upload (``{"pixel_size_mm": 0.7}``), beside ``input/``
OPTIONS_FILE = "options.json"


def parse_pixel_size(value: Any) -> float | None:
    """The upload form's optional pixel size (mm) as a float, ``None`` when empty.

    Raises:
        InputError: not a number of mm in (0, 50].
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        px = float(str(value).strip().replace(",", "."))
    except ValueError:
        px = float("nan")
    if not math.isfinite(px) or not 0 < px <= 50:
        raise InputError(f"the pixel size must be a number of mm in (0, 50], e.g. 0.75, or empty; got {str(value)[:40]!r}")
    return px


def write_study_options(data_dir: Path, study_id: str, *, pixel_size_mm: float | None) -> None:
    """Keep the upload's prediction options with the study (atomically; nothing when there are none)."""
    if pixel_size_mm is None:
        return
    folder = study_dir(data_dir, study_id)
    tmp = folder / (OPTIONS_FILE + ".partial")
    tmp.write_text(json.dumps({"pixel_size_mm": float(pixel_size_mm)}))
    os.replace(tmp, folder / OPTIONS_FILE)


def study_options(data_dir: Path, study_id: str) -> dict[str, Any]:
    """The options :func:`write_study_options` kept (``{}`` when none or unreadable)."""
    try:
        value = json.loads((study_dir(data_dir, study_id) / OPTIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def input_path(data_dir: Path, study_id: str) -> Path:
    """The path to give to ``read_volume``/``run_case``: the input's single file or folder, else the input folder.

    Uploads are stored under the name the user gave (made safe), so the case, and the reports'
    titles, carry it: ``input/CT_abdomen.nii.gz``, ``input/PATIENT_DICOM/`` (a zip or a folder).
    """
    folder = study_dir(data_dir, study_id) / "input"
    entries = [p for p in folder.iterdir()] if folder.is_dir() else []
    if len(entries) == 1:
        return entries[0]
    return folder


def _safe_stem(name: str) -> str:
    """The user's file or folder name without its image suffix, made safe to store (``scan`` when nothing is left)."""
    base = name.replace("\\", "/").rstrip("/").split("/")[-1]
    lower = base.lower()
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".zip", ".dcm", ".png", ".jpg", ".jpeg"):
        if lower.endswith(suffix):
            base = base[: -len(suffix)]
            break
    stem = secure_filename(base)[:80].strip("._") or "scan"
    return "scan" if stem.lower() in ("input", "output") else stem


def output_dir(data_dir: Path, study_id: str) -> Path:
    return study_dir(data_dir, study_id) / "output"


def _unique(name: str, taken: set[str]) -> str:
    base = secure_filename(name.replace("\\", "/").split("/")[-1]) or "file"
    if len(base) > _MAX_NAME:  # a 5,000-character name: keep its end (the suffix) and a little of its start
        base = base[: _MAX_NAME // 2] + "_" + base[-(_MAX_NAME // 2 - 1):]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{n}_{base}"
    taken.add(candidate)
    return candidate


def _check_expansion(decoded: int, n_bytes: int, name: str, *, ratio: float, free_bytes: int) -> None:
    """Refuse an upload whose images decode to far more than it weighs (a compression bomb)."""
    allowed = max(free_bytes, ratio * n_bytes)
    if decoded > allowed:
        raise TooLargeError(
            f"{name}: its images would decode to {decoded / 2**20:.0f} MiB from a {n_bytes / 2**10:.0f} KiB upload "
            f"(more than {ratio:g}-fold and more than {free_bytes / 2**20:.0f} MiB), which no real CT compresses "
            "to; refusing it. Upload the scan as exported by the scanner or viewer"
        )


def _dicom_bytes(paths: list[Path]) -> int:
    return sum(peek_header(p).decoded_bytes for p in paths)


def _check_extracted(folder: Path, name: str) -> list[Path]:
    """The DICOM files of an extracted zip; NoImagesError when it holds neither DICOM nor one volume file."""
    dicoms: list[Path] = []
    volumes: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        try:
            fmt = sniff_format(p)
        except InputError:
            continue
        if fmt == "dicom":
            dicoms.append(p)
        elif fmt in ("nifti", "nifti-gz", "metaimage", "nrrd"):
            volumes.append(p)
    if not dicoms and len(volumes) != 1:
        raise NoImagesError(
            f"the zip {name} holds no DICOM files"
            + (f" (and {len(volumes)} volume files, not one)" if volumes else "")
            + "; zip the folder of one DICOM series, or upload a NIfTI/MHA/NRRD file as it is"
        )
    return dicoms or volumes


def _renamed(exc: InputError, names: dict[str, str]) -> InputError:
    """The same error with the stored file names replaced by the names the user gave."""
    msg = str(exc)
    for stored, given in sorted(names.items(), key=lambda kv: -len(kv[0])):
        if stored != given:
            msg = msg.replace(stored, given)
    if msg == str(exc):
        return exc
    return type(exc)(msg)


def save_upload(
    files: Iterable[FileStorage],
    *,
    data_dir: Path,
    study_id: str,
    max_files: int,
    max_bytes: int,
    expansion_ratio: float = EXPANSION_RATIO,
    expansion_free_bytes: int = EXPANSION_FREE_BYTES,
) -> SavedUpload:
    """Store the uploaded ``files`` as the input of study ``study_id``.

    Before accepting, every image header is read (no voxel decoded) and checked
    (:func:`liverseg.io.peek_header`): absurd sizes and voxel sizes are refused, and so
    is an upload whose images would decode to more than ``expansion_ratio`` times its
    size and more than ``expansion_free_bytes`` (gzip, zip, PNG and JPEG 2000 bombs).
    A zip's total expansion is capped the same way before anything is extracted.
    Messages name the uploaded file, never the stored one.

    Raises:
        TooManyFilesError: more than ``max_files`` files (HTTP 413).
        TooLargeError: the upload would decode to too much (HTTP 413).
        ResourceError: the server's disk is full (HTTP 507).
        InputError (and subclasses): empty upload, unrecognised content, an unsafe or
            damaged zip, a folder or zip without DICOM files. The message says what to do.
    """
    files = [f for f in files if f is not None and (f.filename or "") != ""]
    if not files:
        raise NoImagesError("no file was uploaded; choose a scan file, a DICOM folder or a .zip")
    if len(files) > max_files:
        raise TooManyFilesError(
            f"{len(files)} files were uploaded, more than the limit of {max_files}; upload one series (or a .zip)"
        )
    data_dir = Path(data_dir)
    tmp_root = data_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    staging = tmp_root / f"upload-{study_id}"
    target = study_dir(data_dir, study_id)
    inp = staging / "input"
    names: dict[str, str] = {}  # stored name -> the name the user gave
    try:
        inp.mkdir(parents=True)
        taken: set[str] = set()
        n_bytes = 0
        saved: list[Path] = []
        for f in files:
            given = (f.filename or "file").replace("\\", "/").split("/")[-1]
            dest = inp / _unique(f.filename or "file", taken)
            names[dest.name] = given
            f.save(dest)
            n_bytes += dest.stat().st_size
            saved.append(dest)
        first_name = (files[0].filename or "upload").replace("\\", "/")
        limit = dict(ratio=expansion_ratio, free_bytes=expansion_free_bytes)
        if len(saved) == 1:
            fmt = sniff_format(saved[0])
            input_name = first_name.split("/")[-1]
            if fmt == "zip":
                extracted = inp / _safe_stem(input_name)
                limits = ArchiveLimits(max_total_bytes=max(int(expansion_ratio * n_bytes), expansion_free_bytes, 1),
                                       max_files=max(max_files, 1), max_ratio=max(expansion_ratio, 1.5),
                                       ratio_min_bytes=expansion_free_bytes)
                members = extract_zip(saved[0], extracted, limits=limits)
                saved[0].unlink()
                images = _check_extracted(extracted, input_name)
                dicoms = [p for p in images if sniff_format(p) == "dicom"]
                decoded = _dicom_bytes(dicoms) if dicoms else peek_header(images[0]).decoded_bytes
                _check_expansion(decoded, n_bytes, input_name, **limit)  # type: ignore[arg-type]
                kind, fmt, n_files = "folder", "zip", len(members)
            elif fmt in _SINGLE_FORMATS:
                header = peek_header(saved[0])
                check_segmentable(header.shape_zyx, name=input_name)
                _check_expansion(header.decoded_bytes, n_bytes, input_name, **limit)  # type: ignore[arg-type]
                os.replace(saved[0], inp / (_safe_stem(input_name) + _SUFFIX[fmt]))
                kind, n_files = "file", 1
            else:  # pragma: no cover - sniff_format answers only the formats above
                raise InputError(f"{input_name}: unsupported content ({fmt})")
        else:
            formats = {}
            for p in saved:
                try:
                    formats[p] = sniff_format(p)
                except InputError:
                    formats[p] = "other"
            dicoms = [p for p, fmt in formats.items() if fmt == "dicom"]
            if not dicoms:
                raise NoImagesError(
                    f"none of the {len(saved)} uploaded files is DICOM; to upload several files, choose the folder "
                    "of one DICOM series (or a .zip of it); NIfTI/MHA/NRRD/PNG/JPEG go one file at a time"
                )
            top = first_name.split("/")[0] if "/" in first_name else f"{len(saved)} files"
            _check_expansion(_dicom_bytes(dicoms), n_bytes, top, **limit)  # type: ignore[arg-type]
            series = inp / (_safe_stem(top) if "/" in first_name else "series")
            series.mkdir()
            for p in saved:
                os.replace(p, series / p.name)
            input_name, kind, fmt, n_files = top, "folder", "dicom", len(saved)
        if target.exists():
            raise FileExistsError(f"study folder {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    except InputError as exc:
        renamed = _renamed(exc, names)
        if renamed is exc:
            raise
        raise renamed from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise ResourceError(UPLOAD_DISK_FULL) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("study %s: stored %s upload (%d files, %.1f MiB)", study_id, fmt, n_files, n_bytes / 2**20)
    return SavedUpload(input_name=input_name, kind=kind, format=fmt, n_files=n_files, n_bytes=n_bytes)
