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
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from liverseg.errors import InputError, NoImagesError
from liverseg.io.archive import ArchiveLimits, extract_zip
from liverseg.io.detect import sniff_format

__all__ = ["SavedUpload", "TooManyFilesError", "save_upload", "study_dir", "input_path", "output_dir", "new_study_id"]

log = logging.getLogger(__name__)

_SINGLE_FORMATS = {"nifti", "nifti-gz", "metaimage", "nrrd", "dicom", "png", "jpeg"}
_SUFFIX = {"nifti": ".nii", "nifti-gz": ".nii.gz", "metaimage": ".mha", "nrrd": ".nrrd", "dicom": ".dcm",
           "png": ".png", "jpeg": ".jpg"}


class TooManyFilesError(InputError):
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


def input_path(data_dir: Path, study_id: str) -> Path:
    """The path to give to ``read_volume``/``run_case``: the single file, or the input folder."""
    folder = study_dir(data_dir, study_id) / "input"
    entries = [p for p in folder.iterdir()] if folder.is_dir() else []
    if len(entries) == 1 and entries[0].is_file() and entries[0].name.startswith("scan"):
        return entries[0]
    return folder


def output_dir(data_dir: Path, study_id: str) -> Path:
    return study_dir(data_dir, study_id) / "output"


def _unique(name: str, taken: set[str]) -> str:
    base = secure_filename(name.replace("\\", "/").split("/")[-1]) or "file"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{n}_{base}"
    taken.add(candidate)
    return candidate


def save_upload(
    files: Iterable[FileStorage],
    *,
    data_dir: Path,
    study_id: str,
    max_files: int,
    max_bytes: int,
) -> SavedUpload:
    """Store the uploaded ``files`` as the input of study ``study_id``.

    Raises:
        TooManyFilesError: more than ``max_files`` files.
        InputError (and subclasses): empty upload, unrecognised content, an unsafe or
            damaged zip, a folder without DICOM files. The message says what to do.
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
    inp.mkdir(parents=True)
    try:
        taken: set[str] = set()
        n_bytes = 0
        saved: list[Path] = []
        for f in files:
            dest = inp / _unique(f.filename or "file", taken)
            f.save(dest)
            n_bytes += dest.stat().st_size
            saved.append(dest)
        first_name = (files[0].filename or "upload").replace("\\", "/")
        if len(saved) == 1:
            fmt = sniff_format(saved[0])
            input_name = first_name.split("/")[-1]
            if fmt == "zip":
                extracted = inp / "extracted"
                limits = ArchiveLimits(max_total_bytes=max(4 * max_bytes, 1), max_files=max(max_files, 1))
                members = extract_zip(saved[0], extracted, limits=limits)
                saved[0].unlink()
                kind, fmt, n_files = "folder", "zip", len(members)
            elif fmt in _SINGLE_FORMATS:
                os.replace(saved[0], inp / ("scan" + _SUFFIX[fmt]))
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
            input_name, kind, fmt, n_files = top, "folder", "dicom", len(saved)
        if target.exists():
            raise FileExistsError(f"study folder {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("study %s: stored %s upload (%d files, %.1f MiB)", study_id, fmt, n_files, n_bytes / 2**20)
    return SavedUpload(input_name=input_name, kind=kind, format=fmt, n_files=n_files, n_bytes=n_bytes)
